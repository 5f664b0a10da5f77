"""Waiting helpers: wait_for returns the saga's record when it gets there, and fails with the
saga's timeline when it does not."""

from __future__ import annotations

import re

import anyio
import pytest

from pysaga import EntryKind, Failure, LogEntry, SagaStatus, SagaUpdate, StepStatus
from pysaga.testing import SagaWorld

from .sagas import Trip, book_trip

pytestmark = pytest.mark.anyio


async def test_wait_for_an_end_of_any_kind(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", declined=True))
    record = await saga_world.wait_for(saga_id)
    assert record.status is SagaStatus.COMPENSATED


async def test_wait_for_one_of_several_statuses(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada"))
    record = await saga_world.wait_for(
        saga_id, status={SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    )
    assert record.status is SagaStatus.COMPLETED


async def test_wait_for_a_condition_on_the_record(saga_world: SagaWorld) -> None:
    """A condition catches the saga in the middle: here while the hotel step hangs."""
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", hotel_stuck_for=600.0))
    record = await saga_world.wait_for(
        saga_id,
        status=SagaStatus.RUNNING,
        until=lambda r: "book_hotel" in r.steps,
    )
    assert record.steps["book_hotel"].status is StepStatus.STARTED
    assert record.steps["book_flight"].status is StepStatus.SUCCEEDED


async def test_a_saga_that_does_not_get_there_in_time_fails_with_its_timeline(
    saga_world: SagaWorld,
) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", hotel_stuck_for=600.0))

    with pytest.raises(AssertionError) as caught:
        await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=5.0)

    message = str(caught.value)
    assert f"saga {saga_id!r}: it did not get to completed within 5 s of virtual time" in message
    assert "it is running" in message
    assert re.search(r"book_hotel +started +attempts 1", message)  # the steps table
    assert "step_started book_hotel #1" in message  # the timeline
    assert saga_world.clock.elapsed == pytest.approx(5.0)


async def test_a_saga_that_ended_otherwise_fails_at_once(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", declined=True))

    with pytest.raises(AssertionError, match="it ended compensated instead of completed") as e:
        await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=3600.0)
    assert "card declined" in str(e.value)
    assert saga_world.clock.elapsed < 60.0  # no need to wait the hour: it will not change


async def test_an_unknown_saga_is_named_in_the_failure(saga_world: SagaWorld) -> None:
    with pytest.raises(AssertionError, match="it is not in the world's log"):
        await saga_world.wait_for("no-such-saga", timeout=1.0)


async def test_the_failure_names_the_crashes(saga_world: SagaWorld) -> None:
    saga_world.crash_after(EntryKind.STEP_SUCCEEDED, step="book_flight")
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada"))
    with pytest.raises(AssertionError, match=f"crashed: {orch.owner} after writing") as e:
        await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=5.0)
    assert "step_succeeded book_flight #1" in str(e.value)


async def test_timeline_and_inspector_read_the_worlds_log_on_its_clock(
    saga_world: SagaWorld,
) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", hotel_stuck_for=3000.0))
    await saga_world.wait_for(saga_id, until=lambda r: "book_hotel" in r.steps)
    saga_world.clock.advance(1200.0)  # twenty minutes without a write

    stuck = await saga_world.inspector().stuck(no_progress_for=600.0)
    assert [r.saga_id for r in stuck] == [saga_id]
    text = await saga_world.timeline(saga_id)
    assert text.startswith(f"saga {saga_id}: kit-book-trip v1, running")


async def test_an_operators_write_wakes_the_wait(saga_world: SagaWorld) -> None:
    """A write that bypasses the lease (an operator's) wakes wait_for at once too."""
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", hotel_stuck_for=600.0))
    record = await saga_world.wait_for(saga_id, until=lambda r: "book_hotel" in r.steps)
    note = Failure(step=None, type="OperatorNote", message="looked at it")

    async def intervene() -> None:
        await anyio.sleep(0.5)
        update = SagaUpdate(entries=[LogEntry(EntryKind.SAGA_COMPENSATING, at=0.0)], failure=note)
        await saga_world.log.intervene(saga_id, update, revision=record.revision)

    async with anyio.create_task_group() as tg:
        tg.start_soon(intervene)
        found = await saga_world.wait_for(saga_id, until=lambda r: r.failure == note, timeout=1)
    assert found.failure == note
