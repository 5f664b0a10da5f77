"""Fault injection: failing steps, orchestrators crashing after a given log write and resumed
by another, and broker deliveries dropped, duplicated, delayed or reordered; each time the
saga still ends as it should, with every effect once."""

from __future__ import annotations

import pytest

from pysaga import BusinessError, EntryKind, SagaStatus, StepStatus
from pysaga.testing import SagaWorld, SimulatedCrash

from .sagas import (
    ChargeCard,
    Order,
    ReserveStock,
    Shop,
    Trip,
    book_flight,
    book_trip,
    place_order,
    services,
)

pytestmark = pytest.mark.anyio


# -- failing steps -----------------------------------------------------------------------------


async def test_a_step_fails_its_first_attempts_then_succeeds(saga_world: SagaWorld) -> None:
    saga_world.fail_step(book_trip, "book_flight", TimeoutError("airline slow"), times=2)
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada"))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=7200.0)

    assert record.steps["book_flight"].attempts == 3
    assert record.steps["book_flight"].failures == 2
    failed = [e for e in await orch.history(saga_id) if e.kind is EntryKind.STEP_FAILED]
    assert [(e.attempt, e.failure.type if e.failure else None) for e in failed] == [
        (1, "TimeoutError"),
        (2, "TimeoutError"),
    ]
    assert services.calls["book_flight"] == 1


async def test_an_injected_business_error_compensates_at_once(saga_world: SagaWorld) -> None:
    saga_world.fail_step(book_trip, "book_hotel", BusinessError("no rooms"))
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada"))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPENSATED)

    assert record.failure is not None
    assert record.failure.business
    assert record.steps["book_hotel"].attempts == 1
    assert record.steps["book_flight"].status is StepStatus.COMPENSATED
    assert services.booked == {}


async def test_only_the_named_saga_fails(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    unlucky = "trip-unlucky"
    saga_world.fail_step(book_trip, "book_hotel", BusinessError("no rooms"), saga_id=unlucky)
    await orch.start(book_trip, Trip(traveller="Ada"), saga_id=unlucky)
    lucky = await orch.start(book_trip, Trip(traveller="Bo"))

    await saga_world.wait_for(unlucky, status=SagaStatus.COMPENSATED)
    await saga_world.wait_for(lucky, status=SagaStatus.COMPLETED)


async def test_a_failing_compensation_is_retried(saga_world: SagaWorld) -> None:
    saga_world.fail_step(book_trip, "book_flight", ConnectionError, times=2, compensation=True)
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", declined=True))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPENSATED, timeout=3600.0)

    assert record.steps["book_flight"].attempts == 3  # compensation attempts, once turning back
    assert services.undone["book_flight"] == 1
    assert services.booked == {}


async def test_failing_a_step_leaves_its_code_as_declared() -> None:
    """The kit injects failures through an interceptor: the step objects are never rewritten,
    so nothing needs putting back and a step shared by two worlds is not disturbed."""
    action = book_flight.action
    compensation = book_flight.compensation
    async with SagaWorld() as world:
        world.fail_step(book_trip, "book_flight")
        world.fail_step(book_trip, "book_flight", compensation=True)
        assert book_flight.action is action
        assert book_flight.compensation is compensation
    assert book_flight.action is action
    assert book_flight.compensation is compensation


async def test_fail_step_refuses_what_it_cannot_do(saga_world: SagaWorld) -> None:
    with pytest.raises(KeyError):
        saga_world.fail_step(book_trip, "no_such_step")
    with pytest.raises(ValueError, match="has no compensation"):
        saga_world.fail_step(book_trip, "take_payment", compensation=True)
    with pytest.raises(ValueError, match="at least 1"):
        saga_world.fail_step(book_trip, "book_flight", times=0)


# -- crashes -----------------------------------------------------------------------------------


async def test_crash_after_a_step_then_a_new_orchestrator_finishes_the_saga(
    saga_world: SagaWorld,
) -> None:
    """The orchestrator dies right after the flight's success (and the hotel's intent) is
    written; a restarted one claims the saga when the lease runs out and finishes it without
    booking the flight again."""
    saga_world.crash_after(EntryKind.STEP_SUCCEEDED, step="book_flight")
    first = await saga_world.start_orchestrator(book_trip)
    saga_id = await first.start(book_trip, Trip(traveller="Ada"))
    crash = await saga_world.wait_for_crash()
    assert (crash.owner, crash.saga_id) == (first.owner, saga_id)
    assert crash.entry is not None
    assert (crash.entry.kind, crash.entry.step) == (EntryKind.STEP_STARTED, "book_hotel")
    assert [c.owner for c in saga_world.crashes] == [first.owner]
    assert services.calls["book_hotel"] == 0  # it died before acting on its write

    second = await saga_world.restart_orchestrator()
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED)

    assert record.owner == second.owner
    history = await second.history(saga_id)
    claimed = [e for e in history if e.kind is EntryKind.SAGA_CLAIMED]
    assert [e.owner for e in claimed] == [second.owner]
    assert claimed[0].at - history[0].at >= first.lease  # it waited out the dead one's lease
    assert services.calls["book_flight"] == 1
    assert services.calls["book_hotel"] == 1
    assert saga_world.orchestrator is second


