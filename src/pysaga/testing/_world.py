"""The in-memory world a saga test runs in: a broker, a saga log, orchestrators, participants,
and the faults a test injects into them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc

from .. import _clock
from ..brokers.memory import Faults, MemoryBroker
from ..errors import StoreError
from ..inspection import Inspector
from ..models import EntryKind, LogEntry, SagaRecord, SagaStatus, SagaUpdate
from ..orchestrator import Orchestrator
from ..participant import Participant
from ..stores.memory import InMemorySagaLog
from ._loop import VirtualClock, current_clock

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
    from types import TracebackType

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ..definition import Saga
    from ..interceptors import Proceed, StepCall

__all__ = ("Crash", "SagaWorld", "SimulatedCrash")

logger = logging.getLogger("pysaga.testing")


class SimulatedCrash(StoreError):
    """Raised by the saga log to an orchestrator the test kit has crashed.

    A crashed orchestrator's writes (and lease renewals, claims and releases) no longer reach
    the log, as if its process had died. The write that triggered a crash
    (:meth:`SagaWorld.crash_after`) did reach the log; the orchestrator sees this error
    instead of its result. A test that drove the saga with ``await orch.run(...)`` gets it
    too: start sagas with ``orch.start(...)`` and wait with :meth:`SagaWorld.wait_for` when
    the orchestrator may crash.
    """


@dataclass(frozen=True, slots=True)
class Crash:
    """One crash the kit caused.

    Attributes:
        owner: The orchestrator that crashed (its owner name in the log).
        saga_id: The saga whose write triggered it (``None`` for
            :meth:`SagaWorld.crash_orchestrator`).
        entry: The last entry the orchestrator wrote for that saga before it died, if any.
    """

    owner: str
    saga_id: str | None
    entry: LogEntry | None


@dataclass(slots=True)
class _CrashRule:
    matches: Callable[[LogEntry], bool]
    description: str
    times: int


class _WorldLog(InMemorySagaLog):
    """The world's in-memory saga log: it tells waiters of every write, and turns away the
    writes of orchestrators the kit has crashed."""

    def __init__(self, world: SagaWorld) -> None:
        super().__init__()
        self._world = world
        self._changed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<SagaWorld log {self._world.name}: {len(self._records)} sagas>"

    def changed(self) -> anyio.Event:
        """An event set at the next write to the log."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        self._world._refuse_if_crashed(record.owner)
        await super().create(record, entries)
        self._notify()
        if record.owner is not None:
            self._world._after_write(record.owner, record.saga_id, entries)

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        self._world._refuse_if_crashed(owner)
        revision = await super().update(saga_id, update, revision=revision, owner=owner)
        self._notify()
        self._world._after_write(owner, saga_id, update.entries)
        return revision

    async def intervene(self, saga_id: str, update: SagaUpdate, *, revision: int) -> int:
        revision = await super().intervene(saga_id, update, revision=revision)
        self._notify()
        return revision

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
        self._world._refuse_if_crashed(owner)
        claimed = await super().claim(
            owner,
            incarnation=incarnation,
            kinds=kinds,
            lease=lease,
            now=now,
            limit=limit,
            predecessors=predecessors,
            fingerprints=fingerprints,
        )
        if claimed:
            self._notify()
        return claimed

    async def hold(
        self, name: str, version: int, fingerprint: str, *, note: str, now: float, owner: str
    ) -> list[str]:
        self._world._refuse_if_crashed(owner)
        held = await super().hold(name, version, fingerprint, note=note, now=now, owner=owner)
        if held:
            self._notify()
        return held

    async def renew(self, owner: str, *, incarnation: str | None = None, until: float) -> int:
        self._world._refuse_if_crashed(owner)
        return await super().renew(owner, incarnation=incarnation, until=until)

    async def release(
        self,
        owner: str,
        saga_ids: Collection[str] | None = None,
        *,
        incarnation: str | None = None,
    ) -> None:
        self._world._refuse_if_crashed(owner)
        await super().release(owner, saga_ids, incarnation=incarnation)
        self._notify()


