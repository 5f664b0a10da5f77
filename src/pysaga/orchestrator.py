"""The orchestrator: runs saga instances from the saga log.

Every decision is written to the log before it is acted on (intent) and after (outcome), so a
saga can continue from its last durable record in any process, after any crash:

* a step whose intent is written but whose outcome is not is *in doubt*: going forward it runs
  again with the same idempotency key; turning back, it is compensated (its compensation must
  tolerate "nothing to undo");
* a step that raised is taken to have had no effect, and is not compensated;
* a timed-out step is in doubt (it was interrupted), and is compensated when turning back.

To save commits, a step's outcome is written together with the next step's intent (or with the
saga's end): the outcome is still durable before anything else happens.

Each saga in the log carries a lease (owner, incarnation and expiry) that its orchestrator
renews while it runs. The incarnation is a fresh id each time an orchestrator starts, so a
restarted orchestrator never mistakes its dead predecessor's sagas for ones it drives: on
start-up it takes back at once the sagas its name still holds, and it renews only its own
incarnation's leases. On start-up, and then whenever a lease it does not hold runs out, an
orchestrator claims unfinished sagas whose lease expired and resumes them. A write is refused
(``LeaseLost``, or ``ConcurrencyError`` for a holder of the same name) once another
orchestrator has claimed the saga, which stops the old holder from touching it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import anyio
import anyio.abc
from pydantic import BaseModel, ValidationError

from . import _clock, stores
from . import _transitions as _machine
from ._engine import Run as _Run
from ._engine import Steps as _Steps
from ._engine import first_timeouts as _first_timeouts
from ._remote import Requester as _Requester
from .definition import Saga, describe_changes
from .errors import (
    ConcurrencyError,
    LeaseLost,
    SagaDefinitionError,
    SagaIdTaken,
    SagaNotFoundError,
    SagaNotRegisteredError,
)
from .interceptors import chain as _chain
from .models import (
    ACTIVE_STATUSES,
    OBSERVER_PREFIX,
    DefinitionRecord,
    LogEntry,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    SagaVersion,
    new_saga_id,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .interceptors import Interceptor, Invoke
    from .messaging import Broker
    from .protocols import SagaLog

from .tracing import Telemetry, telemetry

__all__ = ("Orchestrator",)

logger = logging.getLogger("pysaga.orchestrator")

DataT = TypeVar("DataT", bound=BaseModel)

_CLAIM_MARGIN = 0.01
"""Seconds after a lease runs out at which a claim looks for it (a claim takes only leases
that ended strictly before its time)."""


class _Latch:
    """A one-shot event whose waitable is made only when someone waits before it is set
    (most never are waited on: one per saga run is on the hot path)."""

    __slots__ = ("_event", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self.is_set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self.is_set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class _Completion:
    """How waiters learn that a saga driven in the background ended, and how."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = _Latch()
        self.outcome: SagaOutcome[Any] | None = None


