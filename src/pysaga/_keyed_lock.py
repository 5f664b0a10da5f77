"""A lock per key, for handling the messages of one key (one saga, one command) in turn."""

from __future__ import annotations

import anyio

__all__ = ("KeyedLock",)


class KeyedLock:
    """Handles messages with one key in turn: the second waits for the first to finish (a
    second copy then finds its reply in the inbox). Costs two dictionary operations when
    nothing else holds the key.

    Not reentrant: a task that holds a key and acquires it again waits forever.
    """

    __slots__ = ("_busy",)

    def __init__(self) -> None:
        self._busy: dict[str, list[anyio.Event]] = {}

    async def acquire(self, key: str) -> None:
        """Wait until no one holds *key*, then hold it."""
        while (waiters := self._busy.get(key)) is not None:
            event = anyio.Event()
            waiters.append(event)
            await event.wait()
        self._busy[key] = []

    def release(self, key: str) -> None:
        """Let go of *key*: every task waiting for it wakes up, and one of them gets it."""
        for event in self._busy.pop(key, ()):
            event.set()
