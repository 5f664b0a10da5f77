"""Group commit: writes from concurrent sagas share one transaction.

Each writer queues its write and waits. One writer at a time is the *leader*: it lets the
other ready tasks queue theirs (one checkpoint), takes the whole queue and hands it to the
store's ``flush`` as one batch, then passes leadership to the first writer still queued. A
lone saga pays one checkpoint; a hundred concurrent sagas pay one commit between them.

A write that was queued is always flushed, even if its writer is cancelled meanwhile: the
wait is shielded, which delays a cancellation by at most one commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("GroupCommit", "PendingWrite")

OpT = TypeVar("OpT")


class PendingWrite(Generic[OpT]):
    """One queued write: the store's operation, and then its result or error."""

    __slots__ = ("_done", "error", "op", "promoted", "result")

    def __init__(self, op: OpT) -> None:
        self.op = op
        self.result: Any = None
        self.error: BaseException | None = None
        self.promoted = False
        self._done: anyio.Event | None = None

    def _event(self) -> anyio.Event:
        if self._done is None:
            self._done = anyio.Event()
        return self._done

    def finish(self, *, promoted: bool = False) -> None:
        """Wake the writer: its write is done, or (``promoted``) it is now the leader."""
        self.promoted = promoted
        self._event().set()


class GroupCommit(Generic[OpT]):
    """Batches concurrent writes; *flush* must set ``result`` or ``error`` on every write."""

    def __init__(self, flush: Callable[[list[PendingWrite[OpT]]], Awaitable[None]]) -> None:
        self._flush = flush
        self._queue: list[PendingWrite[OpT]] = []
        self._leading = False
        self.batches = 0
        """How many batches were flushed (for tests and benchmarks)."""
        self.writes = 0
        """How many writes were flushed."""

    async def submit(self, op: OpT) -> Any:
        """Queue *op*, wait until it is committed, and return its result (or raise its error)."""
        write = PendingWrite(op)
        self._queue.append(write)
        if self._leading:
            with anyio.CancelScope(shield=True):
                await write._event().wait()
            if write.promoted:  # its write is still queued: it leads the next batch
                await self._lead(write)
        else:
            await self._lead(write)
        if write.error is not None:
            raise write.error
        return write.result

    async def _lead(self, own: PendingWrite[OpT]) -> None:
        self._leading = True
        try:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # let the other ready writers queue theirs
                batch, self._queue = self._queue, []
                try:
                    await self._flush(batch)
                except Exception as exc:  # the whole batch was rolled back
                    for write in batch:
                        write.error = exc
                finally:
                    self.batches += 1
                    self.writes += len(batch)
                    for write in batch:
                        if write is not own:
                            write.finish()
        finally:
            self._leading = False
            if self._queue:
                self._leading = True
                self._queue[0].finish(promoted=True)
