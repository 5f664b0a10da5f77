"""The pluggable contracts pysaga's core talks to. Adapters implement them; core never
imports an adapter.

The broker contract lives with the envelope, in :mod:`pysaga.messaging`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from types import TracebackType

    from .models import LogEntry, SagaRecord, SagaStatus, SagaUpdate

__all__ = ("Inbox", "InboxRecord", "SagaLog")


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """What a participant's inbox keeps of a message it handled: the reply it gave.

    Attributes:
        reply_type: The reply's message type (``pysaga.done`` when the handler returned none).
        schema_version: The reply's schema version.
        payload: The reply's payload, as JSON text.
        handled_at: When the message was handled (seconds since the epoch).
    """

    reply_type: str
    schema_version: int
    payload: str
    handled_at: float


@runtime_checkable
class Inbox(Protocol):
    """**Protocol**: the messages a participant has handled, by message id, with its replies.

    A message whose id is in the inbox is not handled again: its recorded reply is sent once
    more instead. Each consumer (a participant's service name) has its own namespace, so
    several services may share one inbox store.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get(self, consumer: str, message_id: str) -> InboxRecord | None:
        """The record of *message_id*, if *consumer* handled it."""
        ...

    async def put(self, consumer: str, message_id: str, record: InboxRecord) -> InboxRecord:
        """Record that *consumer* handled *message_id*; the first record wins.

        Returns:
            The record that is now in the inbox: *record*, or the one written before it.
        """
        ...

    async def purge(self, before: float) -> int:
        """Forget messages handled before *before* (epoch seconds); returns how many."""
        ...


@runtime_checkable
class SagaLog(Protocol):
    """**Protocol**: the durable record of every saga; the single source of truth.

    It keeps, per saga, an append-only history of :class:`~pysaga.LogEntry` and one
    current-state :class:`~pysaga.SagaRecord` with an optimistic-concurrency ``revision``
    and a lease (``owner``, ``lease_expires_at``). Every write is atomic: the entries and the
    new state land together or not at all.

    Use it as an async context manager: entering opens it (and applies the schema), leaving
    closes it.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        """Insert a new saga with its first history entries.

        Raises:
            ConcurrencyError: a saga with the same id exists.
        """
        ...

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        """Apply *update* if the saga is still at *revision* and leased by *owner*.

        Returns:
            The saga's new revision (``revision + 1``).

        Raises:
            LeaseLost: another orchestrator holds the saga now.
            ConcurrencyError: the saga changed since *revision* was read.
            SagaNotFoundError: there is no such saga.
        """
        ...

    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga's current state, or ``None``."""
        ...

    async def history(self, saga_id: str) -> list[LogEntry]:
        """The saga's history, oldest first (empty when there is no such saga)."""
        ...

    async def claim(
        self,
        owner: str,
        *,
        kinds: Collection[tuple[str, int]],
        lease: float,
        now: float,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Take the lease of unfinished sagas whose lease expired before *now*.

        Sagas *owner* itself holds are not taken back unless it released them: an
        orchestrator that is alive to claim is driving its own sagas, even if a stalled event
        loop let their leases lapse.

        Only sagas whose ``(name, version)`` is in *kinds* are claimed; each claim adds one to
        the revision and appends a ``SAGA_CLAIMED`` entry. Returns the claimed records.
        """
        ...

    async def renew(self, owner: str, *, until: float) -> int:
        """Extend every lease *owner* holds on an unfinished saga; return how many."""
        ...

    async def release(self, owner: str, saga_ids: Collection[str] | None = None) -> None:
        """Give up *owner*'s leases on unfinished sagas (all of them, or those of
        *saga_ids*) so that another orchestrator can claim them at once."""
        ...

    async def active_kinds(self) -> set[tuple[str, int]]:
        """The ``(name, version)`` pairs of every unfinished saga in the log."""
        ...

    async def list(
        self,
        *,
        name: str | None = None,
        status: SagaStatus | None = None,
        statuses: Collection[SagaStatus] | None = None,
        created_before: float | None = None,
        updated_before: float | None = None,
        deadline_before: float | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Sagas, newest first, that match every filter given.

        Args:
            name: Only sagas of this definition.
            status: Only sagas in this status.
            statuses: Only sagas in one of these statuses (an empty collection matches none).
            created_before: Only sagas created before this time (epoch seconds).
            updated_before: Only sagas last written before this time (epoch seconds).
            deadline_before: Only sagas with a deadline before this time (epoch seconds).
            limit: At most this many sagas.

        Returns:
            The matching records, by ``created_at``, newest first.
        """
        ...

    async def counts(self, *, name: str | None = None) -> dict[SagaStatus, int]:
        """How many sagas (of definition *name*, or of all) are in each status.

        Returns:
            A count per status; statuses with no saga are left out.
        """
        ...
