"""Read-only questions an operator asks of a saga log: what is there, what is stuck, and what
happened to one saga, step by step.

An :class:`Inspector` only reads. It takes the saga log an orchestrator writes (an open log
object, or a URL it opens itself), so it can run in the orchestrator's process or in a
separate one, for example a script or an admin endpoint::

    async with Inspector("sqlite:///sagas.db") as inspector:
        for record in await inspector.stuck(no_progress_for=300):
            print(record.saga_id, record.status, record.updated_at)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self

from . import stores
from .errors import SagaNotFoundError
from .models import (
    ACTIVE_STATUSES,
    EntryKind,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaVersion,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Collection
    from types import TracebackType

    from .protocols import SagaLog

__all__ = ("Inspector", "LogAccess", "StepCounts", "Timeline", "TimelineEvent")


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One entry of a saga's history, as :meth:`Inspector.timeline` shows it.

    Attributes:
        kind: What happened.
        step: The step concerned, if any.
        attempt: The attempt number (1-based) for step and compensation events, else 0.
        at: When, as seconds since the epoch.
        since_previous: Seconds since the previous event (0.0 for the first one).
        failure: Why, for failure events (step, exception type and message), else ``None``.
        owner: The orchestrator that wrote the event.
    """

    kind: EntryKind
    step: str | None
    attempt: int
    at: float
    since_previous: float
    failure: str | None
    owner: str | None


@dataclass(slots=True)
class StepCounts:
    """How often one step ran and failed, as its history tells it (see
    :attr:`Timeline.steps`).

    Attributes:
        attempts: Attempts of the step's action.
        failures: Those that failed.
        compensation_attempts: Attempts of its compensation.
        compensation_failures: Those that failed.
    """

    attempts: int = 0
    failures: int = 0
    compensation_attempts: int = 0
    compensation_failures: int = 0


_STEP_KINDS = frozenset(
    {
        EntryKind.STEP_STARTED,
        EntryKind.STEP_SUCCEEDED,
        EntryKind.STEP_FAILED,
        EntryKind.COMPENSATION_STARTED,
        EntryKind.COMPENSATION_SUCCEEDED,
        EntryKind.COMPENSATION_FAILED,
    }
)
_COMPENSATION_KINDS = frozenset(
    {
        EntryKind.COMPENSATION_STARTED,
        EntryKind.COMPENSATION_SUCCEEDED,
        EntryKind.COMPENSATION_FAILED,
    }
)


@dataclass(frozen=True, slots=True)
class Timeline:
    """A saga's current state and its whole history, oldest event first.

    Attributes:
        record: The saga's current-state record.
        events: One event per history entry, oldest first.
    """

    record: SagaRecord
    events: tuple[TimelineEvent, ...]

    @property
    def steps(self) -> dict[str, StepCounts]:
        """Each step's attempts and failures, going forward and compensating, counted from
        the history (the record's counters restart when a step starts compensating, and an
        operator's retry gives a fresh budget; the history has every attempt)."""
        counts: dict[str, StepCounts] = {}
        seen: dict[tuple[str, bool], set[int]] = {}
        for event in self.events:
            step = event.step
            kind = event.kind
            if step is None or kind not in _STEP_KINDS:
                continue
            compensating = kind in _COMPENSATION_KINDS
            found = counts.get(step)
            if found is None:
                found = counts[step] = StepCounts()
            attempts = seen.setdefault((step, compensating), set())
            attempts.add(event.attempt)
            failed = kind in (EntryKind.STEP_FAILED, EntryKind.COMPENSATION_FAILED)
            if compensating:
                found.compensation_attempts = len(attempts)
                found.compensation_failures += failed
            else:
                found.attempts = len(attempts)
                found.failures += failed
        return counts

    @property
    def duration(self) -> float:
        """Seconds from the first event to the last (0.0 with fewer than two events)."""
        if not self.events:
            return 0.0
        return self.events[-1].at - self.events[0].at


