"""Driving one saga instance: the forward path, retries, deadlines, and compensation.

A :class:`Run` holds what the orchestrator knows of one saga (its record, as last written) and
moves it to a terminal status, writing every transition to the saga log. See the
:mod:`pysaga.orchestrator` docstring for the recovery rules these writes make possible.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from pydantic import BaseModel

from . import _clock
from .definition import Action, Saga, Step, StepContext, StepKind
from .errors import DeadlineExceeded
from .models import (
    EntryKind,
    Failure,
    LogEntry,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepState,
    StepStatus,
)
from .tracing import (
    ATTR_ATTEMPT,
    ATTR_OUTCOME,
    ATTR_SAGA_ID,
    ATTR_SAGA_NAME,
    ATTR_SAGA_STATUS,
    ATTR_SAGA_VERSION,
    ATTR_STEP_NAME,
    Telemetry,
    mark_error,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.trace import Tracer

    from ._remote import Requester
    from .policies import Retry
    from .protocols import SagaLog
    from .tracing import Instruments

__all__ = ("Run", "timeout_at")

logger = logging.getLogger("pysaga.orchestrator")

DataT = TypeVar("DataT", bound=BaseModel)

_TO_UNDO = (StepStatus.SUCCEEDED, StepStatus.STARTED, StepStatus.COMPENSATING)
_TURNING_BACK = (EntryKind.SAGA_COMPENSATING, EntryKind.OPERATOR_ABORTED)


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
    """One saga instance being driven by one orchestrator."""

    __slots__ = (
        "_instruments",
        "_pending_data",
        "_pending_entries",
        "_pending_steps",
        "_tracer",
        "_turned_back",
        "_write_lock",
        "created_at",
        "data",
        "deadline_at",
        "failure",
        "fresh_intents",
        "log",
        "owner",
        "requester",
        "revision",
        "saga",
        "saga_id",
        "status",
        "steps",
        "telemetry",
    )

    def __init__(
        self,
        log: SagaLog,
        owner: str,
        saga: Saga[DataT],
        record: SagaRecord,
        data: DataT,
        telemetry: Telemetry,
    ) -> None:
        self.log = log
        self.owner = owner
        self.telemetry = telemetry
        self.saga = saga
        self.saga_id = record.saga_id
        self.revision = record.revision
        self.status = record.status
        self.steps: dict[str, StepState] = dict(record.steps)
        self.data = data
        self.failure = record.failure
        self.deadline_at = record.deadline_at
        self.created_at = record.created_at
        self._pending_entries: list[LogEntry] = []
        self._pending_steps: dict[str, StepState] = {}
        self._pending_data: str | None = None
        self._write_lock: anyio.Lock | None = None
        self.fresh_intents: set[str] = set()
        """Steps whose first intent was written with the saga's creation and not yet run."""
        self._tracer: Tracer | None = None
        self._instruments: Instruments | None = None
        self._turned_back: Failure | None = None
        """Why the saga turned back, once known: what its compensations are told."""
        self.requester: Requester | None = None
        """Sends remote steps' commands (set by an orchestrator that has a broker)."""

    # -- writing -----------------------------------------------------------------------------

    def _stage(self, entry: LogEntry, step: str, state: StepState) -> None:
        """Keep an outcome to be written with the next write (before anything else happens)."""
        self._pending_entries.append(entry)
        self._pending_steps[step] = state
        self.steps[step] = state

    async def _write(
        self,
        entries: Sequence[LogEntry],
        *,
        status: SagaStatus | None = None,
        steps: Mapping[str, StepState] | None = None,
        failure: Failure | None = None,
    ) -> None:
        if self._write_lock is not None:  # parallel branches share this saga's revision
            async with self._write_lock:
                await self._write_now(entries, status, steps, failure)
        else:
            await self._write_now(entries, status, steps, failure)

    async def _write_now(
        self,
        entries: Sequence[LogEntry],
        status: SagaStatus | None,
        steps: Mapping[str, StepState] | None,
        failure: Failure | None,
    ) -> None:
        # Take the staged outcomes *before* the write is awaited: a parallel branch may stage
        # its own while this write is in flight, and that one must go with the next write.
        pending_entries, self._pending_entries = self._pending_entries, []
        pending_steps, self._pending_steps = self._pending_steps, {}
        pending_data, self._pending_data = self._pending_data, None
        update = SagaUpdate(
            entries=[*pending_entries, *entries] if pending_entries else entries,
            status=status,
            steps={**pending_steps, **steps} if steps else pending_steps,
            data=pending_data,
            failure=failure,
        )
        try:
            self.revision = await self.log.update(
                self.saga_id, update, revision=self.revision, owner=self.owner
            )
        except BaseException:
            self._pending_entries[:0] = pending_entries
            self._pending_steps = {**pending_steps, **self._pending_steps}
            if self._pending_data is None:
                self._pending_data = pending_data
            raise
        if steps:
            self.steps.update(steps)
        if status is not None:
            self.status = status
        if failure is not None:
            self.failure = failure

    def _entry(
        self,
        kind: EntryKind,
        step: str | None = None,
        attempt: int = 0,
        failure: Failure | None = None,
    ) -> LogEntry:
        return LogEntry(
            kind, at=_clock.now(), step=step, attempt=attempt, failure=failure, owner=self.owner
        )

    # -- driving -----------------------------------------------------------------------------

    async def drive(self) -> SagaOutcome[DataT]:
        """Take the saga from where the log left it to a terminal status."""
        saga = self.saga
        # Looked up once per run: without an SDK both are None and cost nothing after this.
        self._tracer = self.telemetry.tracer
        self._instruments = instruments = self.telemetry.instruments
        if self._tracer is None:
            await self._advance()
        else:
            attributes = {
                ATTR_SAGA_ID: self.saga_id,
                ATTR_SAGA_NAME: saga.name,
                ATTR_SAGA_VERSION: saga.version,
            }
            with self.telemetry.span(f"saga {saga.name}", attributes) as span:
                await self._advance()
                if span is not None:
                    span.set_attribute(ATTR_SAGA_STATUS, self.status.value)
                    if self.failure is not None:
                        span.set_attribute("saga.failure", str(self.failure))
        if self.status is SagaStatus.FAILED:
            logger.error(
                "saga %s (%s) FAILED and needs an operator: %s. Its history is in the saga "
                "log; nothing more happens to it on its own.",
                self.saga_id,
                saga.name,
                self.failure,
            )
        if instruments is not None and self.status.is_terminal:
            labels = {ATTR_SAGA_NAME: saga.name, ATTR_SAGA_STATUS: self.status.value}
            instruments.sagas.add(1, labels)
            instruments.saga_duration.record(max(0.0, _clock.now() - self.created_at), labels)
        return SagaOutcome(self.saga_id, saga.name, self.status, self.data, self.failure)

    async def _advance(self) -> None:
        if self.status is SagaStatus.RUNNING:
            await self._forward()
        if self.status is SagaStatus.COMPENSATING:
            await self._backward()

    def _deadline_applies(self) -> bool:
        if self.deadline_at is None:
            return False
        pivot = self.saga.pivot
        if pivot is None:
            return True
        state = self.steps.get(pivot.name)
        return state is None or state.status is not StepStatus.SUCCEEDED

    def _time_left(self) -> float | None:
        if self.deadline_at is None or not self._deadline_applies():
            return None
        return self.deadline_at - _clock.now()

    async def _forward(self) -> None:
        for stage in self.saga.stages:
            todo = [s for s in stage if self._status_of(s) is not StepStatus.SUCCEEDED]
            if not todo:
                continue
            left = self._time_left()
            if left is not None and left <= 0:
                await self._turn_back(None, failure_of(None, _deadline_error()))
                return
            if len(todo) == 1 and len(stage) == 1:
                failure = await self._run_single(todo[0])
            else:
                failure = await self._run_group(todo)
            if failure is not None:
                await self._turn_back(
                    self.saga.get_step(failure.step) if failure.step else None, failure
                )
                return
        await self._write([self._entry(EntryKind.SAGA_COMPLETED)], status=SagaStatus.COMPLETED)

    def _status_of(self, step: Step[DataT]) -> StepStatus | None:
        state = self.steps.get(step.name)
        return None if state is None else state.status

    async def _turn_back(self, step: Step[DataT] | None, failure: Failure) -> None:
        """A step failed for good: compensate (before the pivot) or fail (after it).

        A pivot whose outcome is in doubt (its last attempt timed out) cannot be undone and
        may have happened: compensating the earlier steps could leave half a transaction, so
        the saga is FAILED for an operator instead.
        """
        pivot_in_doubt = (
            step is not None
            and step.kind is StepKind.PIVOT
            and self._status_of(step) is StepStatus.STARTED
        )
        if step is not None and (step.kind is StepKind.RETRIABLE or pivot_in_doubt):
            await self._write(
                [self._entry(EntryKind.SAGA_FAILED, step.name, failure=failure)],
                status=SagaStatus.FAILED,
                failure=failure,
            )
            return
        await self._write(
            [self._entry(EntryKind.SAGA_COMPENSATING, failure=failure)],
            status=SagaStatus.COMPENSATING,
            failure=failure,
        )
        self._turned_back = failure

    async def _run_single(self, step: Step[DataT]) -> Failure | None:
        base = self.data
        fresh = step.name in self.fresh_intents
        result, failure = await self._attempts(step, base, intent_written=fresh)
        if failure is None and result is not None and result is not base:
            self.data = result
            self._pending_data = result.model_dump_json()
        return failure

    async def _run_group(self, todo: list[Step[DataT]]) -> Failure | None:
        base = self.data
        intents: dict[str, StepState] = {}
        entries = []
        for step in todo:
            if step.name in self.fresh_intents:  # written with the saga's creation
                continue
            state = self.steps.get(step.name)
            attempts = (state.attempts if state else 0) + 1
            intents[step.name] = StepState(
                StepStatus.STARTED,
                attempts,
                state.failures if state else 0,
                self._timeout_at(step, self._time_left()),
            )
            entries.append(self._entry(EntryKind.STEP_STARTED, step.name, attempts))
        if entries:
            await self._write(entries, steps=intents)
        failures: dict[str, Failure] = {}
        conflicts: dict[str, Failure] = {}
        changes: dict[str, tuple[str, Any]] = {}

        async def branch(step: Step[DataT]) -> None:
            result, failure = await self._attempts(step, base, intent_written=True)
            if failure is not None:
                failures[step.name] = failure
            elif result is not None and result is not base:
                # Merged at once, with no await since _attempts staged the step's success: the
                # next write (a sibling's retry, say) carries the outcome and its data together,
                # and compensations see the data of every branch that finished.
                conflict = self._merge(step, base, result, changes)
                if conflict is not None:
                    conflicts[step.name] = conflict

        self._write_lock = anyio.Lock()
        try:
            async with anyio.create_task_group() as tg:
                for step in todo:
                    tg.start_soon(branch, step)
        finally:
            self._write_lock = None
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
            self._pending_data = self.data.model_dump_json()
        return None

    async def _attempts(
        self, step: Step[DataT], data: DataT, *, intent_written: bool
    ) -> tuple[DataT | None, Failure | None]:
        """Run *step* until it succeeds or its retry policy gives up.

        The step's timers live in its state in the log: ``timeout_at`` while an attempt runs,
        ``retry_at`` while a retry waits. A saga resumed from the log (after a restart, or by
        another orchestrator) keeps them: an attempt that was running goes on with the time it
        had left (or counts as timed out if that ran out meanwhile), and a retry still waits
        out the rest of its backoff.

        The outcome is staged, not written: the caller writes it with the next transition.
        """
        state = self.steps.get(step.name)
        attempts = state.attempts if state else 0
        failures = state.failures if state else 0
        timeout_at = state.timeout_at if state else None
        retry_at = state.retry_at if state else None
        # An attempt whose intent is in the log and whose outcome is not: running when this
        # saga was last written, so it goes on as the same attempt, under its own timer.
        running = (
            state is not None
            and state.status is StepStatus.STARTED
            and timeout_at is not None
            and retry_at is None
        )
        policy: Retry = step.retry
        while True:
            left = self._time_left()
            if left is not None and left <= 0:
                return None, failure_of(step.name, _deadline_error())
            if intent_written:
                intent_written = running = False
                self.fresh_intents.discard(step.name)
            elif running:
                running = False
            else:
                if retry_at is not None:  # a backoff that a restart interrupted
                    wait = retry_at - _clock.now()
                    if wait > 0:
                        await anyio.sleep(wait if left is None else min(wait, max(0.0, left)))
                    retry_at = None
                    continue  # the deadline may have passed meanwhile
                attempts += 1
                timeout_at = self._timeout_at(step, left)
                await self._write(
                    [self._entry(EntryKind.STEP_STARTED, step.name, attempts)],
                    steps={
                        step.name: StepState(StepStatus.STARTED, attempts, failures, timeout_at)
                    },
                )
            ctx = self._context(step, attempts)
            try:
                result = await self._call(step, data, ctx, timeout_at)
            except Exception as exc:
                failures += 1
                left = self._time_left()
                deadline_hit = left is not None and left <= 0
                if deadline_hit and isinstance(exc, TimeoutError):
                    exc = _deadline_error()
                business = policy.is_business(exc)
                failure = failure_of(step.name, exc, business=business)
                # An interrupted attempt may have had its effect: it stays in doubt (STARTED).
                in_doubt = isinstance(exc, (TimeoutError, DeadlineExceeded, _BadReturn))
                status = StepStatus.STARTED if in_doubt else StepStatus.FAILED
                retry = (
                    not deadline_hit
                    and not isinstance(exc, _BadReturn)
                    and policy.may_retry(exc, failures)
                )
                entry = self._entry(EntryKind.STEP_FAILED, step.name, attempts, failure)
                if not retry:
                    self._stage(entry, step.name, StepState(status, attempts, failures))
                    return None, failure
                delay = policy.delay(failures)
                retry_at = _clock.now() + delay
                await self._write(
                    [entry],
                    steps={step.name: StepState(status, attempts, failures, retry_at=retry_at)},
                )
                continue
            self._stage(
                self._entry(EntryKind.STEP_SUCCEEDED, step.name, attempts),
                step.name,
                StepState(StepStatus.SUCCEEDED, attempts, failures),
            )
            return result, None

    def _timeout_at(self, step: Step[DataT], time_left: float | None) -> float | None:
        return timeout_at(step, _clock.now(), time_left)

    def _context(
        self, step: Step[DataT], attempt: int, *, compensating: bool = False
    ) -> StepContext:
        # One key per step of a saga: the step's retries and re-runs and its compensation
        # all carry it, so the services can tell a repeat and find what to undo.
        return StepContext(
            saga_id=self.saga_id,
            saga_name=self.saga.name,
            step=step.name,
            attempt=attempt,
            idempotency_key=f"{self.saga_id}/{step.name}",
            compensating=compensating,
            failure=self._turned_back if compensating else None,
        )

    async def _call(
        self, step: Step[DataT], data: DataT, ctx: StepContext, timeout_at: float | None
    ) -> DataT | None:
        fn, wants_context = self._callable(step, compensating=False)
        result = await self._execute(step, fn, wants_context, data, ctx, timeout_at)
        if result is not None and not isinstance(result, self.saga.data_type):
            raise _BadReturn(
                f"step {step.name!r} returned {type(result).__name__}; a step returns "
                f"the saga's data ({self.saga.data_type.__name__}) or None"
            )
        return result

    def _callable(self, step: Step[DataT], *, compensating: bool) -> tuple[Action, bool]:
        """The function to await for *step* (or its compensation), and whether it takes ctx."""
        call = step.remote
        if call is None:
            if compensating:
                assert step.compensation is not None
                return step.compensation, step.compensation_wants_context
            return step.action, step.wants_context
        requester = self.requester
        if requester is None:
            raise RuntimeError(
                f"step {step.name!r} is remote, but the orchestrator has no broker; pass "
                "Orchestrator(broker=...)"
            )

        async def send(data: DataT, ctx: StepContext) -> Any:
            return await requester.call(call, data, ctx, compensating=compensating)

        return send, True

    async def _execute(
        self,
        step: Step[DataT],
        fn: Action,
        wants_context: bool,
        data: DataT,
        ctx: StepContext,
        timeout_at: float | None,
    ) -> Any:
        """Await a step's action or compensation until *timeout_at* (if set), observed."""
        if self._tracer is None and self._instruments is None:  # nothing to observe
            return await _invoke(step, fn, wants_context, data, ctx, timeout_at)
        kind = "compensate" if ctx.compensating else "step"
        attributes = {
            ATTR_SAGA_ID: self.saga_id,
            ATTR_SAGA_NAME: self.saga.name,
            ATTR_STEP_NAME: step.name,
            ATTR_ATTEMPT: ctx.attempt,
        }
        started = time.perf_counter()
        outcome = "succeeded"
        with self.telemetry.span(f"{kind} {step.name}", attributes) as span:
            try:
                return await _invoke(step, fn, wants_context, data, ctx, timeout_at)
            except Exception as exc:
                outcome = "failed"
                mark_error(span, exc)
                raise
            finally:
                if span is not None:
                    span.set_attribute(ATTR_OUTCOME, outcome)
                if self._instruments is not None:
                    labels = {
                        ATTR_SAGA_NAME: self.saga.name,
                        ATTR_STEP_NAME: step.name,
                        ATTR_OUTCOME: outcome,
                    }
                    elapsed = time.perf_counter() - started
                    if ctx.compensating:
                        self._instruments.compensations.add(1, labels)
                        self._instruments.compensation_duration.record(elapsed, labels)
                    else:
                        self._instruments.steps.add(1, labels)
                        self._instruments.step_duration.record(elapsed, labels)

    # -- turning back ------------------------------------------------------------------------

    async def _backward(self) -> None:
        for step in reversed(self.saga.steps):
            state = self.steps.get(step.name)
            if state is None or state.status not in _TO_UNDO or step.compensation is None:
                continue
            if self._turned_back is None:  # resumed from the log, COMPENSATING already
                self._turned_back = await self._why_turned_back()
            failure = await self._compensate(step, state)
            if failure is not None:
                await self._write(
                    [self._entry(EntryKind.SAGA_FAILED, step.name, failure=failure)],
                    status=SagaStatus.FAILED,
                    failure=failure,
                )
                return
        await self._write([self._entry(EntryKind.SAGA_COMPENSATED)], status=SagaStatus.COMPENSATED)

    async def _why_turned_back(self) -> Failure | None:
        """Why a saga resumed from the log turned back, as its history says.

        The record's failure is that reason after a crash or an operator's abort, but not
        after an operator retried compensations that gave up: the record then holds the
        failure of the compensation that gave up. The last entry that turned the saga back
        (``saga_compensating`` or ``operator_aborted``) has the reason in every case.
        """
        for entry in reversed(await self.log.history(self.saga_id)):
            if entry.failure is not None and entry.kind in _TURNING_BACK:
                return entry.failure
        return self.failure

    async def _compensate(self, step: Step[DataT], state: StepState) -> Failure | None:
        """Undo *step*, retrying under its compensation policy; its timers live in the log
        as a step's do (see :meth:`_attempts`)."""
        compensation, wants_context = self._callable(step, compensating=True)
        resuming = state.status is StepStatus.COMPENSATING
        attempts = state.attempts if resuming else 0
        failures = state.failures if resuming else 0
        timeout_at = state.timeout_at if resuming else None
        retry_at = state.retry_at if resuming else None
        running = timeout_at is not None and retry_at is None
        policy = step.compensation_retry
        limit = step.compensation_timeout
        while True:
            if retry_at is not None:
                await anyio.sleep(max(0.0, retry_at - _clock.now()))
                retry_at = None
            # A compensation, once begun, is never cut short by cancellation.
            with anyio.CancelScope(shield=True):
                if running:  # the attempt that was running goes on, under its own timer
                    running = False
                else:
                    attempts += 1
                    timeout_at = None if limit is None else _clock.now() + limit
                    await self._write(
                        [self._entry(EntryKind.COMPENSATION_STARTED, step.name, attempts)],
                        steps={
                            step.name: StepState(
                                StepStatus.COMPENSATING, attempts, failures, timeout_at
                            )
                        },
                    )
                ctx = self._context(step, attempts, compensating=True)
                try:
                    await self._execute(
                        step, compensation, wants_context, self.data, ctx, timeout_at
                    )
                except Exception as exc:
                    failures += 1
                    failure = failure_of(step.name, exc, business=policy.is_business(exc))
                    entry = self._entry(EntryKind.COMPENSATION_FAILED, step.name, attempts, failure)
                    if not policy.may_retry(exc, failures):
                        self._stage(
                            entry,
                            step.name,
                            StepState(StepStatus.COMPENSATION_FAILED, attempts, failures),
                        )
                        return failure
                    retry_at = _clock.now() + policy.delay(failures)
                    await self._write(
                        [entry],
                        steps={
                            step.name: StepState(
                                StepStatus.COMPENSATING, attempts, failures, retry_at=retry_at
                            )
                        },
                    )
                else:
                    self._stage(
                        self._entry(EntryKind.COMPENSATION_SUCCEEDED, step.name, attempts),
                        step.name,
                        StepState(StepStatus.COMPENSATED, attempts, failures),
                    )
                    return None


