"""An in-memory saga log: the whole contract, kept in this process only.

For tests and for sagas that need not survive the process. Records are copied on the way in
and out, so callers can never change what the log holds behind its back.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Self

from ..errors import ConcurrencyError, LeaseLost, SagaNotFoundError
from ..models import (
    ACTIVE_STATUSES,
    DefinitionRecord,
    EntryKind,
    Failure,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    SagaVersion,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from types import TracebackType

    from ..protocols import InboxRecord

__all__ = ("InMemoryInbox", "InMemorySagaLog")


class _InProcess:
    """What an in-memory store needs of a store's lifecycle: nothing to open or close."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build from ``memory://`` (the URL carries no options)."""
        return cls()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class InMemorySagaLog(_InProcess):
    """A :class:`~pysaga.SagaLog` held in dictionaries."""

    def __init__(self) -> None:
        self._records: dict[str, SagaRecord] = {}
        self._history: dict[str, list[LogEntry]] = {}
        self._definitions: dict[tuple[str, int, str], DefinitionRecord] = {}

    def __repr__(self) -> str:
        return f"<InMemorySagaLog: {len(self._records)} sagas>"

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        if record.saga_id in self._records:
            raise ConcurrencyError(record.saga_id, f"a saga with id {record.saga_id!r} exists")
        self._records[record.saga_id] = _copy(record)
        self._history[record.saga_id] = list(entries)

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        rec = self._records.get(saga_id)
        if rec is None:
            raise SagaNotFoundError(saga_id)
        if rec.owner != owner:
            raise LeaseLost(saga_id, owner)
        if rec.revision != revision:
            raise ConcurrencyError(saga_id)
        return self._apply(rec, update)

    async def intervene(self, saga_id: str, update: SagaUpdate, *, revision: int) -> int:
        rec = self._records.get(saga_id)
        if rec is None:
            raise SagaNotFoundError(saga_id)
        if rec.revision != revision:
            raise ConcurrencyError(saga_id)
        rec.lease_expires_at = 0.0
        return self._apply(rec, update)

    def _apply(self, rec: SagaRecord, update: SagaUpdate) -> int:
        rec.apply(update)
        rec.revision += 1
        if not update.entries:
            rec.updated_at = time.time()
        self._history[rec.saga_id].extend(update.entries)
        return rec.revision

    async def get(self, saga_id: str) -> SagaRecord | None:
        rec = self._records.get(saga_id)
        return None if rec is None else _copy(rec)

    async def history(self, saga_id: str) -> list[LogEntry]:
        return list(self._history.get(saga_id, ()))

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
        found: list[SagaRecord] = []
        for rec in self._records.values():
            if rec.status not in ACTIVE_STATUSES or (rec.name, rec.version) not in kinds:
                continue
            if not _fits(rec, fingerprints):
                continue
            ours = rec.owner == owner and rec.incarnation == incarnation
            if (rec.lease_expires_at < now and (not ours or rec.lease_expires_at == 0.0)) or (
                predecessors and rec.owner == owner and not ours
            ):
                found.append(rec)
        found.sort(key=lambda rec: rec.lease_expires_at)  # lapsed leases first
        claimed: list[SagaRecord] = []
        for rec in found[: max(limit, 0)]:
            rec.owner = owner
            rec.incarnation = incarnation
            rec.lease_expires_at = now + lease
            rec.held = None
            rec.revision += 1
            rec.updated_at = now
            self._history[rec.saga_id].append(LogEntry(EntryKind.SAGA_CLAIMED, at=now, owner=owner))
            claimed.append(_copy(rec))
        return claimed

    async def next_expiry(
        self,
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> float | None:
        return min(
            (
                rec.lease_expires_at
                for rec in self._records.values()
                if rec.status in ACTIVE_STATUSES
                and (rec.name, rec.version) in kinds
                and _fits(rec, fingerprints)
                and not (
                    rec.owner == owner
                    and rec.incarnation == incarnation
                    and rec.lease_expires_at > 0
                )
            ),
            default=None,
        )

    async def renew(self, owner: str, *, incarnation: str | None = None, until: float) -> int:
        count = 0
        for rec in self._records.values():
            # a released saga (lease 0) stays released: it waits for a claimer
            if (
                rec.owner == owner
                and rec.incarnation == incarnation
                and rec.status in ACTIVE_STATUSES
                and rec.lease_expires_at
            ):
                rec.lease_expires_at = until
                count += 1
        return count

    async def release(
        self,
        owner: str,
        saga_ids: Collection[str] | None = None,
        *,
        incarnation: str | None = None,
    ) -> None:
        for rec in self._records.values():
            if (
                rec.owner == owner
                and rec.incarnation == incarnation
                and rec.status in ACTIVE_STATUSES
                and (saga_ids is None or rec.saga_id in saga_ids)
            ):
                rec.lease_expires_at = 0.0

    async def define(self, definition: DefinitionRecord) -> None:
        key = (definition.name, definition.version, definition.fingerprint)
        self._definitions.setdefault(key, definition)

    async def hold(
        self, name: str, version: int, fingerprint: str, *, note: str, now: float, owner: str
    ) -> list[str]:
        held: list[str] = []
        for rec in self._records.values():
            if (
                rec.name == name
                and rec.version == version
                and rec.fingerprint == fingerprint
                and rec.status in ACTIVE_STATUSES
                and rec.lease_expires_at < now
                and rec.held is None
            ):
                rec.held = note
                rec.revision += 1
                rec.updated_at = now
                self._history[rec.saga_id].append(
                    LogEntry(
                        EntryKind.SAGA_HELD,
                        at=now,
                        owner=owner,
                        failure=Failure(None, "DefinitionChanged", note),
                    )
                )
                held.append(rec.saga_id)
        return held

    async def versions(
        self, *, name: str | None = None, statuses: Collection[SagaStatus] | None = None
    ) -> list[SagaVersion]:
        wanted = None if statuses is None else frozenset(statuses)
        counts: dict[tuple[str, int, str | None], Counter[SagaStatus]] = {}
        held: Counter[tuple[str, int, str | None]] = Counter()
        for rec in self._records.values():
            if (name is not None and rec.name != name) or (
                wanted is not None and rec.status not in wanted
            ):
                continue
            key = (rec.name, rec.version, rec.fingerprint)
            counts.setdefault(key, Counter())[rec.status] += 1
            if rec.held is not None and rec.status in ACTIVE_STATUSES:
                held[key] += 1
        if wanted is None:
            for found in self._definitions.values():
                if name is None or found.name == name:
                    counts.setdefault((found.name, found.version, found.fingerprint), Counter())
        return [
            SagaVersion(
                key[0],
                key[1],
                key[2],
                dict(counts[key]),
                held[key],
                None if key[2] is None else self._definitions.get((key[0], key[1], key[2])),
            )
            for key in sorted(counts, key=_version_order)
        ]

    async def active_kinds(self) -> set[tuple[str, int]]:
        return {
            (rec.name, rec.version)
            for rec in self._records.values()
            if rec.status in ACTIVE_STATUSES
        }

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
        wanted = None if statuses is None else frozenset(statuses)
        found = [
            _copy(rec)
            for rec in reversed(self._records.values())
            if (name is None or rec.name == name)
            and (status is None or rec.status is status)
            and (wanted is None or rec.status in wanted)
            and (created_before is None or rec.created_at < created_before)
            and (updated_before is None or rec.updated_at < updated_before)
            and (
                deadline_before is None
                or (rec.deadline_at is not None and rec.deadline_at < deadline_before)
            )
            and (timer_before is None or _timer_before(rec, timer_before))
            and (held is None or (rec.held is not None) is held)
        ]
        return found[:limit]

    async def counts(self, *, name: str | None = None) -> dict[SagaStatus, int]:
        found = Counter(
            rec.status for rec in self._records.values() if name is None or rec.name == name
        )
        return dict(found)


def _fits(rec: SagaRecord, fingerprints: Mapping[tuple[str, int], str] | None) -> bool:
    """Whether a claim with *fingerprints* may take *rec*: its fingerprint is the one hosted
    for its kind, or it has none (recorded before fingerprints existed)."""
    return (
        fingerprints is None
        or rec.fingerprint is None
        or fingerprints.get((rec.name, rec.version)) == rec.fingerprint
    )


def _version_order(key: tuple[str, int, str | None]) -> tuple[str, int, str]:
    """Name, version, then fingerprint with ``None`` (no fingerprint) first."""
    return key[0], key[1], "" if key[2] is None else key[2]


def _timer_before(rec: SagaRecord, at: float) -> bool:
    """Whether one of *rec*'s steps has a timer set to a time before *at*."""
    return any(
        (s.timeout_at is not None and s.timeout_at < at)
        or (s.retry_at is not None and s.retry_at < at)
        for s in rec.steps.values()
    )


def _copy(r: SagaRecord) -> SagaRecord:
    """A copy that shares nothing mutable with *r* (written out: it is on the hot path)."""
    return SagaRecord(
        r.saga_id,
        r.name,
        r.version,
        r.status,
        r.data,
        dict(r.steps),
        r.revision,
        r.owner,
        r.lease_expires_at,
        r.deadline_at,
        r.created_at,
        r.updated_at,
        r.failure,
        r.incarnation,
        r.fingerprint,
        r.held,
    )


class InMemoryInbox(_InProcess):
    """An :class:`~pysaga.Inbox` held in a dictionary: de-duplicates within this process."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], InboxRecord] = {}

    def __repr__(self) -> str:
        return f"<InMemoryInbox: {len(self._seen)} messages>"

    async def get(self, consumer: str, message_id: str) -> InboxRecord | None:
        return self._seen.get((consumer, message_id))

    async def put(self, consumer: str, message_id: str, record: InboxRecord) -> InboxRecord:
        return self._seen.setdefault((consumer, message_id), record)

    async def purge(self, before: float) -> int:
        old = [key for key, record in self._seen.items() if record.handled_at < before]
        for key in old:
            del self._seen[key]
        return len(old)
