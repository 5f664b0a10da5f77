"""Step timeouts and retry backoffs are kept in the saga log, so they survive a restart.

Each test writes what a dead orchestrator left behind (a saga whose lease ran out, with a
step in flight or waiting to retry) and lets a new orchestrator resume it, on every saga log.
"""

from __future__ import annotations

import time

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    EntryKind,
    LogEntry,
    Orchestrator,
    Retry,
    Saga,
    SagaLog,
    SagaRecord,
    SagaStatus,
    StepState,
    StepStatus,
)
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio

ONCE = Retry(attempts=1)


class Parcel(BaseModel):
    parcel_id: str = "p-1"


def parcel_saga(calls: list[str], *, hang: bool = True, retry: Retry = ONCE) -> Saga[Parcel]:
    """label -> ship: shipping hangs (or returns) and has a long time limit of its own."""
    saga = Saga("parcel", Parcel)

    @saga.step()
    async def label(parcel: Parcel) -> None:
        calls.append("label")

    @label.compensate
    async def unlabel(parcel: Parcel) -> None:
        calls.append("unlabel")

    @saga.step(timeout=60, retry=retry)
    async def ship(parcel: Parcel) -> None:
        calls.append(f"ship@{time.time():.3f}")
        if hang:
            await anyio.sleep_forever()

    return saga


async def left_behind(
    log: SagaLog, ship: StepState, *, status: SagaStatus = SagaStatus.RUNNING
) -> None:
    """A saga whose orchestrator died while *ship* was in the state given."""
    now = time.time()
    await log.create(
        SagaRecord(
            saga_id="s-1",
            name="parcel",
            version=1,
            status=status,
            data=Parcel().model_dump_json(),
            steps={"label": StepState(StepStatus.SUCCEEDED, 1, 0), "ship": ship},
            owner="dead",
            lease_expires_at=now - 1,
            created_at=now,
            updated_at=now,
        ),
        [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="dead")],
    )


async def test_a_running_attempt_keeps_its_own_timer_after_a_restart(
    log_factory: LogFactory,
) -> None:
    """The step had 0.3 s left of its 60 s when its orchestrator died: the new one times it
    out then (not 60 s later), without starting a new attempt."""
    calls: list[str] = []
    due = time.time() + 0.3
    async with log_factory() as log:
        await left_behind(log, StepState(StepStatus.STARTED, 1, 0, timeout_at=due))
    with anyio.fail_after(20):  # a fresh 60 s timer would trip this
        async with Orchestrator(sagas=[parcel_saga(calls)], log=log_factory(), lease=1) as orch:
            outcome = await orch.wait("s-1")
            history = await orch.history("s-1")
    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failure is not None
    assert outcome.failure.type == "TimeoutError"
    assert [c.split("@")[0] for c in calls] == ["ship", "unlabel"]
    failed = [e for e in history if e.kind is EntryKind.STEP_FAILED]
    assert [e.attempt for e in failed] == [1]  # the same attempt, resumed
    assert failed[0].at >= due
    assert not any(e.kind is EntryKind.STEP_STARTED for e in history)


async def test_a_timer_that_ran_out_while_nobody_watched_fires_at_once(
    log_factory: LogFactory,
) -> None:
    """The step's time was up before any orchestrator came back: it counts as timed out
    (and in doubt) without being called again, and the saga turns back."""
    calls: list[str] = []
    async with log_factory() as log:
        await left_behind(log, StepState(StepStatus.STARTED, 1, 0, timeout_at=time.time() - 5))
    async with Orchestrator(sagas=[parcel_saga(calls)], log=log_factory(), lease=1) as orch:
        outcome = await orch.wait("s-1")
        ship = (await orch.get("s-1")).steps["ship"]
    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failure is not None
    assert "while no orchestrator was driving the saga" in outcome.failure.message
    assert calls == ["unlabel"]
    assert ship.status is StepStatus.STARTED  # in doubt