class LogAccess:
    """The base the inspector and the operator share: a saga log given as a URL (opened and
    closed by ``async with``) or as an open log object (used as it is), and a clock.

    A log opened from a URL must exist already: neither creates one. The inspector opens it
    read-only."""

    _read_only: ClassVar[bool] = True

    def __init__(
        self,
        log: str | os.PathLike[str] | SagaLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log: SagaLog
        self._log, self._owned = stores.log_from(log, create=False, read_only=self._read_only)
        self._clock = clock
        self._open = not self._owned

    def __repr__(self) -> str:
        return f"<{type(self).__name__} log={self._log!r}>"

    @property
    def log(self) -> SagaLog:
        """The saga log this object uses."""
        return self._log

    async def __aenter__(self) -> Self:
        if self._owned:
            await self._log.__aenter__()
            self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owned and self._open:
            self._open = False
            await self._log.__aexit__(exc_type, exc, tb)

    def _ready(self) -> SagaLog:
        if not self._open:
            name = type(self).__name__
            raise RuntimeError(
                f"this {name} opens its saga log itself; use "
                f"'async with {name}(url) as {name.lower()}:'"
            )
        return self._log


class Inspector(LogAccess):
    """Answers questions about the sagas in a saga log, without changing anything.

    Give it the log an orchestrator uses. A URL (or a file path, for SQLite) is opened by the
    inspector, read-only: use it as ``async with Inspector(url) as inspector:``, which opens
    the log and closes it at the end. Opening creates nothing: a SQLite file that does not
    exist, or a PostgreSQL schema without the log's tables, fails with
    :class:`~pysaga.StoreError` saying so. A log object is used as it is: the inspector
    neither enters nor closes it, so an orchestrator's open log (``orchestrator.log``) can be
    shared.

    Args:
        log: A saga log URL (``"sqlite:///sagas.db"``, ``"postgresql://..."``), a file path
            for a SQLite log (``"sagas.db"``), or an object implementing
            :class:`~pysaga.SagaLog`.
        clock: Returns the current time in seconds since the epoch; ages such as
            ``older_than`` and ``no_progress_for`` are measured against it.

    Raises:
        TypeError: *log* is none of the above.
        InvalidURLError: *log* is a malformed URL, or one with a scheme pysaga does not know.
    """

    async def stuck(
        self,
        *,
        no_progress_for: float,
        timer_grace: float = 60.0,
        name: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Unfinished sagas that look stuck: not written for too long, a step timer long
        overdue, or past their deadline.

        A saga is written at every step's start and outcome, so a running saga that has not
        been written for *no_progress_for* seconds is waiting on something: its orchestrator
        is gone and no other has claimed it, or a step hangs. Renewing a lease is not a write.
        Choose *no_progress_for* above your longest step timeout plus retry backoff, or a
        healthy saga waiting on a slow step is reported too.

        A step keeps its timers in the log (``timeout_at`` while an attempt runs,
        ``retry_at`` while a retry waits). A saga with a timer that passed more than
        *timer_grace* seconds ago is also reported: an orchestrator driving it would have
        timed the attempt out, or started the retry, by then. This tells a step whose
        participant never replies, and that nobody times out, from a healthy slow step still
        within its timeout, however long that timeout is. Choose *timer_grace* above your
        orchestrators' lease plus claim interval (a saga whose orchestrator died waits that
        long to be resumed).

        A saga with a deadline that is still unfinished after it is also reported: its
        orchestrator should have turned it back. (A saga past its pivot is no longer bound by
        its deadline and may rightly run on; its timeline shows which case it is.)

        Args:
            no_progress_for: Seconds without a write after which an unfinished saga is stuck.
            timer_grace: Seconds a step's timer may be overdue before its saga is stuck.
            name: Only sagas of this definition.
            limit: At most this many sagas.

        Returns:
            Up to *limit* stuck sagas, the longest silent first. When more are stuck, which
            ones come back is the log's choice (the most recently started, with the logs
            pysaga ships).

        Raises:
            ValueError: *no_progress_for* or *timer_grace* is negative.
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        if no_progress_for < 0:
            raise ValueError(f"no_progress_for must be >= 0 seconds, got {no_progress_for!r}")
        if timer_grace < 0:
            raise ValueError(f"timer_grace must be >= 0 seconds, got {timer_grace!r}")
        log = self._ready()
        now = self._clock()
        silent = await log.list(
            name=name,
            statuses=ACTIVE_STATUSES,
            updated_before=now - no_progress_for,
            limit=limit,
        )
        overdue = await log.list(
            name=name, statuses=ACTIVE_STATUSES, timer_before=now - timer_grace, limit=limit
        )
        late = await log.list(name=name, statuses=ACTIVE_STATUSES, deadline_before=now, limit=limit)
        found = {record.saga_id: record for record in (*silent, *overdue, *late)}
        return sorted(found.values(), key=lambda r: (r.updated_at, r.saga_id))[:limit]

    async def timeline(self, saga_id: str) -> Timeline:
        """The saga's current state and its history, in the order it happened, with the
        time between events.

        Args:
            saga_id: The saga's id.

        Returns:
            The saga's timeline.

        Raises:
            SagaNotFoundError: there is no saga with this id.
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        log = self._ready()
        record = await log.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        events: list[TimelineEvent] = []
        previous: float | None = None
        # In the order things happened: a choreographed saga's events can be heard out of
        # order, and its observer stamps each entry with the event's own time.
        history = sorted(await log.history(saga_id), key=_time)
        for entry in history:
            events.append(
                TimelineEvent(
                    kind=entry.kind,
                    step=entry.step,
                    attempt=entry.attempt,
                    at=entry.at,
                    since_previous=0.0 if previous is None else entry.at - previous,
                    failure=None if entry.failure is None else str(entry.failure),
                    owner=entry.owner,
                )
            )
            previous = entry.at
        return Timeline(record, tuple(events))

    async def versions(self, *, name: str | None = None) -> list[SagaVersion]:
        """The sagas per definition: per ``(name, version, fingerprint)``, how many are in
        each status and how many are held, with the definition's outline when the log has it.

        Use it before retiring a version (are its sagas drained?) and after a deploy (did a
        definition change under sagas in flight?).

        Args:
            name: Only sagas (and definitions) of this name.

        Returns:
            One entry per ``(name, version, fingerprint)``, by name, version and fingerprint;
            definitions an orchestrator recorded but with no saga yet are listed with no
            counts.

        Raises:
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        return await self._ready().versions(name=name)

    async def held(self, *, name: str | None = None, limit: int = 100) -> list[SagaRecord]:
        """Unfinished sagas held for an operator: an orchestrator hosting their name and
        version met them, but they were started on a definition that has changed since, so
        it does not drive them. Each one's ``held`` says what differs.

        Args:
            name: Only sagas of this definition.
            limit: At most this many sagas.

        Returns:
            The held sagas, newest first.

        Raises:
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        return await self._ready().list(name=name, statuses=ACTIVE_STATUSES, held=True, limit=limit)

    async def counts(self, *, name: str | None = None) -> dict[SagaStatus, int]:
        """How many sagas are in each status.

        Args:
            name: Only sagas of this definition.

        Returns:
            A count for every status, zero where there is none, in the order of
            :class:`~pysaga.SagaStatus`.

        Raises:
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        found = await self._ready().counts(name=name)
        return {status: found.get(status, 0) for status in SagaStatus}

    # ``list`` comes last: below it, inside the class body, its name hides the builtin.

    async def list(
        self,
        *,
        name: str | None = None,
        status: SagaStatus | Collection[SagaStatus] | None = None,
        older_than: float | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        """Sagas, newest first.

        Args:
            name: Only sagas of this definition.
            status: Only sagas in this status, or in any of these statuses.
            older_than: Only sagas started more than this many seconds ago.
            limit: At most this many sagas.

        Returns:
            The matching records, newest first.

        Raises:
            RuntimeError: the inspector opens its log itself and was not entered.
        """
        log = self._ready()
        if status is None or isinstance(status, SagaStatus):
            single, several = status, None
        else:
            single, several = None, frozenset(status)
        created_before = None if older_than is None else self._clock() - older_than
        return await log.list(
            name=name,
            status=single,
            statuses=several,
            created_before=created_before,
            limit=limit,
        )


def _time(entry: LogEntry) -> float:
    return entry.at
