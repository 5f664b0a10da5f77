"""The saga state machine: every change of a saga's state, decided in one place.

Each function here is pure: it reads a saga's current :class:`~pysaga.SagaRecord` (and, where
the path depends on it, the saga's definition) and what happened, and returns the
:class:`~pysaga.SagaUpdate` to write: the history entries and the new state, together. None of
them reads a clock or does I/O; the caller passes the time. The orchestrator's engine, the
choreography observer and the operator only do the I/O around them (run a step, write an
update, retry on a conflict), and :meth:`SagaRecord.apply <pysaga.SagaRecord.apply>` folds an
update into a record exactly as every saga log does.

The rules, in one place:

* A step runs forward as attempts: an *intent* (``step_started``) is written before each one,
  its *outcome* after it. A step whose intent is written and whose outcome is not (a crash, a
  timeout) is *in doubt*: it may have had its effect.
* When a step fails for good, the saga *turns back*: before the pivot it compensates; a step
  after the pivot, or a pivot in doubt, cannot be undone, so the saga is FAILED for an
  operator instead.
* Turning back, every step that may have had an effect (succeeded, in doubt, or compensating
  already) and declares a compensation is compensated, in reverse order. A step that failed is
  taken to have had no effect and is not.
* A compensation that gives up leaves the saga FAILED; the saga's ``failure`` keeps the reason
  it turned back, the compensation's own error is kept on its step.
* Terminal statuses absorb every event but an operator's: ``retry`` sends a FAILED saga back to
  work, ``resolve`` settles it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .definition import StepKind
from .errors import OperatorActionRefused
from .models import (
    ACTIVE_STATUSES,
    EntryKind,
    Failure,
    LogEntry,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepState,
    StepStatus,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .definition import Saga, Step

__all__ = (
    "MAY_HAVE_HAD_EFFECT",
    "NOT_STARTED",
    "abort",
    "compensated",
    "compensation_failed",
    "compensation_started",
    "compensation_succeeded",
    "completed",
    "deadline_applies",
    "heard",
    "is_overdue",
    "next_compensation",
    "next_stage",
    "overdue",
    "resolve",
    "retry",
    "start",
    "step_failed",
    "step_started",
    "step_succeeded",
    "turn_back",
)

NOT_STARTED = "null"
"""The data of a choreographed saga whose starting event has not been heard yet (another
event of it came first)."""

MAY_HAVE_HAD_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.STARTED, StepStatus.COMPENSATING})
"""The step statuses whose effect may have happened, and which a compensation therefore undoes."""

_NO_STATE = StepState(StepStatus.STARTED)


# -- starting ------------------------------------------------------------------------------------


def start(
    record: SagaRecord, first: Mapping[str, float | None], *, at: float, owner: str | None
) -> list[LogEntry]:
    """Fill in a new saga's *record* with the intents of its first stage, and return the
    entries it is created with.

    Args:
        record: The new saga's record (status RUNNING, no steps yet).
        first: The first stage's steps, each with the time its first attempt times out.
    """
    record.steps = {
        name: StepState(StepStatus.STARTED, 1, 0, limit) for name, limit in first.items()
    }
    entries = [LogEntry(EntryKind.SAGA_STARTED, at, None, 0, None, owner)]
    entries.extend(LogEntry(EntryKind.STEP_STARTED, at, name, 1, None, owner) for name in first)
    return entries


# -- going forward -------------------------------------------------------------------------------


def next_stage(
    record: SagaRecord, saga: Saga[Any], start: int = 0
) -> tuple[int, tuple[Step[Any], ...] | None]:
    """The first stage (from stage *start* on) that has not fully succeeded: its index and
    those of its steps that did not succeed; ``None`` for the steps when every step did."""
    steps = record.steps
    stages = saga.stages
    for index in range(start, len(stages)):
        stage = stages[index]
        if len(stage) == 1:
            state = steps.get(stage[0].name)
            if state is None or state.status is not StepStatus.SUCCEEDED:
                return index, stage
            continue
        todo = tuple(s for s in stage if _status(steps, s.name) is not StepStatus.SUCCEEDED)
        if todo:
            return index, todo
    return len(stages), None


def deadline_applies(record: SagaRecord, saga: Saga[Any]) -> bool:
    """Whether the saga's deadline still binds it: it has one and has not passed its pivot."""
    if record.deadline_at is None:
        return False
    pivot = saga.pivot
    return pivot is None or _status(record.steps, pivot.name) is not StepStatus.SUCCEEDED