@dataclass(eq=False, slots=True)
class _Hosted:
    """A component (orchestrator or participant) running in the world's task group."""

    component: Orchestrator | Participant
    scope: anyio.CancelScope
    stop: anyio.Event
    stopped: anyio.Event


@dataclass(frozen=True, slots=True)
class _StepFault:
    """An error :meth:`SagaWorld.fail_step` injects into a step's first attempts."""

    saga: str
    step: str
    compensation: bool
    times: int
    saga_id: str | None
    error: Callable[[], Exception]


@dataclass(frozen=True, slots=True)
class _OrchestratorSpec:
    sagas: tuple[Saga[Any], ...]
    lease: float
    claim_interval: float | None
    drain_timeout: float
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None


class SagaWorld:
    """A fresh in-memory world for one saga test: a broker, a saga log, the orchestrators and
    participants running on them, and the faults the test injects.

    The ``saga_world`` pytest fixture gives each test one, entered and closed for it. Outside
    pytest, use it as an async context manager. Everything in it lives in this process: the
    broker is a :class:`~pysaga.brokers.memory.MemoryBroker` hub of the world's own
    (``memory://<name>``), the log an in-memory saga log. Several orchestrators and
    participants run on them as separate processes would: each opens its own connection to
    the broker and has its own name in the log.

    On a :class:`~pysaga.testing.VirtualTimeLoop` (see
    :func:`~pysaga.testing.virtual_time_backend`) every timer of the world runs on virtual
    time, and :attr:`clock` moves it on by hand.

    Args:
        name: The broker hub's name (default: a unique one, so worlds never share queues).
    """

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or f"pysaga-world-{uuid.uuid4().hex[:12]}"
        self.broker_url = f"memory://{self.name}"
        """The URL of the world's broker: give it to anything that should join the world."""
        self._log = _WorldLog(self)
        self._broker = MemoryBroker(self.name)
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._orchestrators: list[_Hosted] = []
        self._participants: list[_Hosted] = []
        self._owners = itertools.count(1)
        self._by_owner: dict[str, _Hosted] = {}
        self._spec: _OrchestratorSpec | None = None
        self._current: _Hosted | None = None
        self._crashed: set[str] = set()
        self._crash_rules: list[_CrashRule] = []
        self._faults: list[_StepFault] = []
        self._crash_seen: anyio.Event | None = None
        self.crashes: list[Crash] = []
        """Every crash the kit caused, oldest first."""

    def __repr__(self) -> str:
        return f"<SagaWorld {self.name}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already open; enter it once")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._log)
            await stack.enter_async_context(self._broker)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_everything)
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
            try:
                await stack.__aexit__(exc_type, exc, tb)
            finally:
                self._tg = None

    async def _stop_everything(self) -> None:
        """Stop orchestrators first (they may still send commands), then participants."""
        for group in (self._orchestrators, self._participants):
            for hosted in group:
                hosted.stop.set()
            for hosted in group:
                await hosted.stopped.wait()

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError(
                f"{self!r} is not open; use the saga_world fixture or 'async with SagaWorld():'"
            )
        return self._tg

    async def _host(
        self,
        component: Orchestrator | Participant,
        *,
        task_status: anyio.abc.TaskStatus[_Hosted] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        hosted = _Hosted(component, anyio.CancelScope(), anyio.Event(), anyio.Event())
        try:
            with hosted.scope:
                async with component:
                    task_status.started(hosted)
                    await hosted.stop.wait()
        finally:
            hosted.stopped.set()

    # -- what the world holds ----------------------------------------------------------------

    @property
    def log(self) -> InMemorySagaLog:
        """The world's saga log (in memory). Read it freely; the orchestrators write it."""
        return self._log

    @property
    def broker(self) -> MemoryBroker:
        """The world's own open connection to its broker hub: publish or subscribe on it."""
        return self._broker

    @property
    def faults(self) -> Faults:
        """Delivery faults on the world's broker: drop, duplicate, delay or reorder the next
        messages that match (see :class:`~pysaga.brokers.memory.Faults`)."""
        return self._broker.faults

    @property
    def virtual_time(self) -> bool:
        """Whether the world runs on a virtual clock (the running loop is a
        :class:`~pysaga.testing.VirtualTimeLoop`)."""
        try:
            current_clock()
        except RuntimeError:
            return False
        return True

    @property
    def clock(self) -> VirtualClock:
        """The virtual clock the world runs on.

        Raises:
            RuntimeError: the test does not run on virtual time (the message says how to).
        """
        return current_clock()

    def inspector(self) -> Inspector:
        """An :class:`~pysaga.Inspector` on the world's log, whose ages are measured on the
        world's clock (virtual or not)."""
        return Inspector(self._log, clock=_clock.now)

    # -- orchestrators -----------------------------------------------------------------------

    async def start_orchestrator(
        self,
        *sagas: Saga[Any],
        lease: float = 15.0,
        claim_interval: float | None = None,
        drain_timeout: float = 10.0,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Orchestrator:
        """Start an orchestrator for *sagas* on the world's log and broker, and return it.

        It runs until the world closes, or until it crashes (see :meth:`crash_after` and
        :meth:`crash_orchestrator`). It becomes the world's current orchestrator, the one
        :meth:`restart_orchestrator` replaces. Several may run at once, as several processes
        would; each has its own owner name in the log (``<world>/orchestrator-<n>``).

        Args:
            sagas: The saga definitions it runs.
            lease: See :class:`~pysaga.Orchestrator`. On virtual time a long lease costs no
                real time: a restarted orchestrator's wait for it to run out is a jump.
            claim_interval: See :class:`~pysaga.Orchestrator`.
            drain_timeout: See :class:`~pysaga.Orchestrator`.
            tracer_provider: See :class:`~pysaga.Orchestrator`.
            meter_provider: See :class:`~pysaga.Orchestrator`.

        Raises:
            ValueError: no saga was given.
        """
        if not sagas:
            raise ValueError("start_orchestrator() needs the sagas it runs: (my_saga, ...)")
        spec = _OrchestratorSpec(
            tuple(sagas), lease, claim_interval, drain_timeout, tracer_provider, meter_provider
        )
        return await self._start_orchestrator(spec)

    async def _start_orchestrator(self, spec: _OrchestratorSpec) -> Orchestrator:
        tg = self._task_group()
        owner = f"{self.name}/orchestrator-{next(self._owners)}"
        has_remote = any(step.remote is not None for saga in spec.sagas for step in saga.steps)
        orch = Orchestrator(
            sagas=spec.sagas,
            log=self._log,
            lease=spec.lease,
            claim_interval=spec.claim_interval,
            drain_timeout=spec.drain_timeout,
            owner=owner,
            tracer_provider=spec.tracer_provider,
            meter_provider=spec.meter_provider,
            broker=self.broker_url if has_remote else None,
            interceptors=[self._inject],
        )
        hosted: _Hosted = await tg.start(self._host, orch)
        self._orchestrators.append(hosted)
        self._by_owner[owner] = hosted
        self._spec = spec
        self._current = hosted
        return orch

    @property
    def orchestrator(self) -> Orchestrator:
        """The current orchestrator: the last one started or restarted.

        Raises:
            RuntimeError: none was started yet.
        """
        if self._current is None:
            raise RuntimeError("no orchestrator yet: await world.start_orchestrator(my_saga)")
        orch = self._current.component
        assert isinstance(orch, Orchestrator)
        return orch

    async def crash_orchestrator(self) -> None:
        """Crash the current orchestrator now, as if its process were killed.

        Nothing it does reaches the log any more; its sagas keep its lease until the lease
        runs out, and then another orchestrator (see :meth:`restart_orchestrator`) claims them
        and resumes them from the log. Returns once it has stopped.
        """
        hosted = self._current
        if hosted is None:
            raise RuntimeError("no orchestrator to crash: await world.start_orchestrator(...)")
        orch = hosted.component
        assert isinstance(orch, Orchestrator)
        if orch.owner not in self._crashed:
            self._crash(orch.owner, None, None)
        await hosted.stopped.wait()

    async def restart_orchestrator(self) -> Orchestrator:
        """Replace the current orchestrator with a new one, as after a crash and a restart.

        The current orchestrator is crashed if it is still running (its leases are not given
        up); the new one runs the same sagas with the same options under a new owner name. It
        claims the old one's unfinished sagas once their leases run out (up to ``lease``
        seconds, plus ``claim_interval``: a jump on virtual time) and resumes each from its
        last write in the log. After :meth:`crash_after`, :meth:`wait_for_crash` first.

        Returns:
            The new orchestrator (also :attr:`orchestrator` from now on).

        Raises:
            RuntimeError: no orchestrator was started yet.
        """
        if self._spec is None:
            raise RuntimeError("no orchestrator to restart: await world.start_orchestrator(...)")
        await self.crash_orchestrator()
        return await self._start_orchestrator(self._spec)

    async def wait_for_crash(
        self,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 (a bound with a diagnostic, not a cancel)
    ) -> Crash:
        """Wait until the current orchestrator has crashed (a :meth:`crash_after` rule
        fired) and stopped, then return the crash.

        Call it before :meth:`restart_orchestrator` when the crash is one a rule causes:
        ``orch.start()`` returns before the saga has run, so restarting at once would stop
        the orchestrator before it got to the write the rule waits for.

        Args:
            timeout: Seconds (virtual ones on virtual time) to wait at most.

        Raises:
            AssertionError: it did not crash within *timeout* (the message lists the rules
                still waiting for their write).
            RuntimeError: no orchestrator was started yet.
        """
        hosted = self._current
        if hosted is None:
            raise RuntimeError("no orchestrator yet: await world.start_orchestrator(my_saga)")
        orch = hosted.component
        assert isinstance(orch, Orchestrator)
        with anyio.move_on_after(timeout):
            while orch.owner not in self._crashed:
                if self._crash_seen is None:
                    self._crash_seen = anyio.Event()
                await self._crash_seen.wait()
            await hosted.stopped.wait()
            return next(c for c in reversed(self.crashes) if c.owner == orch.owner)
        waiting = ", ".join(rule.description for rule in self._crash_rules) or "none"
        raise AssertionError(
            f"orchestrator {orch.owner!r} did not crash within {timeout:g} s; crash rules still "
            f"waiting for their write: {waiting}"
        )

    def crash_after(
        self,
        entry: EntryKind | Callable[[LogEntry], bool],
        *,
        step: str | None = None,
        times: int = 1,
    ) -> None:
        """Crash the orchestrator that next writes a matching entry to the log, right after
        that write.

        The write lands (the log holds it, as a database would after its commit); then the
        orchestrator dies before it acts on it. Use it to check that a saga survives its
        orchestrator dying at a given point, then :meth:`restart_orchestrator` and
        :meth:`wait_for` its end. Remember that pysaga writes a step's outcome together with
        the next step's intent: ``crash_after(EntryKind.STEP_SUCCEEDED, step="reserve")``
        crashes once the success of ``reserve`` and the intent of the step after it are
        written, before that step runs.

        Args:
            entry: The kind of entry (``EntryKind.STEP_STARTED``: a step's intent,
                ``EntryKind.STEP_SUCCEEDED``: its outcome...), or a predicate on the entry.
            step: Only entries of this step.
            times: How many crashes the rule causes (one per matching write).
        """
        if isinstance(entry, EntryKind):
            kind = entry

            def matches(e: LogEntry) -> bool:
                return e.kind is kind and (step is None or e.step == step)

            description = kind.value + (f" of step {step!r}" if step else "")
        else:
            predicate = entry

            def matches(e: LogEntry) -> bool:
                return predicate(e) and (step is None or e.step == step)

            description = "a matching entry" + (f" of step {step!r}" if step else "")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times!r}")
        self._crash_rules.append(_CrashRule(matches, description, times))

    def _refuse_if_crashed(self, owner: str | None) -> None:
        if owner is not None and owner in self._crashed:
            raise SimulatedCrash(
                f"orchestrator {owner!r} has crashed (simulated by the test kit): nothing it "
                "does reaches the saga log any more"
            )

    def _after_write(self, owner: str, saga_id: str, entries: Sequence[LogEntry]) -> None:
        for rule in self._crash_rules:
            hit = next((e for e in entries if rule.matches(e)), None)
            if hit is None:
                continue
            rule.times -= 1
            if rule.times == 0:
                self._crash_rules.remove(rule)
            self._crash(owner, saga_id, entries[-1])
            raise SimulatedCrash(
                f"orchestrator {owner!r} crashed right after writing {rule.description} of "
                f"saga {saga_id!r} (simulated by the test kit); the write is in the log. A "
                "new orchestrator resumes the saga: await world.restart_orchestrator()"
            )

    def _crash(self, owner: str, saga_id: str | None, entry: LogEntry | None) -> None:
        self._crashed.add(owner)
        self.crashes.append(Crash(owner, saga_id, entry))
        seen, self._crash_seen = self._crash_seen, None
        if seen is not None:
            seen.set()
        logger.info("the test kit crashed orchestrator %s", owner)
        hosted = self._by_owner.get(owner)
        if hosted is not None:
            hosted.scope.cancel()

    # -- participants ------------------------------------------------------------------------

    def participant(self, service: str, **options: Any) -> Participant:
        """A new participant for *service* on the world's broker, not started yet.

        Register its handlers (``@participant.handles(Command)``), then
        :meth:`start_participant` it.

        Args:
            service: The service name (the destination its commands arrive on).
            **options: Other :class:`~pysaga.Participant` options (``inbox``,
                ``concurrency``...).
        """
        return Participant(service, broker=self.broker_url, **options)

    async def start_participant(self, participant: Participant) -> Participant:
        """Run *participant* in the world until the world closes (or :meth:`stop_participant`).

        A participant made elsewhere (your application's) is pointed at the world's broker
        first, whatever broker it was given.

        Returns:
            The participant, running.
        """
        participant.broker = self.broker_url
        hosted: _Hosted = await self._task_group().start(self._host, participant)
        self._participants.append(hosted)
        return participant

    async def stop_participant(self, participant: Participant) -> None:
        """Stop *participant* as a service shutting down (what it was handling goes back to
        the broker for another copy, or for itself when it is started again)."""
        for hosted in self._participants:
            if hosted.component is participant:
                hosted.stop.set()
                await hosted.stopped.wait()
                self._participants.remove(hosted)
                return
        raise ValueError(f"{participant!r} does not run in {self!r}")

    # -- step faults -------------------------------------------------------------------------

    def fail_step(
        self,
        saga: Saga[Any],
        step: str,
        error: Exception | type[Exception] = ConnectionError,
        *,
        times: int = 1,
        saga_id: str | None = None,
        compensation: bool = False,
    ) -> None:
        """Make a step raise *error* on its first *times* attempts (of each saga, or of
        *saga_id* only); later attempts run the step as declared.

        The step's retry policy then does what it would with a real failure: retry, turn
        back, or fail the saga. Attempts count in the log, so an attempt made after a restart
        counts as the next one. The error is raised by an interceptor
        (:mod:`pysaga.interceptors`) that the world's orchestrators call every step through,
        before the step itself: the step's code is left as declared. For a remote step the
        command is then not sent.

        Args:
            saga: The saga definition.
            step: The step's name (a local or a remote step).
            error: The exception to raise: an instance, or a class made with a message that
                says the kit injected it (default: ``ConnectionError``).
            times: How many attempts fail.
            saga_id: Only in this saga.
            compensation: Fail the step's compensation instead of its action.

        Raises:
            KeyError: the saga has no such step.
            ValueError: *times* is below 1, or the step has no compensation to fail.
        """
        target = saga.get_step(step)
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times!r}")
        if compensation and not target.has_compensation:
            raise ValueError(f"step {step!r} of saga {saga.name!r} has no compensation")
        what = "compensation of step" if compensation else "step"

        def make_error() -> Exception:
            if isinstance(error, Exception):
                return error
            return error(f"injected by the test kit into the {what} {step!r}")

        self._faults.append(_StepFault(saga.name, step, compensation, times, saga_id, make_error))

    async def _inject(self, call: StepCall, proceed: Proceed) -> Any:
        """The interceptor every orchestrator of the world runs its steps through: it raises
        the errors :meth:`fail_step` asked for, and lets every other attempt through."""
        ctx = call.ctx
        for fault in self._faults:
            if (
                fault.step == ctx.step
                and fault.saga == ctx.saga_name
                and fault.compensation == ctx.compensating
                and ctx.attempt <= fault.times
                and (fault.saga_id is None or fault.saga_id == ctx.saga_id)
            ):
                raise fault.error()
        return await proceed(call)

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for(
        self,
        saga_id: str,
        *,
        status: SagaStatus | Iterable[SagaStatus] | None = None,
        until: Callable[[SagaRecord], bool] | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 (a bound with a diagnostic, not a cancel)
    ) -> SagaRecord:
        """Wait until the saga *saga_id* is in *status* (and *until* holds of its record).

        With neither, wait until it ends (COMPLETED, COMPENSATED or FAILED). On virtual time
        the wait costs no real time; it wakes up at every write to the log.

        Args:
            saga_id: The saga's id.
            status: The status, or any of the statuses, to wait for.
            until: A condition on the saga's record (``lambda r: r.steps["pay"].attempts ==
                2``), checked at every write.
            timeout: Seconds (virtual ones on virtual time) to wait at most.

        Returns:
            The saga's record when it got there.

        Raises:
            AssertionError: the saga did not get there within *timeout*, or it ended in
                another status than *status* (it will not change any more). The message shows
                the saga's state and timeline.
        """
        if isinstance(status, SagaStatus):
            wanted: frozenset[SagaStatus] | None = frozenset({status})
        else:
            wanted = None if status is None else frozenset(status)

        def arrived(record: SagaRecord) -> bool:
            if wanted is None and until is None:
                return record.status.is_terminal
            return (wanted is None or record.status in wanted) and (until is None or until(record))

        what = _describe(wanted, until)
        look_every = 60.0 if self.virtual_time else 1.0
        record: SagaRecord | None = None
        with anyio.move_on_after(timeout):
            while True:
                changed = self._log.changed()
                record = await self._log.get(saga_id)
                if record is not None:
                    if arrived(record):
                        return record
                    if wanted is not None and record.status.is_terminal:
                        await self._fail(
                            saga_id, f"it ended {record.status.value} instead of {what}"
                        )
                # A write wakes us; a periodic look covers any write the log does not
                # announce, rarely on virtual time, where each look is a jump.
                with anyio.move_on_after(look_every):
                    await changed.wait()
        record = await self._log.get(saga_id)  # it may have got there as time ran out
        if record is not None and arrived(record):
            return record
        clock = "virtual" if self.virtual_time else "real"
        now = "there is no such saga" if record is None else f"it is {record.status.value}"
        await self._fail(
            saga_id, f"it did not get to {what} within {timeout:g} s of {clock} time; {now}"
        )
        raise AssertionError  # not reached: _fail raises

    async def timeline(self, saga_id: str) -> str:
        """The saga's state and history as text (as ``pysaga show`` prints it), for a test's
        own assertion messages.

        Raises:
            SagaNotFoundError: there is no such saga in the world's log.
        """
        from .._render import timeline_text

        return timeline_text(await self.inspector().timeline(saga_id))

    async def _fail(self, saga_id: str, why: str) -> None:
        if await self._log.get(saga_id) is None:
            raise AssertionError(f"saga {saga_id!r}: {why} (it is not in the world's log)")
        crashed = "".join(
            f"\ncrashed: {c.owner}"
            + (f" after writing {c.entry.kind.value} of saga {c.saga_id}" if c.entry else "")
            for c in self.crashes
        )
        raise AssertionError(f"saga {saga_id!r}: {why}\n{await self.timeline(saga_id)}{crashed}")


def _describe(
    wanted: frozenset[SagaStatus] | None, until: Callable[[SagaRecord], bool] | None
) -> str:
    if wanted is None and until is None:
        return "an end"
    parts = []
    if wanted is not None:
        parts.append(" or ".join(sorted(s.value for s in wanted)))
    if until is not None:
        parts.append(f"the condition {getattr(until, '__qualname__', repr(until))}")
    return " with ".join(parts)
