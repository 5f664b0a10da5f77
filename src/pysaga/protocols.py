"""The pluggable contracts pysaga's core talks to. Adapters implement them; core never
imports an adapter.

The broker contract lives with the envelope, in :mod:`pysaga.messaging`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from .models import (
        DefinitionRecord,
        LogEntry,
        SagaRecord,
        SagaStatus,
        SagaUpdate,
        SagaVersion,
    )

__all__ = (
    "Inbox",
    "InboxRecord",
    "InboxTransaction",
    "OutboxMessage",
    "SagaLog",
    "TransactionalInbox",
)


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


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message written in a handler's transaction, to be sent once the transaction commits.

    Attributes:
        destination: Where it goes: a destination, or a reply address when *reply* is true.
        envelope: The encoded envelope (:meth:`~pysaga.Envelope.encode`), sent as it is.
        reply: Whether it is a reply (sent with ``Broker.reply``) rather than a publish.
    """

    destination: str
    envelope: bytes
    reply: bool = False


@runtime_checkable
class InboxTransaction(Protocol):
    """**Protocol**: one open database transaction of a :class:`TransactionalInbox`, in which a
    participant handles one message.

    Everything done through it (the inbox record, the handler's own writes through
    :attr:`connection`, the outbox messages) commits together or not at all.
    """

    @property
    def connection(self) -> Any:
        """The store's connection inside the transaction (what handlers get as
        ``ctx.transaction``)."""
        ...

    async def claim(self, message_id: str) -> InboxRecord | None:
        """Take *message_id* for this transaction, before its handler runs.

        If another transaction holds it, wait for that one to end. Returns ``None`` when the
        message is now this transaction's to handle, or the record of the copy that handled it
        first (this transaction must then not handle it).
        """
        ...

    async def unsent(self, message_id: str) -> list[tuple[int, OutboxMessage]] | None:
        """What handling *message_id* wrote to the outbox and is not sent yet, with its outbox
        ids, oldest first, held by this transaction until it ends (for a copy of the message
        that finds it handled but its messages unsent, after a crash). Messages another
        transaction holds (a relay sending them) are left out.

        Returns:
            ``None`` when nothing of *message_id* is in the outbox (all of it was sent).
        """
        ...

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Delete the outbox messages *ids* in this transaction: they were sent."""
        ...

    async def add(self, message_id: str, record: InboxRecord) -> None:
        """Record *record* under *message_id* unless the message has a record already (or is
        being handled by another transaction: wait for it to end first)."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A scope whose writes are undone if it ends with an exception; the transaction
        itself goes on (the handler runs in one, so a refusal undoes its writes only)."""
        ...

    async def finish(
        self, message_id: str, record: InboxRecord, messages: Sequence[OutboxMessage]
    ) -> list[int]:
        """Record the reply of the claimed *message_id* and write *messages* to the outbox.

        Returns:
            The outbox ids of *messages*, for :meth:`TransactionalInbox.delete_outbox` once
            they are sent.
        """
        ...


@runtime_checkable
class TransactionalInbox(Inbox, Protocol):
    """**Protocol**: an inbox that handles each message in one database transaction, with a
    transactional outbox.

    A participant whose inbox is one claims the message, runs its handler (whose own writes
    go through the same transaction), records the reply and writes the reply and the events
    to send into the outbox, all in one transaction; it sends them after the commit and
    deletes them from the outbox. What a crash leaves in the outbox a relay sends later
    (:meth:`relay`). The effect of a message then happens once, and its reply and events are
    sent if and only if it committed.
    """

    def transaction(self, consumer: str) -> AbstractAsyncContextManager[InboxTransaction]:
        """Open a transaction for *consumer* (a participant's service name): it commits when
        the block ends normally and rolls back when it raises."""
        ...

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget the outbox messages *ids*: they were sent."""
        ...

    async def relay(
        self,
        send: Callable[[OutboxMessage], Awaitable[None]],
        *,
        older_than: float,
        limit: int = 100,
    ) -> int:
        """Send outbox messages written at least *older_than* seconds ago, oldest first, and
        delete them once *send* returned.

        Messages another process is relaying at the same moment are skipped, so several
        copies of a service can relay one outbox. If *send* raises, the messages sent before
        are deleted, the rest stay for the next round, and the exception is raised.

        Returns:
            How many messages were sent (at most *limit*).
        """
        ...


@runtime_checkable
class SagaLog(Protocol):
    """**Protocol**: the durable record of every saga; the single source of truth.

    It keeps, per saga, an append-only history of :class:`~pysaga.LogEntry` and one
    current-state :class:`~pysaga.SagaRecord` with an optimistic-concurrency ``revision``
    and a lease (``owner``, ``incarnation``, ``lease_expires_at``). Every write is atomic:
    the entries and the new state land together or not at all.

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

    async def intervene(self, saga_id: str, update: SagaUpdate, *, revision: int) -> int:
        """Apply an operator's *update* if the saga is still at *revision*, whoever holds it,
        and set its lease free.

        Unlike :meth:`update`, the lease is not checked: an operator writes over the
        orchestrator driving the saga. The revision goes up by one (so that orchestrator's
        next write fails with :class:`~pysaga.ConcurrencyError` and it stops driving the
        saga) and ``lease_expires_at`` becomes 0 (so an orchestrator claims the saga at once
        and resumes it from the log). The owner stays named on the saga.

        Returns:
            The saga's new revision (``revision + 1``).

        Raises:
            ConcurrencyError: the saga changed since *revision* was read (re-read it and
                decide again).
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
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        lease: float,
        now: float,
        limit: int = 100,
        predecessors: bool = False,
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> list[SagaRecord]:
        """Take the lease of unfinished sagas whose lease expired before *now*.

        A lease is held by an ``(owner, incarnation)`` pair: *owner* is the orchestrator's
        name, *incarnation* the id of the run of it that holds the lease (a fresh one each
        time an orchestrator starts). Sagas the caller's own incarnation holds are not taken
        back unless it released them: an orchestrator that is alive to claim is driving its
        own sagas, even if a stalled event loop let their leases lapse. Sagas another
        incarnation of the same *owner* holds are taken like anyone else's once their lease
        lapsed.

        With *predecessors*, the sagas held under *owner* by any other incarnation are taken
        too, whatever their lease: an orchestrator that starts under the name of one that
        died takes its predecessor's sagas back at once instead of waiting for their leases
        to run out. (Two live orchestrators must therefore never share a name.)

        Only sagas whose ``(name, version)`` is in *kinds* are claimed; with *fingerprints*,
        only those whose fingerprint is ``fingerprints[(name, version)]`` or ``None`` (a saga
        recorded before fingerprints existed). Each claim sets the owner and incarnation,
        adds one to the revision, clears the saga's ``held`` mark and appends a
        ``SAGA_CLAIMED`` entry. Returns the claimed records, those of lapsed leases first.
        """
        ...

    async def define(self, definition: DefinitionRecord) -> None:
        """Keep *definition*'s outline, once per ``(name, version, fingerprint)``: when the
        log has that definition already, nothing changes (the first record stays)."""
        ...

    async def hold(
        self, name: str, version: int, fingerprint: str, *, note: str, now: float, owner: str
    ) -> list[str]:
        """Hold for an operator the unfinished sagas of ``(name, version)`` started on the
        definition *fingerprint* whose lease expired before *now* and that are not held yet.

        Each one's ``held`` becomes *note*, its revision goes up by one and a ``SAGA_HELD``
        entry (written by *owner*, its ``failure`` of type ``DefinitionChanged`` carrying
        *note*) is appended. Nothing else changes: the saga keeps its status, steps and
        owner, and an orchestrator hosting its own definition can still claim it.

        Returns:
            The ids of the sagas held now.
        """
        ...

    async def versions(
        self, *, name: str | None = None, statuses: Collection[SagaStatus] | None = None
    ) -> list[SagaVersion]:
        """The sagas per ``(name, version, fingerprint)``, with counts by status, and each
        definition's record when the log has it.

        Args:
            name: Only sagas (and definitions) of this name.
            statuses: Only count sagas in these statuses, and leave out definitions with no
                saga in them. Without it, recorded definitions with no saga are listed too.

        Returns:
            One entry per ``(name, version, fingerprint)``, sorted by name, version, then
            fingerprint (``None`` first).
        """
        ...

    async def next_expiry(
        self,
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> float | None:
        """When :meth:`claim` will next find a saga to take: the earliest lease expiry
        (epoch seconds) among unfinished sagas of *kinds* (and, with *fingerprints*, of those
        fingerprints or none, as :meth:`claim` takes them) that ``(owner, incarnation)`` does
        not hold (a released saga counts, with its expiry of 0). ``None`` when there is no
        such saga.

        An orchestrator sleeps until then instead of polling, so a saga whose holder died is
        resumed as soon as its lease lapses.
        """
        ...

    async def renew(self, owner: str, *, incarnation: str | None = None, until: float) -> int:
        """Extend the leases ``(owner, incarnation)`` holds on unfinished sagas; return how
        many.

        Only that incarnation's leases are renewed: sagas an earlier incarnation of the same
        *owner* left behind (it was killed) are not, so they lapse and can be claimed. A saga
        the incarnation released (see :meth:`release`) is not renewed either: it stays free
        for the next claimer, even though its owner is still named on it.
        """
        ...

    async def release(
        self,
        owner: str,
        saga_ids: Collection[str] | None = None,
        *,
        incarnation: str | None = None,
    ) -> None:
        """Give up the leases ``(owner, incarnation)`` holds on unfinished sagas (all of
        them, or those of *saga_ids*) so that another orchestrator can claim them at once.
        Leases another incarnation of *owner* holds are left alone."""
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
        timer_before: float | None = None,
        held: bool | None = None,
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
            timer_before: Only sagas with a step whose timer (``timeout_at`` or
                ``retry_at``) is set to a time before this one (epoch seconds).
            held: ``True``: only sagas held for an operator; ``False``: only those not held.
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