def step_started(
    record: SagaRecord, step: str, *, at: float, owner: str | None, timeout_at: float | None
) -> SagaUpdate:
    """Intent: an attempt of *step* is about to run (until *timeout_at*, if set)."""
    state = record.steps.get(step, _NO_STATE)
    attempt = state.attempts + 1
    return SagaUpdate(
        [LogEntry(EntryKind.STEP_STARTED, at, step, attempt, None, owner)],
        steps={step: StepState(StepStatus.STARTED, attempt, state.failures, timeout_at)},
    )


def step_succeeded(
    record: SagaRecord, step: str, *, at: float, owner: str | None, data: str | None = None
) -> SagaUpdate:
    """Outcome: the running attempt of *step* returned (*data*: the saga's new data, if any)."""
    state = record.steps.get(step, _NO_STATE)
    return SagaUpdate(
        [LogEntry(EntryKind.STEP_SUCCEEDED, at, step, state.attempts, None, owner)],
        steps={step: StepState(StepStatus.SUCCEEDED, state.attempts, state.failures)},
        data=data,
    )


def step_failed(
    record: SagaRecord,
    step: str,
    failure: Failure,
    *,
    at: float,
    owner: str | None,
    in_doubt: bool,
    retry_at: float | None,
) -> SagaUpdate:
    """Outcome: the running attempt of *step* failed.

    Args:
        in_doubt: The attempt was interrupted (it timed out): it may have had its effect, so
            the step stays STARTED (compensated if the saga turns back).
        retry_at: When the next attempt may start, or ``None`` when the step gave up.
    """
    state = record.steps.get(step, _NO_STATE)
    status = StepStatus.STARTED if in_doubt else StepStatus.FAILED
    return SagaUpdate(
        [LogEntry(EntryKind.STEP_FAILED, at, step, state.attempts, failure, owner)],
        steps={
            step: StepState(
                status,
                state.attempts,
                state.failures + 1,
                retry_at=retry_at,
                failure=None if retry_at is not None else failure,
            )
        },
    )


def completed(record: SagaRecord, *, at: float, owner: str | None) -> SagaUpdate:
    """Every step succeeded: the saga is COMPLETED."""
    return SagaUpdate(
        [LogEntry(EntryKind.SAGA_COMPLETED, at, None, 0, None, owner)],
        status=SagaStatus.COMPLETED,
    )


def turn_back(
    record: SagaRecord,
    saga: Saga[Any],
    failure: Failure,
    *,
    at: float,
    owner: str | None,
) -> SagaUpdate:
    """A step failed for good (``failure.step``), or the deadline passed (no step): compensate.

    A step after the pivot cannot be undone, nor can a pivot whose outcome is in doubt (its
    last attempt timed out: compensating the earlier steps could leave half a transaction):
    then the saga is FAILED for an operator instead.
    """
    step = saga.get_step(failure.step) if failure.step is not None else None
    if step is not None:
        pivot_in_doubt = (
            step.kind is StepKind.PIVOT and _status(record.steps, step.name) is StepStatus.STARTED
        )
        if step.kind is StepKind.RETRIABLE or pivot_in_doubt:
            return SagaUpdate(
                [LogEntry(EntryKind.SAGA_FAILED, at, step.name, 0, failure, owner)],
                status=SagaStatus.FAILED,
                failure=failure,
            )
    return SagaUpdate(
        [LogEntry(EntryKind.SAGA_COMPENSATING, at, None, 0, failure, owner)],
        status=SagaStatus.COMPENSATING,
        failure=failure,
    )


# -- turning back --------------------------------------------------------------------------------


