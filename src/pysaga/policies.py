"""Policies shared by the saga declaration and the brokers: :class:`Retry`, when and how often
a failing step, compensation or message delivery is tried again, and its defaults."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import BusinessError, SagaDefinitionError, StepError

__all__ = ("COMPENSATION_RETRY", "DEFAULT_RETRY", "RETRIABLE_RETRY", "Retry")


@dataclass(frozen=True, slots=True)
class Retry:
    """When and how often a failing step or compensation is tried again.

    The delay before retry *n* is ``backoff * multiplier ** (n - 1)``, capped at
    ``max_backoff``, then reduced by a random fraction of at most ``jitter`` so that many
    sagas failing together do not retry in lock-step.

    Args:
        attempts: Attempts in all, the first included; ``None`` means until it succeeds.
        backoff: Delay before the first retry, in seconds.
        multiplier: Growth of the delay from one retry to the next.
        max_backoff: Upper bound of a single delay, in seconds.
        jitter: Fraction (0 to 1) of each delay that is randomised.
        retry_on: Exception types worth another attempt. Others fail the step at once.
        abort_on: Exception types that mean a business "no": no retry, compensate now.
            :class:`~pysaga.BusinessError` always means that.
    """

    attempts: int | None = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    abort_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts is not None and (not isinstance(self.attempts, int) or self.attempts < 1):
            raise SagaDefinitionError(
                f"Retry(attempts={self.attempts!r}): attempts counts the first try too, so it "
                "must be an int of at least 1 (or None to retry until it succeeds)"
            )
        for name in ("backoff", "max_backoff"):
            if getattr(self, name) < 0:
                raise SagaDefinitionError(f"Retry({name}=...) must be >= 0 seconds")
        if self.multiplier < 1:
            raise SagaDefinitionError("Retry(multiplier=...) must be >= 1 (1 = constant delay)")
        if not 0 <= self.jitter <= 1:
            raise SagaDefinitionError("Retry(jitter=...) is a fraction between 0 and 1")
        for name in ("retry_on", "abort_on"):
            types = getattr(self, name)
            if not isinstance(types, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in types
            ):
                raise SagaDefinitionError(
                    f"Retry({name}=...) must be a tuple of exception classes, got {types!r}"
                )

    def is_business(self, exc: BaseException) -> bool:
        """Whether *exc* is a business refusal under this policy."""
        return isinstance(exc, (BusinessError, self.abort_on))

    def may_retry(self, exc: BaseException, failures: int) -> bool:
        """Whether another attempt follows, after *failures* failed attempts ending with *exc*."""
        if self.is_business(exc):
            return False
        if isinstance(exc, StepError) and not exc.retryable:
            return False
        if not isinstance(exc, self.retry_on) and not isinstance(exc, TimeoutError):
            return False
        return self.attempts is None or failures < self.attempts

    def delay(self, failures: int) -> float:
        """Seconds to wait before the attempt that follows failure number *failures*."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(0, failures - 1))
        return base * (1.0 - self.jitter * random.random())


DEFAULT_RETRY = Retry()
"""Steps before the pivot, and the pivot: three attempts."""
RETRIABLE_RETRY = Retry(attempts=None, backoff=0.1, max_backoff=10.0)
"""Steps after the pivot: until they succeed."""
COMPENSATION_RETRY = Retry(attempts=10, backoff=0.1, max_backoff=5.0)
"""Compensations: ten attempts, then the saga is FAILED and needs an operator."""
