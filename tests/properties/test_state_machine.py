"""Properties of the pure saga state machine, driven directly: no log, no engine, no clock.

Random saga shapes (1 to 6 steps, an optional pivot, some neighbours grouped in parallel,
compensations on some steps before the pivot) and random event sequences: each step's
attempts start, succeed, fail (retried or not, in doubt or not), restart after a crash; the
deadline passes; compensations start, fail and succeed; operators retry, abort and resolve at
any moment (refused when the state does not allow it). After every transition the record,
folded with ``SagaRecord.apply`` as every log folds it, must keep the invariants:

* every transition appends history, and the record's status is one the history explains;
* a compensation starts only for a step that may have had an effect (succeeded, in doubt, or
  compensating already) and that declares one;
* a COMPENSATED saga has no step left that may have had an effect and has a compensation;
  a COMPLETED one has every step succeeded;
* the reason a saga turned back is kept through its compensations (a compensation's own error
  sits on its step);
* terminal statuses absorb every event but an operator's retry or resolve of a FAILED saga.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pysaga import OperatorActionRefused, Saga, SagaRecord, SagaStatus, StepKind, StepStatus
from pysaga import _transitions as machine
from pysaga.models import EntryKind, Failure, LogEntry, SagaUpdate

OWNER = "orch-1"


class Data(BaseModel):
    n: int = 0


async def _step(data: Data) -> None:
    return None


@dataclass
class Shape:
    steps: int
    pivot: int | None
    compensations: list[bool]
    group: tuple[int, int] | None  # a parallel group over steps [a, b)


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    steps = draw(st.integers(1, 6))
    pivot = draw(st.one_of(st.none(), st.integers(0, steps - 1)))
    before = steps if pivot is None else pivot
    compensations = [draw(st.booleans()) if i < before else False for i in range(steps)]
    group = None
    if before >= 2 and draw(st.booleans()):
        a = draw(st.integers(0, before - 2))
        b = draw(st.integers(a + 2, before))
        group = (a, b)
    return Shape(steps, pivot, compensations, group)


def declare(shape: Shape) -> Saga[Data]:
    saga = Saga("machine", Data)

    def add(i: int) -> None:
        step = saga.step(name=f"s{i}", pivot=i == shape.pivot)(_step)
        if shape.compensations[i]:
            step.compensate(_step)

    i = 0
    while i < shape.steps:
        if shape.group is not None and i == shape.group[0]:
            with saga.parallel("group"):
                for j in range(*shape.group):
                    add(j)
            i = shape.group[1]
        else:
            add(i)
            i += 1
    saga.seal()
    return saga


def new_record(saga: Saga[Data]) -> tuple[SagaRecord, list[LogEntry]]:
    record = SagaRecord("s", saga.name, saga.version, SagaStatus.RUNNING, "{}")
    entries = machine.start(
        record, {step.name: None for step in saga.stages[0]}, at=0.0, owner=OWNER
    )
    return record, entries


def fail(step: str | None, *, business: bool = False) -> Failure:
    return Failure(
        step=step,
        type="BusinessError" if business else "ConnectionError",
        message="no",
        business=business,
    )


def choices(record: SagaRecord, saga: Saga[Data], now: float) -> list[tuple[str, SagaUpdate]]:
    """Every transition the machine allows now, as a driver (engine or operator) would make."""
    options: list[tuple[str, SagaUpdate]] = []
    kw = {"at": now, "owner": OWNER}
    status = record.status
    if status is SagaStatus.RUNNING:
        _, todo = machine.next_stage(record, saga)
        if todo is None:
            options.append(("completed", machine.completed(record, **kw)))
        else:
            for step in todo:
                name = step.name
                state = record.steps.get(name)
                options.append(
                    ("intent", machine.step_started(record, name, timeout_at=None, **kw))
                )  # a first attempt, a retry, or a re-run after a crash
                if state is not None and state.status is StepStatus.STARTED:
                    options.append(("succeeded", machine.step_succeeded(record, name, **kw)))
                    for in_doubt in (False, True):
                        for retry_at in (None, now + 1):
                            update = machine.step_failed(
                                record, name, fail(name), in_doubt=in_doubt, retry_at=retry_at, **kw
                            )
                            options.append(("failed", update))
                if (
                    state is not None
                    and state.retry_at is None
                    and (state.status is StepStatus.FAILED or state.failures)
                ):
                    options.append(
                        (
                            "turn back",
                            machine.turn_back(record, saga, fail(name, business=True), **kw),
                        )
                    )
            options.append(("deadline", machine.turn_back(record, saga, fail(None), **kw)))
    elif status is SagaStatus.COMPENSATING:
        step = machine.next_compensation(record, saga)
        if step is None:
            options.append(("compensated", machine.compensated(record, **kw)))
        else:
            name = step.name
            state = record.steps[name]
            options.append(
                ("compensating", machine.compensation_started(record, name, timeout_at=None, **kw))
            )
            if state.status is StepStatus.COMPENSATING and state.attempts:
                options.append(
                    ("compensation succeeded", machine.compensation_succeeded(record, name, **kw))
                )
                for retry_at in (None, now + 1):
                    options.append(
                        (
                            "compensation failed",
                            machine.compensation_failed(
                                record, name, fail(name), retry_at=retry_at, **kw
                            ),
                        )
                    )
    operator = LogEntry(EntryKind.OPERATOR_RETRIED, now, None, 0, fail(None), "alice")
    for label, act in (
        ("retry", lambda: machine.retry(record, operator)),
        ("abort", lambda: machine.abort(record, operator)),
        ("resolve", lambda: machine.resolve(record, operator)),
    ):
        with contextlib.suppress(OperatorActionRefused):
            options.append((label, act()))
    return options


@settings(max_examples=300, deadline=None)
@given(shape=shapes(), picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=60))
def test_random_event_sequences_keep_the_invariants(shape: Shape, picks: list[int]) -> None:
    saga = declare(shape)
    record, history = new_record(saga)
    reason: Failure | None = None
    seen: set[str] = set()
    for now, pick in enumerate(picks, start=1):
        options = choices(record, saga, float(now))
        if not options:
            break
        label, update = options[pick % len(options)]
        seen.add(record.status.value)
        before = record.status
        previous = {name: state.status for name, state in record.steps.items()}
        assert update.entries, f"{label} appended no history"
        record.apply(update)
        history.extend(update.entries)

        # a compensation only for a step that may have had its effect, and that has one
        for entry in update.entries:
            if entry.kind is EntryKind.COMPENSATION_STARTED:
                assert entry.step is not None
                assert saga.get_step(entry.step).compensation is not None
                assert previous[entry.step] in machine.MAY_HAVE_HAD_EFFECT, (label, previous)

        # terminal statuses absorb everything but an operator's retry or resolve of FAILED
        if before.is_terminal and record.status is not before:
            assert before is SagaStatus.FAILED, label
            assert label in ("retry", "resolve"), label

        # the reason a saga turned back is kept while it compensates, and after
        if label in ("turn back", "deadline", "abort") and record.status is SagaStatus.COMPENSATING:
            reason = update.failure
        if reason is not None and record.status in (
            SagaStatus.COMPENSATING,
            SagaStatus.COMPENSATED,
        ):
            assert record.failure == reason
        if record.status is SagaStatus.FAILED and record.compensation_failure is not None:
            assert record.failure == reason  # the compensation's error sits beside it

        if record.status is SagaStatus.COMPENSATED:
            for step in saga.steps:
                state = record.steps.get(step.name)
                assert not (
                    step.compensation is not None
                    and state is not None
                    and state.status in machine.MAY_HAVE_HAD_EFFECT
                ), ("compensated, yet pending", step.name, state)
        if record.status is SagaStatus.COMPLETED:
            assert all(
                record.steps[step.name].status is StepStatus.SUCCEEDED for step in saga.steps
            )
        if record.status is SagaStatus.FAILED and label in ("turn back", "failed"):
            step = (
                saga.get_step(update.failure.step)
                if update.failure and update.failure.step
                else None
            )
            assert step is not None
            assert step.kind is StepKind.RETRIABLE or (
                step.kind is StepKind.PIVOT and record.steps[step.name].status is StepStatus.STARTED
            )
    seen.add(record.status.value)
    event(" -> ".join(sorted(seen)))


def test_a_pivot_in_doubt_fails_instead_of_compensating() -> None:
    saga = declare(Shape(2, 1, [True, False], None))
    record, _ = new_record(saga)
    record.apply(machine.step_succeeded(record, "s0", at=1, owner=OWNER))
    record.apply(machine.step_started(record, "s1", at=2, owner=OWNER, timeout_at=3))
    record.apply(
        machine.step_failed(
            record, "s1", fail("s1"), at=3, owner=OWNER, in_doubt=True, retry_at=None
        )
    )
    update = machine.turn_back(record, saga, fail("s1"), at=4, owner=OWNER)
    assert update.status is SagaStatus.FAILED
    assert [e.kind for e in update.entries] == [EntryKind.SAGA_FAILED]


def test_operator_hints_name_an_action_the_state_allows() -> None:
    """Refusals never send the operator to another refusal (retry of a COMPENSATING saga used
    to say "abort it", which then refused because it was compensating already)."""
    saga = declare(Shape(2, None, [True, True], None))
    record, _ = new_record(saga)
    record.apply(machine.turn_back(record, saga, fail("s0", business=True), at=1, owner=OWNER))
    assert record.status is SagaStatus.COMPENSATING
    entry = LogEntry(EntryKind.OPERATOR_RETRIED, 2.0, None, 0, fail(None), "alice")
    for refused in (
        lambda: machine.retry(record, entry),
        lambda: machine.abort(record, entry),
        lambda: machine.resolve(record, entry),
    ):
        with pytest.raises(OperatorActionRefused) as caught:
            refused()
        message = str(caught.value)
        assert "abort it" not in message
        assert "start one" in message  # the one thing that moves a COMPENSATING saga on
