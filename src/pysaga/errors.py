"""Exceptions raised by pysaga, factored into one module to avoid import loops.

Every error pysaga raises derives from :class:`PysagaError`. Where a caller would
naturally catch a builtin, the error also derives from it::

    PysagaError
    ├── SagaDefinitionError (TypeError)   a saga or step was declared wrongly
    ├── SagaNotRegisteredError (LookupError)
    ├── SagaNotFoundError (LookupError)
    ├── InvalidURLError (ValueError)      a saga log URL is malformed or names no known log
    ├── StoreError                        the saga log failed
    │   ├── ConcurrencyError              someone else wrote the saga first (optimistic version)
    │   │   ├── LeaseLost                 this orchestrator no longer holds the saga's lease
    │   │   └── SagaIdTaken               a saga with this id exists, with other data
    │   └── SchemaVersionError            the log's schema is newer than this library
    ├── StepError                         raised *by user code* inside a step
    │   ├── BusinessError                 "no" for a business reason: never retried, compensate now
    │   └── RemoteStepError               a participant replied with a technical failure
    ├── DeadlineExceeded                  recorded when a saga's deadline passed before its pivot
    ├── OperatorActionRefused             an operator's retry/abort/resolve does not fit the saga
    ├── UnsupportedBackend (RuntimeError) an adapter that needs asyncio runs under trio
    └── MessagingError                    sending or receiving a message failed
        ├── DecodeError (ValueError)      a message cannot be read: dead-lettered at once
        │   └── UnknownMessageType        nobody here handles the message's type
        └── BrokerError                   the broker or its client library failed
            ├── BrokerUnavailable (ConnectionError)   cannot reach the broker
            └── BrokerClosed              the broker was used before entering or after closing

``StepError`` and ``BusinessError`` are the two exceptions users raise themselves; every
other exception a step raises is a technical failure, which the step's retry policy decides
whether to retry.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "BusinessError",
    "ConcurrencyError",
    "DeadlineExceeded",
    "DecodeError",
    "InvalidURLError",
    "LeaseLost",
    "MessagingError",
    "OperatorActionRefused",
    "PysagaError",
    "RemoteStepError",
    "SagaDefinitionError",
    "SagaIdTaken",
    "SagaNotFoundError",
    "SagaNotRegisteredError",
    "SchemaVersionError",
    "StepError",
    "StoreError",
    "UnknownMessageType",
    "UnsupportedBackend",
)


class PysagaError(Exception):
    """Root of every exception pysaga raises."""


class SagaDefinitionError(PysagaError, TypeError):
    """A saga or one of its steps was declared wrongly.

    Raised at declaration time (when the module that declares the saga is imported), never
    while a saga runs. The message says what is wrong and how to fix it.
    """


class SagaNotRegisteredError(PysagaError, LookupError):
    """An orchestrator was asked to run a saga that was not given to it in ``sagas=[...]``."""


class SagaNotFoundError(PysagaError, LookupError):
    """No saga with the given id exists in the saga log."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r} in the saga log")
        self._saga_id = saga_id

    @property
    def saga_id(self) -> str:
        """The id that was looked up."""
        return self._saga_id


class InvalidURLError(PysagaError, ValueError):
    """A saga log URL (a ``log=`` argument, ``--log``) cannot be used as written: an unknown
    scheme, a bare name that is not a ``.db``/``.sqlite`` file, a port that is not a number,
    an unknown option or a bad option value.

    Raised before anything is opened or imported; the message says what is wrong and shows
    the forms pysaga reads. A password in the URL is hidden in the message.
    """


class StoreError(PysagaError):
    """The saga log could not complete an operation."""


class ConcurrencyError(StoreError):
    """The saga's record changed since it was read (optimistic concurrency check failed)."""

    def __init__(self, saga_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"saga {saga_id!r} was changed by someone else since it was read; "
            "re-read it and try again"
        )
        self._saga_id = saga_id

    @property
    def saga_id(self) -> str:
        """The saga whose write was refused."""
        return self._saga_id


class LeaseLost(ConcurrencyError):
    """This orchestrator no longer holds the saga's lease: another one has taken it over.

    The orchestrator stops driving the saga at once; the new holder continues it from the log.
    """

    def __init__(self, saga_id: str, owner: str) -> None:
        super().__init__(
            saga_id,
            f"orchestrator {owner!r} lost the lease on saga {saga_id!r} (another orchestrator "
            "claimed it after the lease expired); it stops driving this saga",
        )
        self._owner = owner

    @property
    def owner(self) -> str:
        """The orchestrator that lost the lease."""
        return self._owner