async def test_a_retry_waits_out_the_rest_of_its_backoff_after_a_restart(
    log_factory: LogFactory,
) -> None:
    """The first attempt failed and the retry was due 0.4 s later when the orchestrator died:
    the new one starts attempt 2 no earlier than that."""
    calls: list[str] = []
    due = time.time() + 0.4
    async with log_factory() as log:
        await left_behind(log, StepState(StepStatus.FAILED, 1, 1, retry_at=due))
    saga = parcel_saga(calls, hang=False, retry=Retry(attempts=3, backoff=30))
    async with Orchestrator(sagas=[saga], log=log_factory(), lease=1) as orch:
        outcome = await orch.wait("s-1")
        history = await orch.history("s-1")
    assert outcome.status is SagaStatus.COMPLETED
    (call,) = calls
    assert float(call.split("@")[1]) >= due - 0.01  # the loop clock may round a little
    started = [e.attempt for e in history if e.kind is EntryKind.STEP_STARTED]
    assert started == [2]


async def test_a_compensation_in_flight_keeps_its_timer(log_factory: LogFactory) -> None:
    """A compensation that had timed out while nobody watched counts as a failed attempt,
    and its retry policy decides what follows."""
    calls: list[str] = []
    saga = Saga("parcel", Parcel)

    @saga.step()
    async def label(parcel: Parcel) -> None:
        calls.append("label")

    @label.compensate(retry=Retry(attempts=3, backoff=0, jitter=0), timeout=60)
    async def unlabel(parcel: Parcel) -> None:
        calls.append("unlabel")

    @saga.step()
    async def ship(parcel: Parcel) -> None:
        calls.append("ship")

    now = time.time()
    async with log_factory() as log:
        await log.create(
            SagaRecord(
                saga_id="s-1",
                name="parcel",
                version=1,
                status=SagaStatus.COMPENSATING,
                data=Parcel().model_dump_json(),
                steps={
                    "label": StepState(StepStatus.COMPENSATING, 1, 0, timeout_at=now - 1),
                    "ship": StepState(StepStatus.FAILED, 1, 1),
                },
                owner="dead",
                lease_expires_at=now - 1,
                created_at=now,
                updated_at=now,
            ),
            [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="dead")],
        )
    async with Orchestrator(sagas=[saga], log=log_factory(), lease=1) as orch:
        outcome = await orch.wait("s-1")
        history = await orch.history("s-1")
    assert outcome.status is SagaStatus.COMPENSATED
    assert calls == ["unlabel"]
    kinds = [(e.kind, e.attempt) for e in history if e.step == "label"]
    assert kinds == [
        (EntryKind.COMPENSATION_FAILED, 1),
        (EntryKind.COMPENSATION_STARTED, 2),
        (EntryKind.COMPENSATION_SUCCEEDED, 2),
    ]


async def test_timers_are_in_the_log_while_they_run_and_gone_once_the_saga_ends(
    log_factory: LogFactory,
) -> None:
    """While a step waits, its state in the log carries its timer; when the saga ends no step
    keeps one, so nothing can fire for a finished saga."""
    gate = anyio.Event()
    saga = Saga("parcel", Parcel)

    @saga.step(timeout=60)
    async def label(parcel: Parcel) -> None:
        await gate.wait()

    @saga.step(retry=Retry(attempts=2, backoff=0, jitter=0), timeout=30)
    async def ship(parcel: Parcel) -> None:
        return None

    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        saga_id = await orch.start(saga, Parcel())
        await anyio.sleep(0.05)
        waiting = (await orch.get(saga_id)).steps["label"]
        assert waiting.status is StepStatus.STARTED
        assert waiting.timeout_at is not None
        assert time.time() + 50 < waiting.timeout_at <= time.time() + 60
        gate.set()
        outcome = await orch.wait(saga_id)
        final = await orch.get(saga_id)
    assert outcome.status is SagaStatus.COMPLETED
    assert all(s.timeout_at is None and s.retry_at is None for s in final.steps.values())
