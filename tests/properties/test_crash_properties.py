"""Crash anywhere, resume, and the guarantees still hold: a property over random saga shapes
and random crash points, on every saga log that needs no server.

A crash is simulated in-process by raising :class:`Crash` (a ``BaseException``, so nothing in
pysaga may catch it, as nothing survives a killed process) at chosen points: just before a
log write, just after one (the write is durable but the process never learns it), or inside a
step or compensation right after its effect happened (between the intent and the outcome).
After each crash a new orchestrator opens the same log and resumes the saga. (Real SIGKILLs
on a SQLite file are in ``tests/faults``; this covers far more crash points per second.)

Whatever the crashes, the saga ends terminal, and:

* COMPLETED: every step's effect is there, once (re-runs of a step in doubt are idempotent);
* COMPENSATED: every compensatable step's net effect is zero;
* FAILED: names a compensation that used up its budget, a step after the pivot that could
  not succeed, or a pivot left in doubt.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    ConcurrencyError,
    LogEntry,
    Orchestrator,
    Retry,
    Saga,
    SagaLog,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepContext,
    StepKind,
    StepStatus,
)
from pysaga.stores.memory import InMemorySagaLog
from pysaga.stores.sqlite import SQLiteSagaLog


class Crash(BaseException):
    """The process dies here."""


Outcome = Literal["ok", "tech", "biz"]


@dataclass
class StepSpec:
    script: list[Outcome]
    compensation: bool
    compensation_failures: int


@dataclass
class Shape:
    steps: list[StepSpec]
    pivot: int | None
    # crash points, counted across the whole test: log writes (before or after they land) and
    # effect points (after a step's or a compensation's effect, before it returns)
    write_crashes: set[tuple[int, bool]]
    effect_crashes: set[int]


@dataclass
class World:
    """The services' side: effects by idempotency key, and every call made."""

    effects: dict[str, int] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    effect_points: int = 0
    crashes: int = 0


class Data(BaseModel):
    trail: list[str] = []


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    n = draw(st.integers(1, 6))
    pivot = draw(st.none() | st.integers(0, n - 1))
    steps = [
        StepSpec(
            script=draw(st.lists(st.sampled_from(["ok", "tech", "biz"]), max_size=2)),
            compensation=(pivot is None or i < pivot) and draw(st.booleans()),
            compensation_failures=draw(st.integers(0, 3)),
        )
        for i in range(n)
    ]
    writes = draw(st.sets(st.tuples(st.integers(1, 3 * n + 4), st.booleans()), max_size=4))
    effects = draw(st.sets(st.integers(1, 2 * n), max_size=3))
    return Shape(steps, pivot, writes, effects)


class CrashingLog:
    """A saga log that dies at chosen writes, as the process writing to it would."""

    def __init__(self, inner: SagaLog, shape: Shape, world: World, counter: list[int]) -> None:
        self._inner = inner
        self._shape = shape
        self._world = world
        self._counter = counter  # shared by every generation: crash points are global

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(t, e, tb)

    async def _written(self, write: Callable[[], Any]) -> Any:
        self._counter[0] += 1
        n = self._counter[0]
        if (n, False) in self._shape.write_crashes:
            self._world.crashes += 1
            raise Crash(f"before write {n}")
        result = await write()
        if (n, True) in self._shape.write_crashes:
            self._world.crashes += 1
            raise Crash(f"after write {n}")
        return result

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        await self._written(lambda: self._inner.create(record, entries))

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        result: int = await self._written(
            lambda: self._inner.update(saga_id, update, revision=revision, owner=owner)
        )
        return result

    def __getattr__(self, name: str) -> Any:  # reads and lease upkeep pass straight through
        return getattr(self._inner, name)