class SagaIdTaken(ConcurrencyError):
    """A saga was started under an id that a different saga (another definition, or other
    data) already has.

    Starting the *same* saga again under its id is not an error with
    ``on_conflict="use_existing"``: that returns the existing saga.
    """

    def __init__(self, saga_id: str, differences: list[str]) -> None:
        if differences:
            message = (
                f"a saga with id {saga_id!r} exists, and it is a different saga: "
                f"{'; '.join(differences)}. Use another id, or start the same saga with the "
                "same data to get the existing one"
            )
        else:
            message = (
                f"a saga with id {saga_id!r} exists already; pass on_conflict='use_existing' "
                "to get it instead (a retried start is then safe)"
            )
        super().__init__(saga_id, message)
        self._differences = tuple(differences)

    @property
    def differences(self) -> tuple[str, ...]:
        """What differs between the saga asked for and the one under the id, one line each
        (``"data field 'qty': 2 in the log, 3 asked"``); empty when it is the same saga
        (started again without ``on_conflict="use_existing"``)."""
        return self._differences


class SchemaVersionError(StoreError):
    """The saga log was written by a newer pysaga whose schema this version cannot read."""


class StepError(PysagaError):
    """Base for the errors a step raises on purpose.

    Args:
        message: What went wrong, for people.
        retryable: Whether the step's retry policy may try again. ``False`` ends the step at
            once (and starts compensation, before the pivot).
        details: JSON-able details kept in the saga's history.
    """

    def __init__(self, message: str, *, retryable: bool = True, details: Any = None) -> None:
        super().__init__(message)
        self._message = message
        self._retryable = retryable
        self._details = details

    @property
    def message(self) -> str:
        """What went wrong."""
        return self._message

    @property
    def retryable(self) -> bool:
        """Whether the retry policy may run the step again."""
        return self._retryable

    @property
    def details(self) -> Any:
        """JSON-able details kept in the saga's history."""
        return self._details


class BusinessError(StepError):
    """A business "no" (stock short, payment declined): never retried, compensate now.

    Args:
        message: The reason, kept in the saga's history and shown to operators.
        details: JSON-able details kept in the saga's history.
    """

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message, retryable=False, details=details)


class DeadlineExceeded(PysagaError):
    """A saga's deadline passed before it got past its pivot, so it compensates.

    pysaga records it as the saga's failure (``failure.type == "DeadlineExceeded"``); it is
    not raised to callers.
    """


class OperatorActionRefused(PysagaError):
    """An operator's action (retry, abort, resolve) does not fit the saga's current state, so
    nothing was written.

    The message says what state the saga is in and which action fits it instead.

    Args:
        saga_id: The saga the action was for.
        action: ``"retry"``, ``"abort"`` or ``"resolve"``.
        reason: Why the saga's state does not allow it, and what to do.
    """

    def __init__(self, saga_id: str, action: str, reason: str) -> None:
        super().__init__(f"cannot {action} saga {saga_id!r}: {reason}")
        self._saga_id = saga_id
        self._action = action

    @property
    def saga_id(self) -> str:
        """The saga the action was for."""
        return self._saga_id

    @property
    def action(self) -> str:
        """The refused action: ``"retry"``, ``"abort"`` or ``"resolve"``."""
        return self._action


class RemoteStepError(StepError):
    """A participant replied that it could not handle a step's command for a technical reason.

    It is retryable: the step's retry policy decides whether the command is sent again (with
    the same message id, so the participant can tell it is a repeat).

    Args:
        message: The participant's description of the failure.
        error_type: The name of the exception the participant's handler raised.
        service: The participant that replied.
    """

    def __init__(self, message: str, *, error_type: str, service: str) -> None:
        super().__init__(
            f"{service}: {error_type}: {message}",
            details={"service": service, "error_type": error_type},
        )
        self._error_type = error_type
        self._service = service

    @property
    def error_type(self) -> str:
        """The name of the exception the participant's handler raised."""
        return self._error_type

    @property
    def service(self) -> str:
        """The participant that replied."""
        return self._service


class MessagingError(PysagaError):
    """Sending or receiving a message failed."""


class DecodeError(MessagingError, ValueError):
    """A message cannot be read: not an envelope, a payload that does not fit its type, or a
    schema version newer than the reader knows.

    A consumer that meets one sends the message to the dead-letter destination at once (a
    retry could not help), with this error's text as the reason, and goes on.
    """


class UnknownMessageType(DecodeError):
    """A message's type is not one the receiving handler knows; it is dead-lettered at once."""


class BrokerError(MessagingError):
    """The broker, or its client library, reported an error; the original is the ``__cause__``."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """The broker cannot be reached (refused, timed out, or the connection dropped for good)."""


class BrokerClosed(BrokerError):
    """The broker object was used before ``async with broker:`` entered it, or after it closed."""


class UnsupportedBackend(PysagaError, RuntimeError):
    """An adapter whose client library runs on asyncio only (RabbitMQ, Kafka, PostgreSQL) was
    opened under another event loop, such as trio's. The message names the adapter, the
    running backend and what to use instead."""
