"""The runtime side of choreographed sagas: the observer that records them in the saga log.

A :class:`ChoreographyObserver` consumes every event of a :class:`~pysaga.Choreography` and
records each choreographed saga in the saga log, next to orchestrated ones and with the same
statuses, so :class:`~pysaga.Inspector`, the ``pysaga`` command and the traces show them the
same way. It also marks a saga that did not end within its deadline FAILED, saying which event
it heard last.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc

from . import _clock, stores
from . import _transitions as _machine
from ._keyed_lock import KeyedLock
from ._optimistic import until_written
from .choreography import Choreography, EventMeaning, MeaningKind
from .errors import DecodeError, LeaseLost
from .messaging import HEADER_SERVICE, message_type
from .models import (
    ACTIVE_STATUSES,
    OBSERVER_PREFIX,
    EntryKind,
    Failure,
    LogEntry,
    SagaRecord,
    SagaStatus,
)
from .participant import HandlerContext, Participant

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from opentelemetry.trace import TracerProvider
    from pydantic import BaseModel

    from .messaging import Broker
    from .protocols import Inbox, SagaLog

__all__ = ("ChoreographyObserver",)

logger = logging.getLogger("pysaga.choreography")


class ChoreographyObserver:
    """Records every saga of a choreographed flow in a saga log, and marks the overdue ones.

    It consumes every event of *flow* and writes each saga as the orchestrator writes an
    orchestrated one, in the same log and with the same statuses:

    * the first event heard creates the saga, RUNNING, with the flow's deadline; the
      starting event (``SAGA_STARTED``) gives it its data;
    * a step's ``done`` event is a ``STEP_SUCCEEDED`` entry, its ``failed`` event a
      ``STEP_FAILED`` entry with the event as the failure, and the saga turns COMPENSATING
      (``SAGA_COMPENSATING``); a ``compensated`` event is a ``COMPENSATION_SUCCEEDED`` entry;
    * a ``completes`` event ends it COMPLETED, a ``compensates`` event COMPENSATED;
    * a saga still unfinished after its deadline is marked FAILED (``SAGA_FAILED``), with a
      failure naming the last event heard: an event was lost, or a service is down. It then
      needs an operator, as a FAILED orchestrated saga does.

    A status that ended (COMPLETED, COMPENSATED, FAILED, RESOLVED) stays: an event heard
    after it (a late one, or one overtaken by the ending event) is still added to the
    history and its step's state, so the timeline shows it, but the status does not change.

    Each event is recorded once: the observer's inbox drops a redelivered copy, and an event
    whose effect the saga's record already shows is not written again. Several observers of
    one flow (on one log) share the events; each write is checked against the record's
    revision and, when another got there first, read again and retried, so they never
    overwrite each other. Every observer of a flow writes as the owner
    ``"pysaga.choreography:<flow>"``; an orchestrator never claims these sagas (it runs none of
    that name), so a flow and an orchestrated saga must not share a name.

    The observer consumes each event destination in its own group (the one named like the
    destination), which the brokers keep from the first publish on: events published while
    no observer runs wait for it.

    Args:
        flow: The flow to observe.
        log: A saga log URL (opened and closed with the observer), a file path for a SQLite
            log, or a :class:`~pysaga.SagaLog` object (used as it is: its owner enters it).
        broker: A broker URL (opened and closed with the observer), or an entered
            :class:`~pysaga.Broker`.
        inbox: Where the events it recorded are remembered (default: in memory).
        check_interval: Seconds between two looks for sagas past their deadline (default: a
            quarter of the deadline, at most 5 s).
        concurrency: Events handled at the same time (default: the broker's).
        tracer_provider: Where spans go (default: the global OpenTelemetry provider).
    """

    def __init__(
        self,
        flow: Choreography,
        *,
        log: str | os.PathLike[str] | SagaLog,
        broker: str | Broker,
        inbox: str | Inbox = "memory://",
        check_interval: float | None = None,
        concurrency: int | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if not isinstance(flow, Choreography):
            raise TypeError(f"ChoreographyObserver takes a pysaga.Choreography, got {flow!r}")
        self._log: SagaLog
        self._log, self._owned_log = stores.log_from(log)
        if check_interval is None:
            check_interval = min(5.0, flow.deadline / 4)
        if not check_interval > 0:
            raise ValueError(f"check_interval must be positive, got {check_interval!r}")
        self.flow = flow
        self.check_interval = check_interval
        self.owner = OBSERVER_PREFIX + flow.name
        """The owner the observer writes its sagas as (the same for every observer of it)."""
        self._guards = KeyedLock()
        self._participant = Participant(
            f"pysaga.observer.{flow.name}",
            broker=broker,
            inbox=inbox,
            concurrency=concurrency,
            tracer_provider=tracer_provider,
            flows=[flow],
            event_groups="destination",
        )
        for model in flow.events.values():
            self._participant.on(model, flow=flow)(self._heard)
        self._stack: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"<ChoreographyObserver {self.flow.name!r} log={self._log!r}>"

    @property
    def log(self) -> SagaLog:
        """The saga log the observer writes to."""
        return self._log

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already running; enter it once")
        async with contextlib.AsyncExitStack() as stack:
            if self._owned_log:
                await stack.enter_async_context(self._log)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            await stack.enter_async_context(self._participant)
            tg.start_soon(self._watch_deadlines)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; reports readiness once it consumes the flow's events."""
        async with self:
            task_status.started()
            await anyio.sleep_forever()

    # -- recording events --------------------------------------------------------------------

    async def _heard(self, event: BaseModel, ctx: HandlerContext) -> None:
        saga_id = ctx.saga_id
        if not saga_id:
            raise DecodeError(
                f"event {ctx.message_id} ({type(event).__name__}) of flow {self.flow.name!r} "
                "carries no saga id (correlation id), so no saga can record it; publish a "
                "flow's events from its handlers (ctx.publish) or with Choreography.start()"
            )
        meaning = self.flow.meanings[message_type(type(event))]
        source = ctx.headers.get(HEADER_SERVICE)
        await self._guards.acquire(saga_id)
        try:
            await self._record(saga_id, meaning, event, source, ctx.sent_at)
        finally:
            self._guards.release(saga_id)

    async def _record(
        self,
        saga_id: str,
        meaning: EventMeaning,
        event: BaseModel,
        source: str | None,
        happened: float | None,
    ) -> None:
        """Write what *event* means to the saga's record: create it, or update it at the
        revision read, reading again when another observer wrote in between."""

        async def attempt() -> None:
            record = await self._log.get(saga_id)
            now = _clock.now()
            at = now if happened is None else min(happened, now)  # when it happened
            kind = meaning.kind
            failure = (
                _failure(meaning.step if kind == "failed" else None, event, source)
                if kind in ("failed", "compensates")
                else None
            )
            data = event.model_dump_json() if kind == "start" else None
            if record is None:
                record = SagaRecord(
                    saga_id=saga_id,
                    name=self.flow.name,
                    version=self.flow.version,
                    status=SagaStatus.RUNNING,
                    data=_machine.NOT_STARTED,
                    owner=self.owner,
                    deadline_at=at + self.flow.deadline,
                    created_at=at,
                    updated_at=at,
                )
                update = _machine.heard(
                    record, kind, meaning.step, at=at, source=source, failure=failure, data=data
                )
                assert update is not None
                record.apply(update)
                await self._log.create(record, update.entries)  # taken meanwhile: again
                return
            self._check_ours(record, event)
            update = _machine.heard(
                record, kind, meaning.step, at=at, source=source, failure=failure, data=data
            )
            if update is None:
                logger.debug(
                    "saga %s (%s) already shows %s; not recorded again",
                    saga_id,
                    self.flow.name,
                    type(event).__name__,
                )
                return
            if update.status is None and kind in ("completes", "compensates"):
                logger.warning(
                    "saga %s (%s) heard %s after it ended %s; it is added to its history, its "
                    "status stays",
                    saga_id,
                    self.flow.name,
                    type(event).__name__,
                    record.status.value,
                )
            try:
                await self._log.update(saga_id, update, revision=record.revision, owner=self.owner)
            except LeaseLost:
                self._check_ours(await self._log.get(saga_id) or record, event)
                raise

        await until_written(
            attempt,
            saga_id=saga_id,
            doing=f"{type(event).__name__} was recorded (it is delivered again)",
            attempts=100,
        )

    def _check_ours(self, record: SagaRecord, event: BaseModel) -> None:
        if record.name != self.flow.name or record.owner != self.owner:
            raise DecodeError(
                f"event {type(event).__name__} of flow {self.flow.name!r} names saga "
                f"{record.saga_id!r}, but that saga in the log is a {record.name!r} saga owned "
                f"by {record.owner!r}; a saga id belongs to one flow or orchestrated saga: "
                "start each flow's saga with a new id"
            )

    # -- deadlines ---------------------------------------------------------------------------

    async def _watch_deadlines(self) -> None:
        while True:
            try:
                await self.mark_overdue()
            except Exception as exc:
                logger.warning(
                    "observer of %s: looking for sagas past their deadline failed (%s: %s); "
                    "will retry",
                    self.flow.name,
                    type(exc).__name__,
                    exc,
                )
            await anyio.sleep(self.check_interval)

    async def mark_overdue(self) -> list[str]:
        """Mark FAILED every saga of the flow still unfinished after its deadline (the
        observer does it every ``check_interval`` seconds); return their ids.

        Each is marked with a ``SAGA_FAILED`` entry and a
        :class:`~pysaga.Failure` of type ``"DeadlineExceeded"`` that names the last event
        heard, so the saga waits for an operator instead of being forgotten.
        """
        marked: list[str] = []
        while True:
            now = _clock.now()
            overdue = await self._log.list(
                name=self.flow.name, statuses=ACTIVE_STATUSES, deadline_before=now, limit=100
            )
            found = [r for r in overdue if r.version == self.flow.version]
            for record in found:
                if await self._mark(record.saga_id, now):
                    marked.append(record.saga_id)
            if len(overdue) < 100 or not found:
                return marked

    async def _mark(self, saga_id: str, now: float) -> bool:
        async def attempt() -> bool:
            record = await self._log.get(saga_id)
            if record is None or record.owner != self.owner:
                return False
            if not _machine.is_overdue(record, now):
                return False
            failure = await self._overdue_failure(record)
            update = _machine.overdue(record, failure, at=now, owner=self.owner)
            assert update is not None
            await self._log.update(saga_id, update, revision=record.revision, owner=self.owner)
            logger.warning("saga %s (%s): %s", saga_id, self.flow.name, failure.message)
            return True

        return await until_written(
            attempt, saga_id=saga_id, doing="marking it overdue", attempts=100
        )

    async def _overdue_failure(self, record: SagaRecord) -> Failure:
        history = await self._log.history(record.saga_id)
        heard = [
            e for e in history if e.kind is not EntryKind.SAGA_CLAIMED and not _by_operator(e.kind)
        ]
        last = heard[-1] if heard else None
        if last is None:
            said = "no event was heard"
            details: dict[str, Any] = {"last_event": None, "last_heard_at": None}
        else:
            when = _dt.datetime.fromtimestamp(last.at, _dt.UTC).isoformat(timespec="milliseconds")
            source = f" from {last.owner}" if last.owner else ""
            event = _describe(self.flow, last)
            said = f"the last event heard was {event}{source} at {when}, and none came after it"
            details = {"last_event": event, "last_heard_at": last.at, "from": last.owner}
        details["deadline"] = self.flow.deadline
        return Failure(
            step=None,
            type="DeadlineExceeded",
            message=(
                f"flow {self.flow.name!r} did not end within its {self.flow.deadline:g} s "
                f"deadline: {said}. An event was lost or a service is down or stuck: find out "
                "which, settle the saga by hand, then mark it resolved"
            ),
            details=details,
        )


def _by_operator(kind: EntryKind) -> bool:
    return bool(getattr(kind, "is_operator_action", False))


def _describe(flow: Choreography, entry: LogEntry) -> str:
    """Which event of *flow* an entry the observer wrote records, in words."""
    kinds: dict[EntryKind, MeaningKind] = {
        EntryKind.SAGA_STARTED: "start",
        EntryKind.STEP_SUCCEEDED: "done",
        EntryKind.STEP_FAILED: "failed",
        EntryKind.COMPENSATION_SUCCEEDED: "compensated",
    }
    kind = kinds.get(entry.kind)
    names = [
        m.model.__name__ for m in flow.meanings.values() if m.kind == kind and m.step == entry.step
    ]
    what = " or ".join(names) if names else entry.kind.value
    return f"{what} (step {entry.step!r})" if entry.step else what


def _failure(step: str | None, event: BaseModel, source: str | None) -> Failure:
    """A failure event, as the failure the saga records."""
    reason = getattr(event, "reason", None)
    if not isinstance(reason, str) or not reason:
        reason = f"{source or 'a service'} published {type(event).__name__}"
    return Failure(
        step=step,
        type=message_type(type(event)),
        message=reason,
        business=True,
        details=event.model_dump(mode="json"),
    )