def next_compensation(record: SagaRecord, saga: Saga[Any]) -> Step[Any] | None:
    """The next step to compensate, last declared first, or ``None`` when none is left."""
    steps = record.steps
    step: Step[Any]
    for step in reversed(saga.steps):
        state = steps.get(step.name)
        if state is not None and state.status in MAY_HAVE_HAD_EFFECT and step.has_compensation:
            return step
    return None


def compensation_started(
    record: SagaRecord, step: str, *, at: float, owner: str | None, timeout_at: float | None
) -> SagaUpdate:
    """Intent: an attempt of *step*'s compensation is about to run.

    The step's counters count the compensation's attempts from its first one on.
    """
    state = record.steps.get(step, _NO_STATE)
    resuming = state.status is StepStatus.COMPENSATING
    attempt = (state.attempts if resuming else 0) + 1
    failures = state.failures if resuming else 0
    return SagaUpdate(
        [LogEntry(EntryKind.COMPENSATION_STARTED, at, step, attempt, None, owner)],
        steps={step: StepState(StepStatus.COMPENSATING, attempt, failures, timeout_at)},
    )


def compensation_succeeded(
    record: SagaRecord, step: str, *, at: float, owner: str | None
) -> SagaUpdate:
    """Outcome: the compensation of *step* returned: its effect is undone."""
    state = record.steps.get(step, _NO_STATE)
    return SagaUpdate(
        [LogEntry(EntryKind.COMPENSATION_SUCCEEDED, at, step, state.attempts, None, owner)],
        steps={step: StepState(StepStatus.COMPENSATED, state.attempts, state.failures)},
    )


def compensation_failed(
    record: SagaRecord,
    step: str,
    failure: Failure,
    *,
    at: float,
    owner: str | None,
    retry_at: float | None,
) -> SagaUpdate:
    """Outcome: an attempt of *step*'s compensation failed.

    With *retry_at* the compensation tries again then. Without, it gave up and the saga is
    FAILED: its ``failure`` (why it turned back) stays, and the compensation's error is kept on
    the step, beside it.
    """
    state = record.steps.get(step, _NO_STATE)
    entry = LogEntry(EntryKind.COMPENSATION_FAILED, at, step, state.attempts, failure, owner)
    if retry_at is not None:
        return SagaUpdate(
            [entry],
            steps={
                step: StepState(
                    StepStatus.COMPENSATING, state.attempts, state.failures + 1, retry_at=retry_at
                )
            },
        )
    return SagaUpdate(
        [entry, LogEntry(EntryKind.SAGA_FAILED, at, step, 0, failure, owner)],
        status=SagaStatus.FAILED,
        steps={
            step: StepState(
                StepStatus.COMPENSATION_FAILED,
                state.attempts,
                state.failures + 1,
                failure=failure,
            )
        },
    )


def compensated(record: SagaRecord, *, at: float, owner: str | None) -> SagaUpdate:
    """Every step that may have had an effect is undone: the saga is COMPENSATED."""
    return SagaUpdate(
        [LogEntry(EntryKind.SAGA_COMPENSATED, at, None, 0, None, owner)],
        status=SagaStatus.COMPENSATED,
    )


# -- an operator's actions -----------------------------------------------------------------------


def retry(record: SagaRecord, entry: LogEntry) -> SagaUpdate:
    """Send a FAILED saga back to work: compensations that gave up start again (COMPENSATING)
    with a fresh budget; otherwise the step that gave up after the pivot does (RUNNING)."""
    if record.status is not SagaStatus.FAILED:
        raise _refuse(record, "retry", _not_failed(record, "retry"))
    gave_up = {
        name: StepState(StepStatus.COMPENSATING, state.attempts, 0)
        for name, state in record.steps.items()
        if state.status is StepStatus.COMPENSATION_FAILED
    }
    if gave_up:
        return SagaUpdate([entry], status=SagaStatus.COMPENSATING, steps=gave_up)
    gave_up = {
        name: StepState(state.status, state.attempts, 0)
        for name, state in record.steps.items()
        if state.status in (StepStatus.FAILED, StepStatus.STARTED)
    }
    if not gave_up:
        raise _refuse(
            record,
            "retry",
            "none of its steps or compensations gave up, so there is nothing to retry "
            "(its history says why it failed); resolve it once it is settled",
        )
    return SagaUpdate([entry], status=SagaStatus.RUNNING, steps=gave_up)


