"""Driving one saga instance: the I/O around the state machine.

A :class:`Run` holds the saga's record, as this orchestrator last wrote it, and takes it to a
terminal status. What each step's outcome means (retry, turn back, compensate, give up) is
decided by :mod:`pysaga._transitions`; a run calls steps, waits out backoffs, and writes what
the machine returns. See the :mod:`pysaga.orchestrator` docstring for the recovery rules
these writes make possible.

To save commits, an outcome is *staged*: applied to the run's record at once, and written
together with the next transition (the next step's intent, or the saga's end), which is still
before anything else happens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from pydantic import BaseModel

from . import _clock
from . import _transitions as machine
from .definition import StepContext, StepKind
from .errors import DeadlineExceeded
from .models import (
    EntryKind,
    Failure,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepStatus,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .definition import Saga, Step
    from .interceptors import Invoke
    from .policies import Retry
    from .protocols import SagaLog

__all__ = ("Run", "Steps", "failure_of", "timeout_at")

logger = logging.getLogger("pysaga.orchestrator")

DataT = TypeVar("DataT", bound=BaseModel)

_TURNING_BACK = (EntryKind.SAGA_COMPENSATING, EntryKind.OPERATOR_ABORTED)

Steps = dict[str, tuple["Invoke", "Invoke | None"]]
"""How a run calls each step, by name: its action and its compensation (``None``: it has none),
each wrapped in the orchestrator's interceptors."""


class _BadReturn(TypeError):
    """A step returned something other than the saga's data or None."""


def failure_of(step: str | None, exc: BaseException, *, business: bool = False) -> Failure:
    """Describe *exc* as a :class:`~pysaga.Failure`."""
    return Failure(
        step=step,
        type=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        business=business,
        details=getattr(exc, "details", None),
    )


