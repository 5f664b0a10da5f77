"""Properties over random saga shapes, on every saga log that needs no server.

Shapes: 1 to 8 steps, an optional pivot anywhere, neighbours before the pivot sometimes
grouped to run in parallel, each step with a random script of attempt
outcomes (success, technical failure, business refusal) and a random retry budget, each
compensatable step with or without a compensation that fails a random number of times
against its own budget. For every shape, the outcome is predicted by a small model of the
saga rules and checked, with the effects each step left behind:

* COMPLETED: every step's effect happened exactly once;
* COMPENSATED: the net effect is zero;
* FAILED: only when a compensation exhausted its budget (or a step after the pivot could not
  succeed), and the failure names that step.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Retry, Saga, SagaStatus, StepContext, StepKind

Outcome = Literal["ok", "tech", "biz"]


@dataclass
class StepSpec:
    script: list[Outcome]  # outcome of attempt 1, 2, ...; "ok" once the script runs out
    attempts: int | None
    compensation: bool
    compensation_failures: int
    compensation_attempts: int


@dataclass
class Shape:
    steps: list[StepSpec]
    pivot: int | None
    stages: list[list[int]]  # step indices, in order; a stage of several is a parallel group


@dataclass
class World:
    """Effects by idempotency key, and how many times each was applied or undone."""

    effects: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)
    undone: Counter[str] = field(default_factory=Counter)


class Data(BaseModel):
    trail: list[str] = []


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    n = draw(st.integers(1, 8))
    pivot = draw(st.none() | st.integers(0, n - 1))
    steps = []
    for i in range(n):
        retriable = pivot is not None and i > pivot
        script = draw(st.lists(st.sampled_from(["ok", "tech", "biz"]), max_size=4))
        # after the pivot the default is "until it succeeds"; sometimes give a budget
        attempts = draw(st.none() | st.integers(1, 3)) if retriable else draw(st.integers(1, 3))
        compensatable = pivot is None or i < pivot
        steps.append(
            StepSpec(
                script=script,
                attempts=attempts,
                compensation=compensatable and draw(st.booleans()),
                compensation_failures=draw(st.integers(0, 4)),
                compensation_attempts=draw(st.integers(1, 3)),
            )
        )
    # Before the pivot, neighbours may be grouped to run in parallel.
    stages: list[list[int]] = []
    for i in range(n):
        before_pivot = pivot is None or i < pivot
        joins = (
            before_pivot
            and stages
            and (pivot is None or stages[-1][-1] < pivot)
            and draw(st.booleans())
        )
        if joins:
            stages[-1].append(i)
        else:
            stages.append([i])
    return Shape(steps, pivot, stages)


def build(shape: Shape, world: World) -> Saga[Data]:
    saga: Saga[Data] = Saga("random", Data)
    calls: Counter[str] = Counter()

    def declare(i: int, spec: StepSpec, grouped: bool) -> None:
        async def action(data: Data, ctx: StepContext) -> Data | None:
            calls[ctx.step] += 1
            attempt = calls[ctx.step]
            outcome = spec.script[attempt - 1] if attempt <= len(spec.script) else "ok"
            if outcome == "biz":
                raise BusinessError(f"{ctx.step} refused")
            if outcome == "tech":
                raise ConnectionError(f"{ctx.step} attempt {attempt} failed")
            world.effects[ctx.idempotency_key] = 1
            world.applied[ctx.idempotency_key] += 1
            if grouped:  # parallel steps must write disjoint fields: these write none
                return None
            return data.model_copy(update={"trail": [*data.trail, ctx.step]})

        step = saga.step(
            name=f"s{i}",
            pivot=shape.pivot == i,
            retry=Retry(attempts=spec.attempts, backoff=0, jitter=0),
        )(action)
        if spec.compensation:

            async def undo(data: Data, ctx: StepContext) -> None:
                calls[f"undo {ctx.step}"] += 1
                if calls[f"undo {ctx.step}"] <= spec.compensation_failures:
                    raise ConnectionError(f"undo {ctx.step} failed")
                world.effects[ctx.idempotency_key] = 0
                world.undone[ctx.idempotency_key] += 1

            step.compensate(retry=Retry(attempts=spec.compensation_attempts, backoff=0, jitter=0))(
                undo
            )

    for number, stage in enumerate(shape.stages):
        if len(stage) == 1:
            declare(stage[0], shape.steps[stage[0]], grouped=False)
            continue
        with saga.parallel(f"group{number}"):
            for i in stage:
                declare(i, shape.steps[i], grouped=True)
    return saga


def fails(spec: StepSpec) -> bool:
    """Whether the step fails for good under its retry budget."""
    for attempt in range(1, 100):  # every attempt before "ok" failed
        outcome = spec.script[attempt - 1] if attempt <= len(spec.script) else "ok"
        if outcome == "ok":
            return False
        if outcome == "biz" or (spec.attempts is not None and attempt >= spec.attempts):
            return True
    raise AssertionError("unreachable")


def predict(shape: Shape) -> tuple[SagaStatus, str | None, list[int]]:
    """The model of the rules: (status, the step the failure names, steps whose effect
    happened). A parallel group runs all its steps; the first failing one (in declaration
    order) is the one named."""
    applied: list[int] = []
    for stage in shape.stages:
        failed = [i for i in stage if fails(shape.steps[i])]
        applied += [i for i in stage if i not in failed]
        if not failed:
            continue
        first = failed[0]
        if shape.pivot is not None and first > shape.pivot:
            return SagaStatus.FAILED, f"s{first}", applied
        for j in sorted(applied, reverse=True):
            earlier = shape.steps[j]
            if earlier.compensation and (
                earlier.compensation_failures >= earlier.compensation_attempts
            ):
                return SagaStatus.FAILED, f"s{j}", applied
        return SagaStatus.COMPENSATED, f"s{first}", applied
    return SagaStatus.COMPLETED, None, applied


def check(shape: Shape, log_url: str) -> None:
    world = World()
    saga = build(shape, world)

    async def main() -> None:
        async with Orchestrator(sagas=[saga], log=log_url) as orch:
            outcome = await orch.run(saga, Data())
        status, failing, applied = predict(shape)
        grouped = any(len(stage) > 1 for stage in shape.stages)
        event(f"{status.value}{' with a parallel group' if grouped else ''}")
        assert outcome.status is status, (outcome, shape)
        key = f"{outcome.saga_id}/"
        names = [f"s{i}" for i in range(len(shape.steps))]
        # no effect ever happened twice, and none for a step that never succeeded
        assert all(count == 1 for count in world.applied.values())
        assert set(world.applied) == {f"{key}s{i}" for i in applied}
        # a compensation runs only for a step whose effect happened, and at most once
        assert set(world.undone) <= set(world.applied)
        assert all(count == 1 for count in world.undone.values())
        compensatable = [i for i in applied if shape.steps[i].compensation]
        if status is SagaStatus.COMPLETED:
            assert outcome.failure is None
            assert outcome.data.trail == [f"s{s[0]}" for s in shape.stages if len(s) == 1]
            assert {world.effects[key + n] for n in names} == {1}
        elif status is SagaStatus.COMPENSATED:
            assert outcome.failure is not None
            assert outcome.failure.step == failing
            assert sum(world.effects[f"{key}s{i}"] for i in compensatable) == 0
        else:
            assert outcome.failure is not None
            # what it is stuck on: the compensation that gave up (its error kept beside the
            # reason the saga turned back), or the step that failed after the pivot
            stuck = outcome.compensation_failure or outcome.failure
            assert stuck.step == failing
            failed_step = saga.get_step(failing or "")
            if failed_step.kind is StepKind.RETRIABLE:
                assert not world.undone  # nothing is compensated after the pivot
            else:
                # undone: every step after the stuck compensation; not it, nor those before
                j = failed_step.index
                for i in compensatable:
                    assert world.effects[f"{key}s{i}"] == (1 if i <= j else 0), (i, shape)

    anyio.run(main)


PROPERTY = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


@PROPERTY
@given(shapes())
def test_random_sagas_on_the_memory_log(shape: Shape) -> None:
    """Random shapes end as the rules say, with the right effects, on the in-memory log."""
    check(shape, "memory://")


@PROPERTY
@given(shapes())
def test_random_sagas_on_the_sqlite_log(shape: Shape) -> None:
    """Random shapes end as the rules say, with the right effects, on the SQLite log."""
    with tempfile.TemporaryDirectory() as tmp:
        check(shape, f"sqlite:///{Path(tmp) / 'sagas.db'}")