def abort(record: SagaRecord, entry: LogEntry) -> SagaUpdate:
    """Turn a RUNNING saga back: it compensates, with the operator's reason (the failure
    *entry* carries) as the reason it turned back."""
    if record.status is not SagaStatus.RUNNING:
        if record.status is SagaStatus.COMPENSATING:
            why = (
                "it is COMPENSATING already: it is turning back. An orchestrator that runs "
                f"{_kind(record)} finishes its compensations; if none runs, start one"
            )
        elif record.status is SagaStatus.FAILED:
            why = "it is FAILED, not RUNNING: retry it, or resolve it once it is settled"
        else:
            why = _ended(record)
        raise _refuse(record, "abort", why)
    # Timers of attempts the abort cuts short are dropped: nobody waits on them any more.
    untimed = {
        name: StepState(state.status, state.attempts, state.failures, failure=state.failure)
        for name, state in record.steps.items()
        if state.timeout_at is not None or state.retry_at is not None
    }
    return SagaUpdate([entry], status=SagaStatus.COMPENSATING, steps=untimed, failure=entry.failure)


def resolve(record: SagaRecord, entry: LogEntry) -> SagaUpdate:
    """Settle a FAILED saga by hand: it is RESOLVED and nothing more happens to it."""
    if record.status is not SagaStatus.FAILED:
        raise _refuse(record, "resolve", _not_failed(record, "resolve"))
    return SagaUpdate([entry], status=SagaStatus.RESOLVED)


def _not_failed(record: SagaRecord, action: str) -> str:
    if record.status.is_terminal:
        return _ended(record)
    if record.status is SagaStatus.RUNNING:
        then = "abort it to turn it back" if action == "retry" else "abort it first, or wait for it"
        return (
            f"it is RUNNING, not FAILED: an orchestrator that runs {_kind(record)} drives it "
            f"on its own ({then})"
        )
    return (
        f"it is COMPENSATING, not FAILED: it is turning back, and an orchestrator that runs "
        f"{_kind(record)} finishes its compensations (if none runs, start one); "
        f"{action} it once it is FAILED"
    )


def _kind(record: SagaRecord) -> str:
    return f"{record.name!r} version {record.version}"


def _ended(record: SagaRecord) -> str:
    if record.status is SagaStatus.RESOLVED:
        return "an operator resolved it already; it is finished"
    return f"it ended {record.status.value.upper()}; it is finished"


def _refuse(record: SagaRecord, action: str, why: str) -> OperatorActionRefused:
    return OperatorActionRefused(record.saga_id, action, why)


# -- helpers -------------------------------------------------------------------------------------


def _status(steps: Mapping[str, StepState], name: str) -> StepStatus | None:
    state = steps.get(name)
    return None if state is None else state.status


# -- a choreographed saga, as its observer hears it ----------------------------------------------