class Run(Generic[DataT]):
    """One saga instance being driven by one orchestrator.

    Args:
        record: The saga's record as the log has it now (claimed, or just created).
        created: The record was just created by this run: the intents of its first stage are
            this run's own and have not run yet (otherwise a step found STARTED is one an
            earlier run left in doubt).
    """

    __slots__ = (
        "_fresh",
        "_lock",
        "_pending",
        "_turned_back",
        "data",
        "log",
        "owner",
        "record",
        "saga",
        "saga_id",
        "steps",
        "traced",
    )

    def __init__(
        self,
        log: SagaLog,
        owner: str,
        saga: Saga[DataT],
        steps: Steps,
        record: SagaRecord,
        data: DataT,
        *,
        created: bool = False,
        traced: bool = False,
    ) -> None:
        self.log = log
        self.traced = traced
        """Whether its steps go through tracing (an SDK was installed when it started)."""
        self.owner = owner
        self.saga = saga
        self.steps = steps
        self.record = record
        self.saga_id = record.saga_id
        self.data = data
        self._fresh: set[str] = set(record.steps) if created else set()
        self._pending: list[SagaUpdate] = []
        self._lock: anyio.Lock | None = None
        self._turned_back: Failure | None = None
        """Why the saga turned back, once known: what its compensations are told."""

    def outcome(self) -> SagaOutcome[DataT]:
        """The saga's outcome as this run leaves it."""
        record = self.record
        return SagaOutcome(
            record.saga_id,
            record.name,
            record.status,
            self.data,
            record.failure,
            record.compensation_failure,
        )

    # -- writing -----------------------------------------------------------------------------

    def _stage(self, update: SagaUpdate) -> None:
        """Apply an outcome now, and write it with the next write."""
        self.record.apply(update)
        self._pending.append(update)

    async def _write(self, update: SagaUpdate) -> None:
        """Write *update*, after whatever is staged, and apply it to the record."""
        if self._lock is not None:  # parallel branches share this saga's revision
            async with self._lock:
                await self._write_now(update)
        else:
            await self._write_now(update)

    async def _write_now(self, update: SagaUpdate) -> None:
        # Take the staged outcomes *before* the write is awaited: a parallel branch may stage
        # its own while this write is in flight, and that one must go with the next write.
        pending = self._pending
        if pending:
            self._pending = []
            written = SagaUpdate.join([*pending, update])
        else:
            written = update
        record = self.record
        try:
            record.revision = await self.log.update(
                self.saga_id, written, revision=record.revision, owner=self.owner
            )
        except BaseException:
            self._pending[:0] = pending  # still to be written, before what was staged since
            raise
        record.apply(update)

    # -- driving -----------------------------------------------------------------------------

    async def drive(self) -> SagaOutcome[DataT]:
        """Take the saga from where the log left it to a terminal status."""
        if self.record.status is SagaStatus.RUNNING:
            await self._forward()
        if self.record.status is SagaStatus.COMPENSATING:
            await self._backward()
        if self.record.status is SagaStatus.FAILED:
            logger.error(
                "saga %s (%s) FAILED and needs an operator: %s%s. Its history is in the saga "
                "log; nothing more happens to it on its own.",
                self.saga_id,
                self.saga.name,
                self.record.failure,
                _also(self.record.compensation_failure),
            )
        return self.outcome()

    def _time_left(self) -> float | None:
        deadline = self.record.deadline_at
        if deadline is None or not machine.deadline_applies(self.record, self.saga):
            return None
        return deadline - _clock.now()

    async def _forward(self) -> None:
        saga = self.saga
        at = 0
        while True:
            at, todo = machine.next_stage(self.record, saga, at)
            if todo is None:
                await self._write(machine.completed(self.record, at=_clock.now(), owner=self.owner))
                return
            left = self._time_left()
            failure: Failure | None
            if left is not None and left <= 0:
                failure = failure_of(None, _deadline_error())
            elif len(todo) == 1 and todo[0].group is None:
                failure = await self._run_single(todo[0])
            else:
                failure = await self._run_group(todo)
            if failure is not None:
                await self._write(
                    machine.turn_back(self.record, saga, failure, at=_clock.now(), owner=self.owner)
                )
                if self.record.status is SagaStatus.COMPENSATING:
                    self._turned_back = failure
                return

    async def _run_single(self, step: Step[DataT]) -> Failure | None:
        base = self.data
        result, failure = await self._attempts(step, base)
        if failure is None:
            data = None
            if result is not None and result is not base:
                self.data = result
                data = result.model_dump_json()
            self._succeeded(step, data)
        return failure

    def _succeeded(self, step: Step[DataT], data: str | None = None) -> None:
        self._stage(
            machine.step_succeeded(
                self.record, step.name, at=_clock.now(), owner=self.owner, data=data
            )
        )

    async def _run_group(self, todo: tuple[Step[DataT], ...]) -> Failure | None:
        base = self.data
        intents: list[SagaUpdate] = []
        for step in todo:
            if step.name in self._fresh:  # written with the saga's creation
                continue
            intents.append(
                machine.step_started(
                    self.record,
                    step.name,
                    at=_clock.now(),
                    owner=self.owner,
                    timeout_at=timeout_at(step, _clock.now(), self._time_left()),
                )
            )
            self._fresh.add(step.name)
        if intents:
            await self._write(SagaUpdate.join(intents))
        failures: dict[str, Failure] = {}
        conflicts: dict[str, Failure] = {}
        changes: dict[str, tuple[str, Any]] = {}

        async def branch(step: Step[DataT]) -> None:
            result, failure = await self._attempts(step, base)
            if failure is not None:
                failures[step.name] = failure
                return
            self._succeeded(step)
            if result is not None and result is not base:
                # Merged at once, with no await since _attempts staged the step's success: the
                # next write (a sibling's retry, say) carries the outcome and its data together,
                # and compensations see the data of every branch that finished.
                conflict = self._merge(step, base, result, changes)
                if conflict is not None:
                    conflicts[step.name] = conflict

        self._lock = anyio.Lock()
        try:
            async with anyio.create_task_group() as tg:
                for step in todo:
                    tg.start_soon(branch, step)
        finally:
            self._lock = None
        for found in (failures, conflicts):
            for step in todo:
                if step.name in found:
                    return found[step.name]
        return None

    def _merge(
        self,
        step: Step[DataT],
        base: DataT,
        result: DataT,
        changes: dict[str, tuple[str, Any]],
    ) -> Failure | None:
        """Apply the fields a parallel branch changed to the saga's data, unless another
        branch changed one of them differently."""
        update: dict[str, Any] = {}
        for field in type(base).model_fields:
            value = getattr(result, field)
            if value == getattr(base, field):
                continue
            if field in changes and changes[field][1] != value:
                return Failure(
                    step=step.name,
                    type="ParallelConflict",
                    message=f"parallel steps {changes[field][0]!r} and {step.name!r} both "
                    f"changed field {field!r} differently; parallel steps must update "
                    "disjoint fields",
                )
            update[field] = value
        if update:
            changes.update((field, (step.name, value)) for field, value in update.items())
            self.data = self.data.model_copy(update=update)
            self._stage(SagaUpdate((), data=self.data.model_dump_json()))
        return None

    async def _attempts(
        self, step: Step[DataT], data: DataT
    ) -> tuple[DataT | None, Failure | None]:
        """Run *step* until it succeeds or its retry policy gives up.

        The step's timers live in its state in the log: ``timeout_at`` while an attempt runs,
        ``retry_at`` while a retry waits. A saga resumed from the log (after a restart, or by
        another orchestrator) keeps them: an attempt that was running goes on with the time it
        had left (or counts as timed out if that ran out meanwhile), and a retry still waits
        out the rest of its backoff.

        A failure that ends the attempts is staged, not written: the caller writes it with the
        next transition. A success is left to the caller to stage, with the data it makes.
        """
        name = step.name
        invoke = self.steps[name][0]
        policy: Retry = step.retry
        owner = self.owner
        state = self.record.steps.get(name)
        if name in self._fresh:  # this run wrote the intent and has not run it yet
            self._fresh.discard(name)
            go_on = True
        else:
            # An attempt whose intent is in the log and whose outcome is not, with a timer:
            # running when this saga was last written, so it goes on under its own timer.
            go_on = (
                state is not None
                and state.status is StepStatus.STARTED
                and state.timeout_at is not None
                and state.retry_at is None
            )
        while True:
            left = self._time_left()
            if left is not None and left <= 0:
                return None, failure_of(name, _deadline_error())
            if go_on:
                go_on = False
            else:
                state = self.record.steps.get(name)
                retry_at = state.retry_at if state is not None else None
                if retry_at is not None:  # a backoff (perhaps one a restart interrupted)
                    wait = retry_at - _clock.now()
                    if wait > 0:
                        await anyio.sleep(wait if left is None else min(wait, max(0.0, left)))
                        continue  # the deadline may have passed meanwhile
                now = _clock.now()
                await self._write(
                    machine.step_started(
                        self.record,
                        name,
                        at=now,
                        owner=owner,
                        timeout_at=timeout_at(step, now, left),
                    )
                )
            state = self.record.steps[name]
            ctx = StepContext(
                self.saga_id, self.saga.name, name, state.attempts, f"{self.saga_id}/{name}"
            )
            try:
                if state.timeout_at is None:
                    result = await invoke(data, ctx)
                else:
                    result = await _call(invoke, data, ctx, state.timeout_at, step)
                if result is not None and not isinstance(result, self.saga.data_type):
                    raise _BadReturn(
                        f"step {name!r} returned {type(result).__name__}; a step returns "
                        f"the saga's data ({self.saga.data_type.__name__}) or None"
                    )
            except Exception as exc:
                left = self._time_left()
                deadline_hit = left is not None and left <= 0
                if deadline_hit and isinstance(exc, TimeoutError):
                    exc = _deadline_error()
                failure = failure_of(name, exc, business=policy.is_business(exc))
                # An interrupted attempt may have had its effect: it stays in doubt (STARTED).
                in_doubt = isinstance(exc, (TimeoutError, DeadlineExceeded, _BadReturn))
                retry = (
                    not deadline_hit
                    and not isinstance(exc, _BadReturn)
                    and policy.may_retry(exc, state.failures + 1)
                )
                now = _clock.now()
                update = machine.step_failed(
                    self.record,
                    name,
                    failure,
                    at=now,
                    owner=owner,
                    in_doubt=in_doubt,
                    retry_at=now + policy.delay(state.failures + 1) if retry else None,
                )
                if not retry:
                    self._stage(update)
                    return None, failure
                await self._write(update)
                continue
            return result, None

    # -- turning back ------------------------------------------------------------------------

    async def _backward(self) -> None:
        while True:
            step = machine.next_compensation(self.record, self.saga)
            if step is None:
                await self._write(
                    machine.compensated(self.record, at=_clock.now(), owner=self.owner)
                )
                return
            if self._turned_back is None:  # resumed from the log, COMPENSATING already
                self._turned_back = await self._why_turned_back()
            if not await self._compensate(step):
                return

    async def _why_turned_back(self) -> Failure | None:
        """Why a saga resumed from the log turned back, as its history says: the last entry
        that turned it back (``saga_compensating`` or ``operator_aborted``) has the reason,
        also for sagas written before the record kept it whatever happened next."""
        for entry in reversed(await self.log.history(self.saga_id)):
            if entry.failure is not None and entry.kind in _TURNING_BACK:
                return entry.failure
        return self.record.failure

    async def _compensate(self, step: Step[DataT]) -> bool:
        """Undo *step*, retrying under its compensation policy; its timers live in the log
        as a step's do (see :meth:`_attempts`). Returns ``False`` when it gave up (the saga is
        FAILED then)."""
        name = step.name
        compensation = self.steps[name][1]
        assert compensation is not None
        policy = step.compensation_retry
        limit = step.compensation_timeout
        owner = self.owner
        state = self.record.steps[name]
        # An attempt that was running when the saga was last written goes on under its timer.
        go_on = (
            state.status is StepStatus.COMPENSATING
            and state.timeout_at is not None
            and state.retry_at is None
        )
        while True:
            state = self.record.steps[name]
            if state.retry_at is not None and not go_on:
                await anyio.sleep(max(0.0, state.retry_at - _clock.now()))
            # A compensation, once begun, is never cut short by cancellation.
            with anyio.CancelScope(shield=True):
                if go_on:
                    go_on = False
                else:
                    now = _clock.now()
                    await self._write(
                        machine.compensation_started(
                            self.record,
                            name,
                            at=now,
                            owner=owner,
                            timeout_at=None if limit is None else now + limit,
                        )
                    )
                state = self.record.steps[name]
                ctx = StepContext(
                    self.saga_id,
                    self.saga.name,
                    name,
                    state.attempts,
                    f"{self.saga_id}/{name}",
                    True,
                    self._turned_back,
                )
                try:
                    await _call(compensation, self.data, ctx, state.timeout_at, step)
                except Exception as exc:
                    failure = failure_of(name, exc, business=policy.is_business(exc))
                    retry = policy.may_retry(exc, state.failures + 1)
                    now = _clock.now()
                    update = machine.compensation_failed(
                        self.record,
                        name,
                        failure,
                        at=now,
                        owner=owner,
                        retry_at=now + policy.delay(state.failures + 1) if retry else None,
                    )
                    await self._write(update)
                    if not retry:
                        return False
                else:
                    self._stage(
                        machine.compensation_succeeded(
                            self.record, name, at=_clock.now(), owner=owner
                        )
                    )
                    return True