def build(shape: Shape, world: World) -> Saga[Data]:
    saga: Saga[Data] = Saga("crashy", Data)

    def effect_point() -> None:
        world.effect_points += 1
        if world.effect_points in shape.effect_crashes:
            world.crashes += 1
            raise Crash(f"after effect {world.effect_points}")

    for i, spec in enumerate(shape.steps):

        async def action(data: Data, ctx: StepContext, spec: StepSpec = spec) -> Data:
            world.calls[ctx.step] += 1
            call = world.calls[ctx.step]
            outcome = spec.script[call - 1] if call <= len(spec.script) else "ok"
            if outcome == "biz":
                raise BusinessError(f"{ctx.step} refused")
            if outcome == "tech":
                raise ConnectionError(f"{ctx.step} call {call} failed")
            world.effects[ctx.idempotency_key] = 1  # idempotent by key
            effect_point()
            return data.model_copy(update={"trail": [*data.trail, ctx.step]})

        step = saga.step(
            name=f"s{i}", pivot=shape.pivot == i, retry=Retry(attempts=3, backoff=0, jitter=0)
        )(action)
        if spec.compensation:

            async def undo(data: Data, ctx: StepContext, spec: StepSpec = spec) -> None:
                world.calls[f"undo {ctx.step}"] += 1
                if world.calls[f"undo {ctx.step}"] <= spec.compensation_failures:
                    raise ConnectionError(f"undo {ctx.step} failed")
                world.effects[ctx.idempotency_key] = 0  # idempotent; tolerates "nothing"
                effect_point()

            step.compensate(retry=Retry(attempts=2, backoff=0, jitter=0))(undo)
    return saga


def check(shape: Shape, open_log: Callable[[], SagaLog]) -> None:
    world = World()
    saga = build(shape, world)
    counter = [0]

    async def main() -> None:
        outcome = None
        for _ in range(50):
            log = CrashingLog(open_log(), shape, world, counter)
            crashed = False
            try:
                async with Orchestrator(sagas=[saga], log=log, lease=0.05) as orch:
                    # the client retries its request until it is recorded once
                    with contextlib.suppress(ConcurrencyError):
                        await orch.start(saga, Data(), saga_id="s")
                    outcome = await orch.wait("s", poll_interval=0.001)
            except* Crash:
                crashed = True
            if not crashed:
                break
        assert outcome is not None, "still crashing after 50 generations"
        event(
            f"{outcome.status.value} after {min(world.crashes, 3)}{'+' * (world.crashes > 2)}"
            " crashes"
        )
        assert outcome.status.is_terminal
        key = "s/"
        names = [f"s{i}" for i in range(len(shape.steps))]
        async with open_log() as log:
            record = await log.get("s")
        assert record is not None
        assert record.status is outcome.status
        if outcome.status is SagaStatus.COMPLETED:
            assert {n: world.effects.get(key + n) for n in names} == {n: 1 for n in names}
            assert outcome.data.trail == names
        elif outcome.status is SagaStatus.COMPENSATED:
            for name, spec in zip(names, shape.steps, strict=True):
                if spec.compensation:
                    assert world.effects.get(key + name, 0) == 0, (name, shape, world)
        else:
            assert outcome.failure is not None
            # what it is stuck on: a compensation that gave up (kept beside the reason it
            # turned back), or the step that failed going forward
            stuck = outcome.compensation_failure or outcome.failure
            if outcome.compensation_failure is not None:
                assert record.failure == outcome.failure, "the reason it turned back is kept"
            failed = saga.get_step(stuck.step or "")
            state = record.steps[failed.name].status
            assert (
                state is StepStatus.COMPENSATION_FAILED
                or failed.kind is StepKind.RETRIABLE
                or (failed.kind is StepKind.PIVOT and state is StepStatus.STARTED)
            ), (record, shape)

    anyio.run(main)


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


@PROPERTY
@given(shapes())
def test_crashes_on_the_memory_log(shape: Shape) -> None:
    """Crash anywhere, resume from the in-memory log: the guarantees hold."""
    log = InMemorySagaLog()  # it outlives the "process", as a database would
    check(shape, lambda: log)


@PROPERTY
@given(shapes())
def test_crashes_on_the_sqlite_log(shape: Shape) -> None:
    """Crash anywhere, resume from the SQLite file: the guarantees hold."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sagas.db"
        check(shape, lambda: SQLiteSagaLog(path))