async def test_crash_after_an_intent_leaves_the_step_in_doubt_and_it_runs_once(
    saga_world: SagaWorld,
) -> None:
    """Dying after the hotel's intent: the resumed saga runs the hotel step again with the
    same idempotency key, so the booking exists once."""
    saga_world.crash_after(EntryKind.STEP_STARTED, step="book_hotel")
    await saga_world.start_orchestrator(book_trip)
    saga_id = await saga_world.orchestrator.start(book_trip, Trip(traveller="Ada"))
    await saga_world.wait_for(saga_id, until=lambda r: "book_hotel" in r.steps)
    await saga_world.restart_orchestrator()
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED)

    assert list(services.booked) == [f"{saga_id}/book_flight", f"{saga_id}/book_hotel"]


async def test_crash_while_compensating_then_resumed(saga_world: SagaWorld) -> None:
    saga_world.crash_after(EntryKind.COMPENSATION_STARTED, step="book_flight")
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada", declined=True))
    await saga_world.wait_for_crash()
    assert (await orch.get(saga_id)).status is SagaStatus.COMPENSATING

    await saga_world.restart_orchestrator()
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPENSATED)
    assert services.booked == {}


async def test_run_in_the_test_task_sees_the_crash(saga_world: SagaWorld) -> None:
    """orch.run() drives the saga in the caller's task, so the caller gets the crash."""
    saga_world.crash_after(EntryKind.SAGA_STARTED)
    orch = await saga_world.start_orchestrator(book_trip)
    with pytest.raises(SimulatedCrash, match="restart_orchestrator"):
        await orch.run(book_trip, Trip(traveller="Ada"), saga_id="trip-1")
    await saga_world.restart_orchestrator()
    await saga_world.wait_for("trip-1", status=SagaStatus.COMPLETED)


async def test_waiting_for_a_crash_that_does_not_come_names_the_rule(
    saga_world: SagaWorld,
) -> None:
    saga_world.crash_after(EntryKind.STEP_SUCCEEDED, step="take_payment")
    orch = await saga_world.start_orchestrator(book_trip)
    await orch.start(book_trip, Trip(traveller="Ada", declined=True))  # never gets there
    with pytest.raises(AssertionError, match="step_succeeded of step 'take_payment'"):
        await saga_world.wait_for_crash(timeout=600.0)


async def test_a_crashed_orchestrator_writes_nothing_more(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)
    await saga_world.crash_orchestrator()
    with pytest.raises(SimulatedCrash, match="has crashed"):
        await saga_world.log.renew(orch.owner, until=0.0)


# -- remote steps and broker faults ------------------------------------------------------------


async def shop_world(world: SagaWorld) -> Shop:
    shop = Shop()
    for participant in shop.participants():
        await world.start_participant(participant)
    await world.start_orchestrator(place_order)
    return shop


def order(n: int, amount: int = 10) -> Order:
    return Order(order_id=f"o-{n}", sku="book", qty=1, amount=amount)