def heard(
    record: SagaRecord,
    kind: str,
    step: str | None,
    *,
    at: float,
    source: str | None,
    failure: Failure | None = None,
    data: str | None = None,
) -> SagaUpdate | None:
    """What hearing one event of a choreographed flow means for its saga's record, or ``None``
    when the record already shows it (a copy of an event recorded before).

    Args:
        kind: What the event means (:data:`pysaga.choreography.MeaningKind`): ``"start"``,
            ``"completes"``, ``"compensates"``, or a step's ``"done"``, ``"failed"`` or
            ``"compensated"``.
        step: The step whose outcome the event marks.
        at: When the event happened (its own time, not when it was heard).
        source: The service that published it (the entries' ``owner``).
        failure: For ``"failed"`` and ``"compensates"``: the failure the event describes.
        data: For ``"start"``: the event as the saga's data (JSON text).
    """
    status = record.status
    active = status in ACTIVE_STATUSES
    if kind == "start":
        if data is None or record.data != NOT_STARTED:
            return None
        return SagaUpdate([LogEntry(EntryKind.SAGA_STARTED, at, None, 0, None, source)], data=data)
    if kind in ("completes", "compensates"):
        ending = SagaStatus.COMPLETED if kind == "completes" else SagaStatus.COMPENSATED
        if status is ending:
            return None
        entry_kind = EntryKind.SAGA_COMPLETED if kind == "completes" else EntryKind.SAGA_COMPENSATED
        entries = [LogEntry(entry_kind, at, None, 0, None, source)]
        if not active:  # heard after it ended: kept in its history, its status stays
            return SagaUpdate(entries)
        kept: Failure | None = None
        if ending is SagaStatus.COMPENSATED:
            if record.failure is None:
                kept = failure
            if status is SagaStatus.RUNNING:  # it turned back unheard: say so, as the
                # orchestrator does before every COMPENSATED
                entries.insert(0, LogEntry(EntryKind.SAGA_COMPENSATING, at, None, 0, None, source))
        return SagaUpdate(entries, status=ending, failure=kept)
    assert step is not None, f"a {kind!r} event marks a step"
    state = record.steps.get(step)
    if kind == "compensated":
        if state is not None and state.status is StepStatus.COMPENSATED:
            return None
        new = StepState(
            StepStatus.COMPENSATED,
            state.attempts if state else 0,
            state.failures if state else 0,
        )
        entries = [LogEntry(EntryKind.COMPENSATION_SUCCEEDED, at, step, 1, None, source)]
        if status is SagaStatus.RUNNING:
            entries.append(LogEntry(EntryKind.SAGA_COMPENSATING, at, None, 0, None, source))
            return SagaUpdate(entries, status=SagaStatus.COMPENSATING, steps={step: new})
        return SagaUpdate(entries, steps={step: new})
    if state is not None and state.attempts:
        return None  # its outcome was heard before
    keep = state is not None and state.status is StepStatus.COMPENSATED
    if kind == "done":
        new = StepState(StepStatus.COMPENSATED if keep else StepStatus.SUCCEEDED, 1, 0)
        entries = [LogEntry(EntryKind.STEP_SUCCEEDED, at, step, 1, None, source)]
        return SagaUpdate(entries, steps={step: new})
    assert failure is not None, "a step's failed event describes its failure"
    new = StepState(
        StepStatus.COMPENSATED if keep else StepStatus.FAILED,
        1,
        1,
        failure=None if keep else failure,
    )
    entries = [LogEntry(EntryKind.STEP_FAILED, at, step, 1, failure, source)]
    # A step's failure says best why the saga turned back: it replaces one taken from the
    # ending event (heard first), but not another step's, nor a deadline mark's.
    keeps_failure = (record.failure is not None and record.failure.step is not None) or status in (
        SagaStatus.COMPLETED,
        SagaStatus.FAILED,
        SagaStatus.RESOLVED,
    )
    if status is SagaStatus.RUNNING:
        entries.append(LogEntry(EntryKind.SAGA_COMPENSATING, at, None, 0, failure, source))
        return SagaUpdate(
            entries, status=SagaStatus.COMPENSATING, steps={step: new}, failure=failure
        )
    return SagaUpdate(entries, steps={step: new}, failure=None if keeps_failure else failure)


def overdue(
    record: SagaRecord, failure: Failure, *, at: float, owner: str | None
) -> SagaUpdate | None:
    """A choreographed saga did not end within its deadline: FAILED, for an operator (or
    ``None`` when it is not overdue at *at*: it ended, or has no deadline, or time is left)."""
    if not is_overdue(record, at):
        return None
    return SagaUpdate(
        [LogEntry(EntryKind.SAGA_FAILED, at, None, 0, failure, owner)],
        status=SagaStatus.FAILED,
        failure=failure,
    )


def is_overdue(record: SagaRecord, at: float) -> bool:
    """Whether *record* is unfinished past its deadline at *at*."""
    return (
        record.status in ACTIVE_STATUSES
        and record.deadline_at is not None
        and record.deadline_at < at
    )