class _Driving:
    """How a saga this orchestrator drives is stopped when the log gives it to a new run."""

    __slots__ = ("ended", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.ended = _Latch()


class Orchestrator:
    """Runs sagas durably from a saga log.

    Args:
        sagas: The saga definitions this orchestrator may run and resume. Several versions
            of one saga name may be given (``[order_v1, order_v2]``): a saga started by
            name starts on the newest, and each saga in the log is resumed on the version
            it was started on. Two different definitions under one name and version are
            refused.
        log: A saga log URL (``"sqlite:///sagas.db"``, ``"postgresql://..."``,
            ``"memory://"``), a SQLite file path (``"sagas.db"``, a ``pathlib.Path``), or a
            :class:`~pysaga.SagaLog` object. Entering the orchestrator enters the log; one
            opened from a URL or path is created if missing (logged at INFO, with where).
        lease: Seconds a saga stays claimed by this orchestrator without a renewal. After a
            crash, its sagas are resumed by another orchestrator once their lease has run
            out, or at once by this one restarted under the same ``owner=`` name.
        claim_interval: The longest wait, in seconds, between looks for abandoned sagas
            (default: ``lease / 2``); the orchestrator also looks as soon as the next lease
            it does not hold runs out.
        drain_timeout: On a normal exit, seconds to let running sagas finish before they are
            interrupted (they resume later from the log).
        owner: This orchestrator's name in the log (default: host, pid and a random part).
            A name given here survives restarts: an orchestrator started under the name of
            one that died takes that one's unfinished sagas back at once. Two orchestrators
            running at the same time must not share a name.
        tracer_provider: Where spans go (default: the global OpenTelemetry provider).
        meter_provider: Where metrics go (default: the global OpenTelemetry provider).
        broker: Where remote steps' commands go: a broker URL (``"memory://shop"``,
            ``"amqp://..."``, ``"kafka://..."``), which the orchestrator opens and closes, or
            a :class:`~pysaga.Broker` object that the caller has entered. Needed only when a
            saga has remote steps.
        interceptors: Wrap every attempt of every step and compensation, outermost first
            (see :mod:`pysaga.interceptors`); tracing is added inside them.

    Use it as an async context manager, or run :meth:`serve` in a task group::

        async with Orchestrator(sagas=[place_order], log="sqlite:///sagas.db") as orch:
            outcome = await orch.run(place_order, Order(...))
    """

    def __init__(
        self,
        *,
        sagas: Iterable[Saga[Any]],
        log: str | os.PathLike[str] | SagaLog = "sqlite:///sagas.db",
        lease: float = 15.0,
        claim_interval: float | None = None,
        drain_timeout: float = 10.0,
        owner: str | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        broker: str | Broker | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self._sagas: dict[str, Saga[Any]] = {}  # the newest version of each name
        self._versions: dict[tuple[str, int], Saga[Any]] = {}
        for saga in sagas:
            if not isinstance(saga, Saga):
                raise TypeError(f"sagas=[...] takes pysaga.Saga objects, got {saga!r}")
            hosted = self._versions.get((saga.name, saga.version))
            if hosted is not None and hosted is not saga:
                raise SagaDefinitionError(
                    f"two different definitions of saga {saga.name!r} both have version "
                    f"{saga.version}; give the changed one the next version "
                    f"(Saga({saga.name!r}, ..., version={saga.version + 1})) so that sagas "
                    "started on the other one finish on it"
                )
            saga.seal()
            self._versions[saga.name, saga.version] = saga
            newest = self._sagas.get(saga.name)
            if newest is None or saga.version > newest.version:
                self._sagas[saga.name] = saga
        if not lease > 0:
            raise ValueError("lease must be > 0 seconds")
        self._log: SagaLog = stores.log_from(log)[0]
        remote = sorted(
            f"{saga.name}.{step.name}"
            for saga in self._versions.values()
            for step in saga.steps
            if step.remote is not None
        )
        if remote and broker is None:
            raise ValueError(
                f"steps {', '.join(remote)} are remote: pass Orchestrator(broker=...) so their "
                "commands can be sent ('memory://name' in one process, 'amqp://...' or "
                "'kafka://...' across processes)"
            )
        self._own_broker: Broker | None = None
        self._requester: _Requester | None = None
        if broker is not None:
            from . import brokers

            resolved, owned = brokers.resolve(broker)
            self._own_broker = resolved if owned else None
            self._requester = _Requester(resolved)
        self.lease = lease
        self.claim_interval = claim_interval if claim_interval is not None else lease / 2
        self.drain_timeout = drain_timeout
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._incarnation = uuid.uuid4().hex
        self._started = False
        self._claimed_at = 0.0  # the time the last claim looked for lapsed leases at
        self._telemetry = (
            Telemetry(tracer_provider, meter_provider)
            if tracer_provider is not None or meter_provider is not None
            else telemetry
        )
        self._interceptors = tuple(interceptors)
        for interceptor in self._interceptors:
            if not callable(interceptor):
                raise TypeError(
                    f"interceptors=[...] takes 'async def f(call, proceed)' functions, got "
                    f"{interceptor!r}"
                )
        # How runs call each saga's steps: through the interceptors, and through tracing too
        # while an SDK is installed (checked once per run).
        self._calls: dict[tuple[str, int, bool], _Steps] = {}  # by name, version, traced
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._running: dict[str, _Run[Any]] = {}
        self._driving: dict[str, _Driving] = {}
        self._done: dict[str, _Completion] = {}  # only while a saga runs in the background
        self._quarantined: set[str] = set()
        self._abandoned: set[str] = set()  # stopped driving them; their release failed
        self._unknown: set[tuple[str, int]] = set()
        self._next_hold_check = 0.0  # anyio time of the next look for changed definitions
        self._idle = _Latch()
        self._idle.set()

    def __repr__(self) -> str:
        hosted = sorted(f"{name} v{version}" for name, version in self._versions)
        return f"<Orchestrator {self.owner} ({self._incarnation}) sagas={hosted} log={self._log!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log(self) -> SagaLog:
        """The saga log this orchestrator writes to."""
        return self._log

    @property
    def incarnation(self) -> str:
        """This run of the orchestrator: a fresh id each time it starts, recorded with
        ``owner`` on the sagas whose lease it holds. It tells a restarted orchestrator's
        sagas from those its predecessor of the same name left behind."""
        return self._incarnation

    @property
    def unknown_sagas(self) -> frozenset[tuple[str, int]]:
        """``(name, version)`` of unfinished sagas in the log that this orchestrator does not
        run (not in ``sagas=[...]``, or another version). They are left untouched."""
        return frozenset(self._unknown)

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this Orchestrator is already running; enter it once")
        if self._started:  # entered again: a new run, so a new incarnation
            self._incarnation = uuid.uuid4().hex
        self._started = True
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._log)
            if self._own_broker is not None:
                await stack.enter_async_context(self._own_broker)
            if self._requester is not None:
                await self._requester.start()
                stack.push_async_callback(self._requester.stop)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown)
            await self._define()
            await self._report_unknown()
            await self._claim(predecessors=True)
            # asked here, before any saga starts, so it takes no connection from a first write
            first_claim = await self._until_next_claim()
            self._tg.start_soon(self._maintain, first_claim)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if exc_type is None and self._running:
            with anyio.move_on_after(self.drain_timeout):
                await self._idle.wait()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        # The body's own exception propagates as it is (not wrapped in an exception group by
        # the task group): the sagas were cancelled above and resume later from the log.
        try:
            await stack.__aexit__(None, None, None)
        finally:
            self._tg = None

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._log.release(self.owner, incarnation=self._incarnation)
            except Exception:  # the log may be the reason we stop
                logger.warning("could not release the leases of %s", self.owner, exc_info=True)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled: resume abandoned sagas, keep leases, run started sagas.

        Reports readiness through ``task_status`` once the log is open and the first claim of
        abandoned sagas is done (``await task_group.start(orch.serve)``).
        """
        async with self:
            task_status.started()
            await anyio.sleep_forever()

    async def _maintain(self, first_claim: float) -> None:
        """Renew this incarnation's leases every ``lease / 3``; claim abandoned sagas as soon
        as the next lease this incarnation does not hold runs out (and at least every
        ``claim_interval``), the first time in *first_claim* seconds."""
        renew_every = self.lease / 3
        next_renew = anyio.current_time() + renew_every
        next_claim = anyio.current_time() + first_claim
        while True:
            await anyio.sleep(max(0.0, min(next_renew, next_claim) - anyio.current_time()))
            try:
                if anyio.current_time() >= next_renew:
                    next_renew = anyio.current_time() + renew_every
                    await self._log.renew(
                        self.owner, incarnation=self._incarnation, until=_clock.now() + self.lease
                    )
                if anyio.current_time() >= next_claim:
                    next_claim = anyio.current_time() + self.claim_interval
                    await self._claim()
                    next_claim = anyio.current_time() + await self._until_next_claim()
            except Exception:
                logger.exception("orchestrator %s: lease upkeep failed; will retry", self.owner)

    async def _until_next_claim(self) -> float:
        """Seconds until a claim may find a saga: until just after the earliest lease this
        incarnation does not hold runs out (at once if it ran out since the last claim), or
        ``claim_interval`` if that is sooner. A lease that had run out already when the last
        claim looked, yet was not taken (another claimer is taking it), is looked at again
        after a tenth of ``claim_interval``, not in a tight loop."""
        expiry = await self._log.next_expiry(
            self.owner,
            incarnation=self._incarnation,
            kinds=set(self._versions),
            fingerprints=self._fingerprints(),
        )
        if expiry is None:
            return self.claim_interval
        if expiry < self._claimed_at:
            return self.claim_interval / 10
        return min(self.claim_interval, max(0.0, expiry - _clock.now()) + _CLAIM_MARGIN)

    async def _observed(self, name: str) -> bool:
        """Whether the unfinished sagas named *name* are choreographed ones, which a
        :class:`~pysaga.ChoreographyObserver` records and no orchestrator drives."""
        found = await self._log.list(name=name, statuses=ACTIVE_STATUSES, limit=1)
        return bool(found) and (found[0].owner or "").startswith(OBSERVER_PREFIX)

    async def _define(self) -> None:
        """Record the outline of each definition hosted here, so that a saga started on one
        can later be told apart from a changed definition, step by step."""
        now = _clock.now()
        for saga in self._versions.values():
            await self._log.define(
                DefinitionRecord(saga.name, saga.version, saga.fingerprint, saga.outline(), now)
            )

    def _fingerprints(self) -> dict[tuple[str, int], str]:
        """The fingerprint hosted here for each name and version: only sagas started on it
        (or recorded before fingerprints existed) are claimed."""
        return {key: saga.fingerprint for key, saga in self._versions.items()}

    async def _hold_changed(self) -> None:
        """Hold for an operator the unfinished sagas of a name and version hosted here that
        were started on another definition (their fingerprint differs): they are never driven
        here. One line is logged per definition when sagas of it are newly held."""
        for group in await self._log.versions(statuses=ACTIVE_STATUSES):
            hosted = self._versions.get((group.name, group.version))
            if (
                hosted is None
                or group.fingerprint is None
                or group.fingerprint == hosted.fingerprint
                or group.held >= group.total
            ):
                continue
            note = self._change_note(group, hosted)
            held = await self._log.hold(
                group.name,
                group.version,
                group.fingerprint,
                note=note,
                now=_clock.now(),
                owner=self.owner,
            )
            if held:
                logger.error(
                    "%d saga(s) of %r version %d are held for an operator, not driven: %s",
                    len(held),
                    group.name,
                    group.version,
                    note,
                )

    def _change_note(self, group: SagaVersion, hosted: Saga[Any]) -> str:
        """What an operator reads on a held saga: what differs, and what to do."""
        if group.definition is not None:
            changes = describe_changes(dict(group.definition.outline), hosted.outline())
            what = "; ".join(changes) if changes else "their outlines read the same"
        else:
            what = "the definition it was started on is not recorded in this log"
        return (
            f"definition changed: {what}. The saga was started on {group.name!r} version "
            f"{group.version} with fingerprint {group.fingerprint}; orchestrator {self.owner} "
            f"hosts that name and version with fingerprint {hosted.fingerprint}. Host the "
            f"definition it was started on as version {group.version} (give the changed one a "
            "new version), or settle the saga by hand"
        )

    async def _report_unknown(self) -> None:
        known = set(self._versions)
        unknown = await self._log.active_kinds() - known
        for name, version in sorted(unknown):
            if (name, version) not in self._unknown:
                if await self._observed(name):
                    continue  # a choreography's observer keeps these: nothing to run here
                registered = sorted(v for n, v in self._versions if n == name)
                hint = (
                    f"this orchestrator runs version {', '.join(map(str, registered))}"
                    if registered
                    else "it is not in this orchestrator's sagas=[...]"
                )
                logger.warning(
                    "the saga log holds unfinished sagas of %r version %d, but %s; they are "
                    "left untouched until an orchestrator that runs them starts",
                    name,
                    version,
                    hint,
                )
        self._unknown = unknown

    async def _claim(self, *, predecessors: bool = False) -> None:
        """Claim and resume abandoned sagas. With *predecessors* (on start-up), the sagas
        an earlier incarnation of this owner name holds are taken back at once. First, the
        sagas of a hosted name and version whose definition changed are held for an operator
        (a look made at most once per claim interval: it counts the unfinished sagas per
        definition)."""
        if anyio.current_time() >= self._next_hold_check:
            self._next_hold_check = anyio.current_time() + self.claim_interval
            await self._hold_changed()
        kinds = set(self._versions)
        fingerprints = self._fingerprints()
        taken_back = 0
        while True:
            now = _clock.now()
            claimed = await self._log.claim(
                self.owner,
                incarnation=self._incarnation,
                kinds=kinds,
                lease=self.lease,
                now=now,
                limit=100,
                predecessors=predecessors,
                fingerprints=fingerprints,
            )
            self._claimed_at = now
            if predecessors:
                taken_back += len(claimed)
            for record in claimed:
                stale = self._driving.get(record.saga_id)
                if stale is not None:
                    # Claimed again while a run here drives it: an operator intervened (or
                    # our lease lapsed). That run can no longer write; stop it, and go on
                    # from the claimed record once it has stopped.
                    stale.scope.cancel()
                    if self._tg is not None:
                        self._tg.start_soon(self._resume_after, stale, record)
                    continue
                if record.saga_id in self._running:
                    continue
                self._resume(record)
            if len(claimed) < 100:
                if taken_back:
                    logger.info(
                        "orchestrator %s (incarnation %s) claimed %d unfinished saga(s) as "
                        "it started: those an earlier run under this name held, and any "
                        "whose lease had run out",
                        self.owner,
                        self._incarnation,
                        taken_back,
                    )
                return

    def _resume(self, record: SagaRecord) -> None:
        """Drive a claimed saga from its record, unless its data no longer fits its model."""
        if record.saga_id in self._quarantined:
            return
        saga = self._versions[record.name, record.version]
        if record.fingerprint is not None and record.fingerprint != saga.fingerprint:
            # the log should not have given it (claim filters by fingerprint): never drive it
            self._quarantined.add(record.saga_id)
            logger.error(
                "saga %s (%s version %d) was started on definition %s, but this orchestrator "
                "hosts %s: it is not driven here",
                record.saga_id,
                record.name,
                record.version,
                record.fingerprint,
                saga.fingerprint,
            )
            if self._tg is not None:
                self._tg.start_soon(self._give_up_lease, record.saga_id)
            return
        try:
            data = saga.data_type.model_validate_json(record.data)
        except ValidationError as exc:
            self._quarantined.add(record.saga_id)
            logger.error(
                "saga %s (%s): its data in the log no longer fits %s, so it is left "
                "as it is for an operator: %s",
                record.saga_id,
                saga.name,
                saga.data_type.__name__,
                exc,
            )
            return
        logger.info("resuming saga %s (%s) from the log", record.saga_id, saga.name)
        self._launch(self._new_run(saga, record, data))

    async def _resume_after(self, stale: _Driving, record: SagaRecord) -> None:
        await stale.ended.wait()
        self._resume(record)

    def _claim_soon(self) -> None:
        """Look for sagas to claim now rather than at the next round (after a saga was
        taken over from the log: an operator's action is resumed at once)."""
        if self._tg is not None:
            self._tg.start_soon(self._claim_quietly)

    async def _claim_quietly(self) -> None:
        try:
            await self._claim()
        except Exception:
            logger.warning("orchestrator %s: claim failed; will retry", self.owner, exc_info=True)

    def _new_run(
        self, saga: Saga[DataT], record: SagaRecord, data: DataT, *, created: bool = False
    ) -> _Run[DataT]:
        traced = self._telemetry.active
        key = (saga.name, saga.version, traced)
        steps = self._calls.get(key)
        if steps is None:
            steps = self._calls[key] = self._steps_of(saga, traced=traced)
        return _Run(
            self._log, self.owner, saga, steps, record, data, created=created, traced=traced
        )

    def _steps_of(self, saga: Saga[Any], *, traced: bool) -> _Steps:
        """How runs of *saga* call its steps: each step's own call (local, or a command sent
        over the broker), wrapped in the interceptors."""
        interceptors = list(self._interceptors)
        if traced:
            interceptors.append(self._telemetry.trace_attempt)
        steps: _Steps = {}
        for step in saga.steps:
            if step.remote is not None:
                assert self._requester is not None  # checked when the orchestrator was made
                action: Invoke = self._requester.invoker(step.remote, compensating=False)
                undo: Invoke | None = (
                    self._requester.invoker(step.remote, compensating=True)
                    if step.has_compensation
                    else None
                )
            else:
                assert step.action is not None  # only a remote step has none
                action = _local(step.action, step.wants_context)
                undo = (
                    _local(step.compensation, step.compensation_wants_context)
                    if step.compensation is not None
                    else None
                )
            steps[step.name] = (
                _chain(step, action, interceptors),
                None if undo is None else _chain(step, undo, interceptors),
            )
        return steps

    def _launch(self, run: _Run[Any]) -> None:
        if self._tg is None:
            raise RuntimeError(
                "the Orchestrator is not running; use 'async with Orchestrator(...) as orch:'"
            )
        self._track(run)
        self._done.setdefault(run.saga_id, _Completion())
        self._tg.start_soon(self._drive, run)

    def _track(self, run: _Run[Any]) -> None:
        """Count *run* as in flight here (the drain on exit waits for it)."""
        self._running[run.saga_id] = run
        self._driving.setdefault(run.saga_id, _Driving())
        if self._idle.is_set:
            self._idle = _Latch()

    def _untrack(self, saga_id: str) -> None:
        self._running.pop(saga_id, None)
        if not self._running:
            self._idle.set()

    def _stop_driving(self, saga_id: str) -> None:
        """The last thing a run's driver does: a new run of the saga may start now."""
        driving = self._driving.pop(saga_id, None)
        if driving is not None:
            driving.ended.set()

    def _taken_over(self, run: _Run[Any], exc: BaseException | None = None) -> None:
        """One line when a saga is taken from under a run here (an operator's action, or a
        claim): the run stops, the saga goes on from the log."""
        logger.warning(
            "saga %s (%s) was changed in the log while orchestrator %s drove it (an operator "
            "acted on it, or it was claimed again): this run stops and the saga goes on "
            "from the log%s",
            run.saga_id,
            run.saga.name,
            self.owner,
            "" if exc is None else f" ({exc})",
        )

    async def _give_up_lease(self, saga_id: str) -> None:
        """After an unexpected error: let the saga be claimed again (by anyone, us too).

        If the log cannot take even that (it is the reason the saga stopped, say), the
        release is retried in the background until it lands: this orchestrator renews every
        lease it holds, so a saga it holds but no longer drives would otherwise be kept from
        every claimer for as long as it lives.
        """
        with anyio.CancelScope(shield=True):
            try:
                await self._log.release(self.owner, [saga_id], incarnation=self._incarnation)
            except Exception:
                self._abandoned.add(saga_id)
                if self._tg is not None and len(self._abandoned) == 1:
                    self._tg.start_soon(self._release_abandoned)

    async def _release_abandoned(self) -> None:
        delay = 0.1
        while self._abandoned:
            await anyio.sleep(delay)
            ids = sorted(self._abandoned)
            try:
                await self._log.release(self.owner, ids, incarnation=self._incarnation)
            except Exception:
                delay = min(delay * 2, self.lease / 3)
                logger.warning(
                    "orchestrator %s: could not give up %d saga(s) it stopped driving; "
                    "retrying in %.1f s",
                    self.owner,
                    len(ids),
                    delay,
                    exc_info=True,
                )
                continue
            self._abandoned.difference_update(ids)

    async def _drive(self, run: _Run[Any]) -> None:
        outcome: SagaOutcome[Any] | None = None
        driving = self._driving.setdefault(run.saga_id, _Driving())
        try:
            with driving.scope:
                outcome = await self._drive_one(run)
            if driving.scope.cancelled_caught:
                self._taken_over(run)
        except LeaseLost as exc:
            logger.warning("%s", exc)
        except ConcurrencyError as exc:
            self._taken_over(run, exc)
            self._untrack(run.saga_id)
            await self._give_up_lease(run.saga_id)
            self._claim_soon()
        except Exception:
            logger.exception(
                "saga %s (%s): the orchestrator hit an error while driving it; it stays in "
                "the log and is resumed when its lease is claimed again",
                run.saga_id,
                run.saga.name,
            )
            # no longer driven here before it is released, so that our own next claim may
            # take it up again
            self._untrack(run.saga_id)
            await self._give_up_lease(run.saga_id)
        finally:
            self._untrack(run.saga_id)
            completion = self._done.pop(run.saga_id, None)
            if completion is not None:  # waiters read the outcome from it, or from the log
                completion.outcome = outcome
                completion.event.set()
            self._stop_driving(run.saga_id)

    # -- the public API ----------------------------------------------------------------------

    def _registered(self, saga: Saga[DataT] | str) -> Saga[DataT]:
        """The hosted definition a new saga starts on: the newest version of a name, or the
        very definition given."""
        if isinstance(saga, str):
            found = self._sagas.get(saga)
            if found is not None:
                return found
            name, what = saga, f"no saga named {saga!r} is"
        else:
            found = self._versions.get((saga.name, saga.version))
            if found is saga:
                return found
            name, what = saga.name, f"saga {saga.name!r} version {saga.version} is"
            if found is not None:
                what = (
                    f"this definition of saga {saga.name!r} version {saga.version} is not the "
                    "one hosted under that name and version, so it is"
                )
        hosted = sorted(v for n, v in self._versions if n == name)
        runs = f" (it runs version {', '.join(map(str, hosted))})" if hosted else ""
        raise SagaNotRegisteredError(
            f"{what} not registered with this orchestrator{runs}; pass it in "
            "Orchestrator(sagas=[...])"
        )

    async def start(
        self,
        saga: Saga[DataT] | str,
        data: DataT | Mapping[str, Any],
        *,
        saga_id: str | None = None,
        on_conflict: Literal["raise", "use_existing"] = "raise",
    ) -> str:
        """Record a new saga in the log and start running it; return its id at once.

        Args:
            saga: A saga given to this orchestrator, or a saga name: the newest version
                of that name it hosts (in-flight sagas of older versions finish on theirs).
            data: The saga's input: an instance of its data model, or a mapping validated
                into one.
            saga_id: Your own id for the saga (default: :func:`new_saga_id`, a time-ordered
                UUID).
            on_conflict: What to do when a saga with *saga_id* exists already: ``"raise"``
                (:class:`~pysaga.SagaIdTaken`), or ``"use_existing"``: return its id when it is
                the same saga with the same data (and raise ``SagaIdTaken``, naming what
                differs, when it is not). With ``"use_existing"``, a ``start()`` that failed
                with :class:`~pysaga.StoreError` (the write may or may not have landed) can
                always be retried with the same id.

        Raises:
            pydantic.ValidationError: *data* does not fit the saga's data model (nothing is
                written).
            SagaIdTaken: a saga with *saga_id* exists already (see *on_conflict*).
            SagaNotRegisteredError: *saga* was not given to this orchestrator.
            StoreError: the saga log failed; the saga may or may not be in it.
        """
        run = await self._create(saga, data, saga_id, on_conflict)
        if run is not None:
            self._launch(run)
            return run.saga_id
        assert saga_id is not None
        return saga_id

    async def _create(
        self,
        saga: Saga[DataT] | str,
        data: DataT | Mapping[str, Any],
        saga_id: str | None,
        on_conflict: str,
    ) -> _Run[DataT] | None:
        """Validate the input, write the new saga to the log, and return its driver; or
        ``None`` when the saga exists already and *on_conflict* says to use it."""
        definition = self._registered(saga)
        model = definition.data_type.model_validate(data)
        if on_conflict not in ("raise", "use_existing"):
            raise ValueError(f"on_conflict={on_conflict!r}: use 'raise' or 'use_existing'")
        if self._tg is None:
            raise RuntimeError(
                "the Orchestrator is not running; use 'async with Orchestrator(...) as orch:'"
            )
        now = _clock.now()
        record = SagaRecord(
            saga_id or new_saga_id(),
            definition.name,
            definition.version,
            SagaStatus.RUNNING,
            model.model_dump_json(),
            owner=self.owner,
            incarnation=self._incarnation,
            fingerprint=definition.fingerprint,
            lease_expires_at=now + self.lease,
            deadline_at=now + definition.deadline if definition.deadline else None,
            created_at=now,
            updated_at=now,
        )
        # The first stage's intents are written with the saga itself: one commit fewer, and
        # still before the steps run.
        entries = _machine.start(record, _first_timeouts(definition, now), at=now, owner=self.owner)
        try:
            await self._log.create(record, entries)
        except ConcurrencyError:
            existing = await self._log.get(record.saga_id)
            if existing is None:  # pragma: no cover - a saga is never deleted
                raise
            differences = _differences(existing, record)
            if differences or on_conflict == "raise":
                raise SagaIdTaken(record.saga_id, differences) from None
            self._adopt(existing)
            return None
        return self._new_run(definition, record, model, created=True)

    def _adopt(self, record: SagaRecord) -> None:
        """A saga asked for again exists: drive it here if it is this orchestrator's and no
        run here drives it (its creation landed although the log reported a failure)."""
        if (
            record.owner == self.owner
            and record.incarnation in (None, self._incarnation)
            and record.status in ACTIVE_STATUSES
            and record.saga_id not in self._running
            and record.saga_id not in self._driving
        ):
            self._resume(record)

    async def run(
        self,
        saga: Saga[DataT] | str,
        data: DataT | Mapping[str, Any],
        *,
        saga_id: str | None = None,
        on_conflict: Literal["raise", "use_existing"] = "raise",
    ) -> SagaOutcome[DataT]:
        """Start a saga and wait for its outcome (COMPLETED, COMPENSATED or FAILED).

        The saga runs in the calling task (no hand-off). If the caller is cancelled, the saga
        is not: it goes on in the orchestrator's background from where it was, and
        :meth:`wait` can still collect its outcome. With ``on_conflict="use_existing"`` and a
        *saga_id* that exists (with the same data), it waits for that saga's outcome. *saga* and
        *data* are as for :meth:`start` (a name runs the newest version hosted).

        Raises:
            pydantic.ValidationError: *data* does not fit the saga's data model (nothing is
                written).
            SagaIdTaken: a saga with *saga_id* exists already (see :meth:`start`).
            StoreError: the saga log failed; the saga stays in the log and is resumed later.
        """
        run = await self._create(saga, data, saga_id, on_conflict)
        if run is None:
            assert saga_id is not None
            return await self.wait(saga_id)
        self._track(run)
        driving = self._driving[run.saga_id]
        handed_off = False
        try:
            with driving.scope:
                return await self._drive_one(run)
            self._taken_over(run)  # the scope was cancelled: a new run here goes on
        except LeaseLost as exc:
            logger.warning("%s", exc)
        except ConcurrencyError as exc:
            self._taken_over(run, exc)
            self._untrack(run.saga_id)
            await self._give_up_lease(run.saga_id)
            self._claim_soon()
        except Exception:
            self._untrack(run.saga_id)
            await self._give_up_lease(run.saga_id)
            raise
        except BaseException:  # cancelled: the saga itself carries on in the background
            if self._tg is not None and not driving.scope.cancel_called:
                handed_off = True
                self._driving[run.saga_id] = _Driving()  # a scope is entered only once
                self._launch(run)
            raise
        finally:
            if not handed_off:
                self._untrack(run.saga_id)
                self._stop_driving(run.saga_id)
        return await self.wait(run.saga_id)  # whoever drives it now finishes it

    def _drive_one(self, run: _Run[DataT]) -> Awaitable[SagaOutcome[DataT]]:
        """Drive *run*, in the saga's span while an SDK takes spans or metrics."""
        if not run.traced:
            return run.drive()
        record = run.record
        return self._telemetry.observe_saga(
            record.saga_id, record.name, record.version, record.created_at, run.drive
        )

    async def wait(self, saga_id: str, *, poll_interval: float = 0.1) -> SagaOutcome[Any]:
        """Wait until the saga *saga_id* ends and return its outcome.

        Works for sagas driven by this orchestrator and, by polling the log, for those
        driven by another one.

        Raises:
            SagaNotFoundError: no saga with that id is in the log.
        """
        while True:
            completion = self._done.get(saga_id)
            if completion is not None:
                await completion.event.wait()
                if completion.outcome is not None:
                    return completion.outcome
                continue  # it stopped without an outcome here: ask the log
            record = await self._log.get(saga_id)
            if record is None:
                raise SagaNotFoundError(saga_id)
            if record.status.is_terminal:
                return self._outcome_from(record)
            await anyio.sleep(poll_interval)

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga's current state in the log.

        Raises:
            SagaNotFoundError: no saga with that id is in the log.
        """
        record = await self._log.get(saga_id)
        if record is None:
            raise SagaNotFoundError(saga_id)
        return record

    async def history(self, saga_id: str) -> list[LogEntry]:
        """The saga's history, oldest first."""
        return await self._log.history(saga_id)

    def _outcome_from(self, record: SagaRecord) -> SagaOutcome[Any]:
        saga = self._versions.get((record.name, record.version))
        data: Any = (
            saga.data_type.model_validate_json(record.data) if saga is not None else record.data
        )
        return SagaOutcome(
            record.saga_id,
            record.name,
            record.status,
            data,
            record.failure,
            record.compensation_failure,
        )


def _local(fn: Callable[..., Awaitable[Any]], wants_context: bool) -> Invoke:
    """A local step's (or compensation's) own call, as ``invoke(data, ctx)``."""
    if wants_context:
        return fn

    async def without_context(data: Any, ctx: Any) -> Any:
        return await fn(data)

    return without_context


def _differences(existing: SagaRecord, asked: SagaRecord) -> list[str]:
    """What differs between a saga in the log and one asked for under the same id."""
    if (existing.name, existing.version) != (asked.name, asked.version):
        return [
            f"the log has {existing.name!r} version {existing.version}, "
            f"not {asked.name!r} version {asked.version}"
        ]
    if existing.fingerprint not in (None, asked.fingerprint):
        return [
            f"the log's saga was started on definition {existing.fingerprint} of "
            f"{asked.name!r} version {asked.version}, not on {asked.fingerprint}"
        ]
    before, after = json.loads(existing.data), json.loads(asked.data)
    return [
        f"data field {field!r}: {before.get(field, '(missing)')!r} in the log, "
        f"{after.get(field, '(missing)')!r} asked"
        for field in sorted(set(before) | set(after))
        if before.get(field, _MISSING) != after.get(field, _MISSING)
    ]


_MISSING = object()