async def test_a_remote_step_fails_before_its_command_is_sent(saga_world: SagaWorld) -> None:
    """Failing a remote step's first attempt sends no command for it: the participant
    handles the retry's command only, once."""
    shop = await shop_world(saga_world)
    saga_world.fail_step(place_order, "reserve_stock", ConnectionError("link down"), times=1)
    saga_id = await saga_world.orchestrator.start(place_order, order(1))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=600.0)

    assert record.steps["reserve_stock"].attempts == 2
    assert record.steps["reserve_stock"].failures == 1
    assert shop.handled == {"reserve": 1, "charge": 1}
    assert shop.levels["book"] == 9


async def test_duplicated_commands_have_their_effect_once(saga_world: SagaWorld) -> None:
    shop = await shop_world(saga_world)
    saga_world.faults.duplicate(ReserveStock, copies=2)
    saga_world.faults.duplicate(ChargeCard, copies=1)
    saga_id = await saga_world.orchestrator.start(place_order, order(1))
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED)

    assert [f[0] for f in saga_world.faults.fired] == ["duplicate", "duplicate"]
    assert shop.handled == {"reserve": 1, "charge": 1}
    assert shop.levels["book"] == 9
    assert shop.charges == {"o-1": 10}


async def test_reordered_commands_still_give_each_effect_once(saga_world: SagaWorld) -> None:
    shop = await shop_world(saga_world)
    saga_world.faults.reorder(ReserveStock, hold=5.0)
    first = await saga_world.orchestrator.start(place_order, order(1))
    second = await saga_world.orchestrator.start(place_order, order(2))
    await saga_world.wait_for(first, status=SagaStatus.COMPLETED)
    await saga_world.wait_for(second, status=SagaStatus.COMPLETED)

    assert [(action, where) for action, where, _ in saga_world.faults.fired] == [
        ("reorder", "stock")
    ]
    assert list(shop.reservations) == ["o-2", "o-1"]  # the second order's command went first
    assert shop.handled == {"reserve": 2, "charge": 2}
    assert shop.levels["book"] == 8


async def test_a_command_delayed_past_its_timeout_is_sent_again_and_applied_once(
    saga_world: SagaWorld,
) -> None:
    shop = await shop_world(saga_world)
    saga_world.faults.delay(ChargeCard, seconds=45.0)  # the step waits 30 s for its reply
    saga_id = await saga_world.orchestrator.start(place_order, order(1))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=600.0)

    assert record.steps["charge_card"].attempts == 2
    assert shop.handled["charge"] == 1  # the late copy is answered from the inbox
    assert shop.charges == {"o-1": 10}


async def test_a_dropped_command_is_sent_again(saga_world: SagaWorld) -> None:
    shop = await shop_world(saga_world)
    saga_world.faults.drop(ReserveStock)
    saga_id = await saga_world.orchestrator.start(place_order, order(1))
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=600.0)
    assert shop.handled == {"reserve": 1, "charge": 1}


async def test_an_orchestrator_dying_while_a_command_is_out(saga_world: SagaWorld) -> None:
    """The payment command is on its way when the orchestrator dies; the new one sends it
    again under the same message id, and the card is charged once."""
    shop = await shop_world(saga_world)
    saga_world.faults.delay(ChargeCard, seconds=20.0)
    saga_id = await saga_world.orchestrator.start(place_order, order(1))
    await saga_world.wait_for(saga_id, until=lambda r: "charge_card" in r.steps)
    await saga_world.crash_orchestrator()
    await saga_world.restart_orchestrator()
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=600.0)

    assert shop.handled == {"reserve": 1, "charge": 1}
    assert shop.charges == {"o-1": 10}


async def test_a_refused_payment_releases_the_stock_once(saga_world: SagaWorld) -> None:
    shop = await shop_world(saga_world)
    saga_world.faults.duplicate(ChargeCard, copies=2)
    saga_id = await saga_world.orchestrator.start(place_order, order(1, amount=500))
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPENSATED)
    assert shop.levels["book"] == 10
    assert shop.handled == {"reserve": 1, "charge": 1, "release": 1}