async def _invoke(
    step: Step[Any],
    fn: Action,
    wants_context: bool,
    data: Any,
    ctx: StepContext,
    timeout_at: float | None,
) -> Any:
    """Call *fn*, until *timeout_at* if there is one (no cancel scope otherwise)."""
    if timeout_at is None:
        return await (fn(data, ctx) if wants_context else fn(data))
    left = timeout_at - _clock.now()
    if left <= 0:  # it ran out while no orchestrator drove the saga
        what = "compensation of step" if ctx.compensating else "step"
        raise TimeoutError(
            f"{what} {step.name!r} ran out of time (attempt {ctx.attempt}) while no "
            "orchestrator was driving the saga"
        )
    try:
        with anyio.fail_after(left):
            return await (fn(data, ctx) if wants_context else fn(data))
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


def step_limit(step: Step[Any], ctx: StepContext) -> float | None:
    """The time limit of one attempt of *step* (or of its compensation), as declared."""
    return step.compensation_timeout if ctx.compensating else step.timeout


def _timed_out(step: Step[Any], ctx: StepContext, limit: float | None) -> TimeoutError:
    what = "compensation of step" if ctx.compensating else "step"
    within = f"within {limit:.3g} s " if limit is not None else "before the saga's deadline "
    return TimeoutError(f"{what} {step.name!r} did not finish {within}(attempt {ctx.attempt})")


def _deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("the saga's deadline passed before it got past its pivot")