async def _call(
    invoke: Invoke, data: Any, ctx: StepContext, timeout_at: float | None, step: Step[Any]
) -> Any:
    """Call *invoke*, until *timeout_at* if there is one (no cancel scope otherwise)."""
    if timeout_at is None:
        return await invoke(data, ctx)
    left = timeout_at - _clock.now()
    if left <= 0:  # it ran out while no orchestrator drove the saga
        what = "compensation of step" if ctx.compensating else "step"
        raise TimeoutError(
            f"{what} {step.name!r} ran out of time (attempt {ctx.attempt}) while no "
            "orchestrator was driving the saga"
        )
    try:
        with anyio.fail_after(left):
            return await invoke(data, ctx)
    except TimeoutError as exc:
        raise _timed_out(step, ctx, step_limit(step, ctx)) from exc


def timeout_at(step: Step[Any], now: float, time_left: float | None) -> float | None:
    """When an attempt of *step* starting at *now* times out: after its own limit, or at the
    saga's deadline (*time_left* from now) if that comes first. The deadline stops a pivot
    from starting, never interrupts one that started."""
    limit = step.timeout
    if time_left is not None and step.kind is not StepKind.PIVOT:
        limit = time_left if limit is None else min(limit, time_left)
    return None if limit is None else now + limit


def first_timeouts(saga: Saga[Any], now: float) -> Mapping[str, float | None]:
    """The first stage's steps, each with when its first attempt (starting *now*) times out."""
    return {step.name: timeout_at(step, now, saga.deadline) for step in saga.stages[0]}


def step_limit(step: Step[Any], ctx: StepContext) -> float | None:
    """The time limit of one attempt of *step* (or of its compensation), as declared."""
    return step.compensation_timeout if ctx.compensating else step.timeout


def _timed_out(step: Step[Any], ctx: StepContext, limit: float | None) -> TimeoutError:
    what = "compensation of step" if ctx.compensating else "step"
    within = f"within {limit:.3g} s " if limit is not None else "before the saga's deadline "
    return TimeoutError(f"{what} {step.name!r} did not finish {within}(attempt {ctx.attempt})")


def _deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("the saga's deadline passed before it got past its pivot")


def _also(failure: Failure | None) -> str:
    return "" if failure is None else f" (then its compensation gave up: {failure})"
