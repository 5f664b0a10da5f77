"""Read, decide, write, and again on a conflict: the one loop every optimistic writer uses.

The orchestrator writes a saga under its lease; everyone else who writes one (an operator,
the choreography observer) reads the record, decides the update from it, and writes it at the
revision read. When someone wrote in between, the write is refused with
:class:`~pysaga.ConcurrencyError`, and the writer reads again and decides again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from .errors import ConcurrencyError, LeaseLost

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("ATTEMPTS", "until_written")

T = TypeVar("T")

ATTEMPTS = 50
"""How many times a writer reads and decides again before it gives up."""


async def until_written(
    attempt: Callable[[], Awaitable[T]],
    *,
    saga_id: str,
    doing: str,
    attempts: int = ATTEMPTS,
) -> T:
    """Await *attempt* (read, decide, write) until it does not meet a conflict.

    Args:
        attempt: Reads the saga, decides, writes at the revision it read.
        saga_id: The saga written (for the error).
        doing: What the write does, for the error (``"recording OrderPlaced"``).

    Raises:
        ConcurrencyError: the saga kept changing for *attempts* tries; nothing was written.
        LeaseLost: someone else holds the saga (not retried: reading again cannot help).
    """
    for _ in range(attempts):
        try:
            return await attempt()
        except LeaseLost:
            raise
        except ConcurrencyError:
            continue  # someone wrote it meanwhile: look again, decide again
    raise ConcurrencyError(
        saga_id,
        f"saga {saga_id!r} changed {attempts} times while {doing}; nothing was written: try again",
    )
