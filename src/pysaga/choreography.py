"""Choreographed sagas: no coordinator, each service reacts to the previous one's event.

A :class:`Choreography` declares one flow: the event that starts it, the events that end it
completed or compensated, which events mark the outcome of each named step and of its
compensation, and a deadline. The services themselves are :class:`~pysaga.Participant`
objects that react to the flow's events with ``@service.on(Event)`` handlers and publish the
next events with ``ctx.publish(event)``, through the same inbox (and, on PostgreSQL, the same
transactional outbox) as command handlers.

Routing. Every event type of a flow has its own destination, ``"<flow name>.<event type>"``
(:meth:`Choreography.destination`). A service consumes the destinations of the events it
reacts to in its own consumer group (named after the service), so every interested service
gets each event and copies of one service share them. The broker keys every message by its
correlation id, the saga id, so on Kafka one saga's events of one type stay in order; events
of different types travel apart, and the observer makes no assumption about their order.

Visibility. A :class:`ChoreographyObserver` consumes every event of the flow and records each
choreographed saga in the saga log, next to orchestrated ones and with the same statuses, so
:class:`~pysaga.Inspector`, the ``pysaga`` command and the traces show them the same way. It
also marks a saga that did not end within its deadline FAILED, saying which event it heard
last.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias

import anyio
import anyio.abc
from pydantic import BaseModel

from . import _clock, stores
from .errors import ConcurrencyError, DecodeError, LeaseLost, SagaDefinitionError
from .messaging import Envelope, message_type
from .models import (
    ACTIVE_STATUSES,
    OBSERVER_PREFIX,
    EntryKind,
    Failure,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepState,
    StepStatus,
)
from .orchestrator import new_saga_id
from .participant import HEADER_SERVICE, HandlerContext, Participant, _Guards

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from opentelemetry.trace import TracerProvider

    from .messaging import Broker
    from .protocols import Inbox, SagaLog

__all__ = ("Choreography", "ChoreographyObserver", "StepEvents")

logger = logging.getLogger("pysaga.choreography")

EventTypes: TypeAlias = type[BaseModel] | Sequence[type[BaseModel]]
"""One event model, or several."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""What a flow name and an event type name may be: they make destination names, which every
broker accepts in this form."""

_NOT_STARTED = "null"
"""The data of a saga whose starting event has not been heard yet (another came first)."""

_Kind: TypeAlias = Literal["start", "done", "failed", "compensated", "completes", "compensates"]


class StepEvents:
    """The events that mark the outcome of one named step of a choreographed flow.

    Args:
        done: The event(s) a service publishes when the step's work is done
            (``StockReserved``).
        failed: The event(s) it publishes when the step cannot be done (``StockNotAvailable``,
            ``PaymentFailed``): the saga turns back (COMPENSATING).
        compensated: The event(s) a service publishes once the step's work is undone
            (``StockReleased``).

    Raises:
        SagaDefinitionError: no ``done`` and no ``failed`` event, ``compensated`` without
            ``done``, or an argument that is not a pydantic model class.
    """

    __slots__ = ("compensated", "done", "failed")

    def __init__(
        self,
        *,
        done: EventTypes = (),
        failed: EventTypes = (),
        compensated: EventTypes = (),
    ) -> None:
        self.done: tuple[type[BaseModel], ...] = _models("done", done)
        self.failed: tuple[type[BaseModel], ...] = _models("failed", failed)
        self.compensated: tuple[type[BaseModel], ...] = _models("compensated", compensated)
        if not self.done and not self.failed:
            raise SagaDefinitionError(
                "StepEvents needs done=Event (what says the step's work is done) or "
                "failed=Event (what says it cannot be done), or both"
            )
        if self.compensated and not self.done:
            raise SagaDefinitionError(
                "StepEvents: compensated= undoes a step's work, so it needs done= too (only a "
                "step that was done is compensated)"
            )

    def __repr__(self) -> str:
        parts = [
            f"{label}={[m.__name__ for m in models]}"
            for label, models in (
                ("done", self.done),
                ("failed", self.failed),
                ("compensated", self.compensated),
            )
            if models
        ]
        return f"StepEvents({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class _Meaning:
    """What hearing one event type means for the saga."""

    kind: _Kind
    model: type[BaseModel]
    step: str | None = None


def _models(label: str, value: EventTypes) -> tuple[type[BaseModel], ...]:
    models = (value,) if isinstance(value, type) else tuple(value)
    for model in models:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SagaDefinitionError(
                f"{label}= takes pydantic model classes (the events), got {model!r}"
            )
    return models


class Choreography:
    """The declaration of a choreographed flow: which event starts a saga, which end it, what
    the events in between mean, and how long it may take.

    Args:
        name: The flow's name: the saga name its sagas have in the saga log, and the first
            part of its events' destinations. Letters, digits, ``.``, ``_`` and ``-``.
        starts: The event that starts a saga of this flow (``OrderCreated``); its payload is
            the saga's data in the log.
        completes: The event(s) that end a saga COMPLETED (``OrderCompleted``).
        compensates: The event(s) that end it COMPENSATED: it turned back and every step
            done was undone (``OrderRejected``).
        steps: The named steps, in order, with the events that mark their outcome (see
            :class:`StepEvents`). Optional, but they make the log show each step's status.
        deadline: Seconds a saga may take from its first event to its end. One still
            unfinished after it is marked FAILED by the observer, for an operator.
        version: The flow's version, as recorded in the log.

    Raises:
        SagaDefinitionError: the declaration is inconsistent; the message says what to change.

    Example::

        purchase = Choreography(
            "purchase",
            starts=OrderCreated,
            steps={
                "reserve_stock": StepEvents(
                    done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
                ),
                "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
            },
            completes=OrderCompleted,
            compensates=OrderRejected,
            deadline=30,
        )
    """

    def __init__(
        self,
        name: str,
        *,
        starts: type[BaseModel],
        completes: EventTypes,
        compensates: EventTypes = (),
        steps: Mapping[str, StepEvents] | None = None,
        deadline: float,
        version: int = 1,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SagaDefinitionError(
                f"a choreography needs a name of letters, digits, '.', '_' and '-' (it names "
                f"destinations), like Choreography('purchase', ...); got {name!r}"
            )
        where = f"choreography {name!r}"
        if not (isinstance(starts, type) and issubclass(starts, BaseModel)):
            raise SagaDefinitionError(
                f"{where}: starts= takes the pydantic model class of the starting event, got "
                f"{starts!r}"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SagaDefinitionError(f"{where}: version must be an int >= 1, got {version!r}")
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
            or deadline <= 0
        ):
            raise SagaDefinitionError(
                f"{where}: deadline must be a positive number of seconds (how long a saga may "
                f"take from its first event to its end), got {deadline!r}"
            )
        self.name = name
        self.version = version
        self.deadline = float(deadline)
        self.starts = starts
        try:
            self.completes = _models("completes", completes)
            self.compensates = _models("compensates", compensates)
        except SagaDefinitionError as exc:
            raise SagaDefinitionError(f"{where}: {exc}") from None
        if not self.completes:
            raise SagaDefinitionError(
                f"{where}: completes= names no event; give the event that ends a saga "
                "completed (OrderCompleted, say)"
            )
        self.steps: Mapping[str, StepEvents] = dict(steps or {})
        self._meanings: dict[str, _Meaning] = {}
        self._add(where, _Meaning("start", starts))
        for model in self.completes:
            self._add(where, _Meaning("completes", model))
        for model in self.compensates:
            self._add(where, _Meaning("compensates", model))
        for step, events in self.steps.items():
            if not isinstance(step, str) or not step:
                raise SagaDefinitionError(
                    f"{where}: step names are non-empty strings, got {step!r}"
                )
            if not isinstance(events, StepEvents):
                raise SagaDefinitionError(
                    f"{where}, step {step!r}: give StepEvents(done=..., failed=..., "
                    f"compensated=...), got {events!r}"
                )
            for kind, models in (
                ("done", events.done),
                ("failed", events.failed),
                ("compensated", events.compensated),
            ):
                for model in models:
                    self._add(where, _Meaning(kind, model, step))  # type: ignore[arg-type]
        turns_back = [
            m.model.__name__ for m in self._meanings.values() if m.kind in ("failed", "compensated")
        ]
        if turns_back and not self.compensates:
            raise SagaDefinitionError(
                f"{where}: {', '.join(turns_back)} turn the saga back, but compensates= names "
                "no event that ends it compensated; add one (OrderRejected, say)"
            )

    def _add(self, where: str, meaning: _Meaning) -> None:
        kind = message_type(meaning.model)
        if not _NAME.fullmatch(kind):
            raise SagaDefinitionError(
                f"{where}: event type {kind!r} ({meaning.model.__name__}) makes a destination "
                "name, so it may hold only letters, digits, '.', '_' and '-'; set "
                "__message_type__ on the model"
            )
        known = self._meanings.get(kind)
        if known is not None:
            if known.model is not meaning.model:
                raise SagaDefinitionError(
                    f"{where}: {known.model.__qualname__} and {meaning.model.__qualname__} both "
                    f"travel as message type {kind!r}; give one another __message_type__"
                )
            raise SagaDefinitionError(
                f"{where}: {meaning.model.__name__} is declared as {_said(known)} and as "
                f"{_said(meaning)}; an event has one meaning in a flow"
            )
        self._meanings[kind] = meaning

    def __repr__(self) -> str:
        return f"<Choreography {self.name!r} v{self.version} events={sorted(self._meanings)}>"

    @property
    def events(self) -> Mapping[str, type[BaseModel]]:
        """Every event type of the flow, by message type name."""
        return {kind: meaning.model for kind, meaning in self._meanings.items()}

    def to_mermaid(self) -> str:
        """The flow as a mermaid flowchart of its events: the happy path from the starting
        event through each step's ``done`` event to the completing one, each step's ``failed``
        event, and (dotted) the way back through the ``compensated`` events to the
        compensating end. Paste it into a markdown ```` ```mermaid ```` block."""
        from ._mermaid import choreography_to_mermaid

        return choreography_to_mermaid(self)

    def declares(self, event: type[BaseModel]) -> bool:
        """Whether *event* is one of this flow's event types."""
        known = self._meanings.get(message_type(event))
        return known is not None and known.model is event

    def destination(self, event: type[BaseModel] | BaseModel) -> str:
        """Where the flow's events of this type are published: ``"<flow>.<event type>"``.

        Raises:
            SagaDefinitionError: the flow does not declare this event type.
        """
        model = event if isinstance(event, type) else type(event)
        if not self.declares(model):
            raise SagaDefinitionError(
                f"choreography {self.name!r} does not declare the event {model.__name__}; its "
                f"events are {', '.join(sorted(self._meanings))}. Declare it (as a step's "
                "done=, failed= or compensated= event, say) so the observer records it"
            )
        return f"{self.name}.{message_type(model)}"

    async def start(
        self,
        broker: Broker,
        event: BaseModel,
        *,
        saga_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Publish the starting *event* of a new saga of this flow; return the saga's id.

        Args:
            broker: An entered broker.
            event: An instance of the flow's ``starts`` event.
            saga_id: The saga's id (default: a new time-ordered one). Every event of the saga
                carries it as its correlation id. Publishing again with the same id (a retried
                request) is recorded once by the observer.
            source: The name of the service publishing it, shown in the saga's history.

        Raises:
            SagaDefinitionError: *event* is not the flow's starting event.
        """
        if type(event) is not self.starts:
            raise SagaDefinitionError(
                f"choreography {self.name!r} starts with {self.starts.__name__}, not "
                f"{type(event).__name__}"
            )
        saga_id = saga_id or new_saga_id()
        envelope = Envelope.of(
            event,
            id=f"{saga_id}#start",
            correlation_id=saga_id,
            headers={HEADER_SERVICE: source} if source else None,
        )
        await broker.publish(self.destination(type(event)), envelope)
        return saga_id

    def _meaning(self, kind: str) -> _Meaning:
        return self._meanings[kind]

    def _describe(self, entry: LogEntry) -> str:
        """Which event an entry the observer wrote records, in words."""
        kinds: dict[EntryKind, _Kind] = {
            EntryKind.SAGA_STARTED: "start",
            EntryKind.STEP_SUCCEEDED: "done",
            EntryKind.STEP_FAILED: "failed",
            EntryKind.COMPENSATION_SUCCEEDED: "compensated",
        }
        kind = kinds.get(entry.kind)
        names = [
            m.model.__name__
            for m in self._meanings.values()
            if m.kind == kind and m.step == entry.step
        ]
        what = " or ".join(names) if names else entry.kind.value
        return f"{what} (step {entry.step!r})" if entry.step else what


def _said(meaning: _Meaning) -> str:
    if meaning.step is None:
        return {"start": "starts=", "completes": "completes=", "compensates": "compensates="}[
            meaning.kind
        ]
    return f"step {meaning.step!r} {meaning.kind}="


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
        self._guards = _Guards()
        self._participant = Participant(
            f"pysaga.observer.{flow.name}",
            broker=broker,
            inbox=inbox,
            concurrency=concurrency,
            tracer_provider=tracer_provider,
            flows=[flow],
        )
        self._participant._own_event_groups = True
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
        meaning = self.flow._meaning(message_type(type(event)))
        source = ctx.headers.get(HEADER_SERVICE)
        await self._guards.acquire(saga_id)
        try:
            await self._record(saga_id, meaning, event, source)
        finally:
            self._guards.release(saga_id)

    async def _record(
        self, saga_id: str, meaning: _Meaning, event: BaseModel, source: str | None
    ) -> None:
        """Write what *event* means to the saga's record: create it, or update it at the
        revision read, reading again when another observer wrote in between."""
        for _ in range(100):
            record = await self._log.get(saga_id)
            now = _clock.now()
            if record is None:
                record = SagaRecord(
                    saga_id=saga_id,
                    name=self.flow.name,
                    version=self.flow.version,
                    status=SagaStatus.RUNNING,
                    data=_NOT_STARTED,
                    owner=self.owner,
                    deadline_at=now + self.flow.deadline,
                    created_at=now,
                    updated_at=now,
                )
                update = self._change(record, meaning, event, source, now)
                assert update is not None
                _apply(record, update)
                try:
                    await self._log.create(record, update.entries)
                except ConcurrencyError:
                    continue  # another observer created it first: update it
                return
            self._check_ours(record, event)
            update = self._change(record, meaning, event, source, now)
            if update is None:
                logger.debug(
                    "saga %s (%s) already shows %s; not recorded again",
                    saga_id,
                    self.flow.name,
                    type(event).__name__,
                )
                return
            try:
                await self._log.update(saga_id, update, revision=record.revision, owner=self.owner)
            except ConcurrencyError:
                continue
            except LeaseLost:
                self._check_ours(await self._log.get(saga_id) or record, event)
                raise
            return
        raise ConcurrencyError(
            saga_id,
            f"saga {saga_id!r} kept changing while {type(event).__name__} was recorded; the "
            "event is delivered again",
        )

    def _check_ours(self, record: SagaRecord, event: BaseModel) -> None:
        if record.name != self.flow.name or record.owner != self.owner:
            raise DecodeError(
                f"event {type(event).__name__} of flow {self.flow.name!r} names saga "
                f"{record.saga_id!r}, but that saga in the log is a {record.name!r} saga owned "
                f"by {record.owner!r}; a saga id belongs to one flow or orchestrated saga: "
                "start each flow's saga with a new id"
            )

    def _change(
        self,
        record: SagaRecord,
        meaning: _Meaning,
        event: BaseModel,
        source: str | None,
        now: float,
    ) -> SagaUpdate | None:
        """The write that records *event* on *record*, or ``None`` when the record already
        shows it (a copy of an event recorded before)."""
        status = record.status
        active = status in ACTIVE_STATUSES
        kind = meaning.kind
        name = type(event).__name__
        if kind == "start":
            if record.data != _NOT_STARTED:
                return None
            return SagaUpdate(
                [LogEntry(EntryKind.SAGA_STARTED, at=now, owner=source)],
                data=event.model_dump_json(),
            )
        if kind in ("completes", "compensates"):
            ending = SagaStatus.COMPLETED if kind == "completes" else SagaStatus.COMPENSATED
            if status is ending:
                return None
            entry_kind = (
                EntryKind.SAGA_COMPLETED if kind == "completes" else EntryKind.SAGA_COMPENSATED
            )
            entries = [LogEntry(entry_kind, at=now, owner=source)]
            if not active:
                logger.warning(
                    "saga %s (%s) heard %s after it ended %s; it is added to its history, its "
                    "status stays",
                    record.saga_id,
                    self.flow.name,
                    name,
                    status.value,
                )
                return SagaUpdate(entries)
            failure = None
            if ending is SagaStatus.COMPENSATED:
                if record.failure is None:
                    failure = _failure(None, event, source)
                if status is SagaStatus.RUNNING:  # it turned back unheard: say so, as the
                    # orchestrator does before every COMPENSATED
                    entries.insert(0, LogEntry(EntryKind.SAGA_COMPENSATING, at=now, owner=source))
            return SagaUpdate(entries, status=ending, failure=failure)
        step = meaning.step
        assert step is not None
        state = record.steps.get(step)
        if kind == "compensated":
            if state is not None and state.status is StepStatus.COMPENSATED:
                return None
            new = StepState(
                StepStatus.COMPENSATED,
                state.attempts if state else 0,
                state.failures if state else 0,
            )
            entries = [
                LogEntry(
                    EntryKind.COMPENSATION_SUCCEEDED, at=now, step=step, attempt=1, owner=source
                )
            ]
            if status is SagaStatus.RUNNING:
                entries.append(LogEntry(EntryKind.SAGA_COMPENSATING, at=now, owner=source))
                return SagaUpdate(entries, status=SagaStatus.COMPENSATING, steps={step: new})
            return SagaUpdate(entries, steps={step: new})
        if state is not None and state.attempts:
            return None  # its outcome was heard before
        keep = state is not None and state.status is StepStatus.COMPENSATED
        if kind == "done":
            new = StepState(StepStatus.COMPENSATED if keep else StepStatus.SUCCEEDED, 1, 0)
            entries = [
                LogEntry(EntryKind.STEP_SUCCEEDED, at=now, step=step, attempt=1, owner=source)
            ]
            return SagaUpdate(entries, steps={step: new})
        failure = _failure(step, event, source)
        new = StepState(StepStatus.COMPENSATED if keep else StepStatus.FAILED, 1, 1)
        entries = [
            LogEntry(
                EntryKind.STEP_FAILED, at=now, step=step, attempt=1, failure=failure, owner=source
            )
        ]
        # A step's failure says best why the saga turned back: it replaces one taken from
        # the ending event (heard first), but not another step's, nor a deadline mark's.
        keeps_failure = (
            record.failure is not None and record.failure.step is not None
        ) or status in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.RESOLVED)
        if status is SagaStatus.RUNNING:
            entries.append(LogEntry(EntryKind.SAGA_COMPENSATING, at=now, owner=source))
            return SagaUpdate(
                entries, status=SagaStatus.COMPENSATING, steps={step: new}, failure=failure
            )
        return SagaUpdate(entries, steps={step: new}, failure=None if keeps_failure else failure)

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
        for _ in range(100):
            record = await self._log.get(saga_id)
            if (
                record is None
                or record.status not in ACTIVE_STATUSES
                or record.deadline_at is None
                or record.deadline_at >= now
                or record.owner != self.owner
            ):
                return False
            failure = await self._overdue_failure(record)
            update = SagaUpdate(
                [LogEntry(EntryKind.SAGA_FAILED, at=now, failure=failure, owner=self.owner)],
                status=SagaStatus.FAILED,
                failure=failure,
            )
            try:
                await self._log.update(saga_id, update, revision=record.revision, owner=self.owner)
            except ConcurrencyError:
                continue
            logger.warning("saga %s (%s): %s", saga_id, self.flow.name, failure.message)
            return True
        return False

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
            event = self.flow._describe(last)
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


def _apply(record: SagaRecord, update: SagaUpdate) -> None:
    """Fold *update* into a record about to be created."""
    if update.status is not None:
        record.status = update.status
    record.steps.update(update.steps)
    if update.data is not None:
        record.data = update.data
    if update.failure is not None:
        record.failure = update.failure
