"""Tests for the trip saga of ``first_saga.py`` and the order saga of ``remote_steps.py``, with
pysaga's test kit.

Put this file next to them and run ``pytest testing_kit.py``.
"""

# --8<-- [start:setup]
from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import pytest
from first_saga import Trip, book_flight, book_trip, flights, hotels
from remote_steps import (
    ChargeCard,
    Order,
    ReserveStock,
    charges,
    levels,
    payments,
    place_order,
    stock,
)

from pysaga import EntryKind, Retry, Saga, SagaStatus, StepContext, StepStatus
from pysaga.testing import SagaWorld, virtual_time_backend

pytestmark = pytest.mark.anyio  # run every test in this file on an event loop


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_time_backend()  # ... on virtual time: an hour-long wait takes no time


def trip(price: int = 500) -> Trip:
    return Trip(traveller="Ada", destination="Lisbon", nights=2, price=Decimal(price))
    # --8<-- [end:setup]


# --8<-- [start:world]
async def test_a_trip_within_the_card_limit_completes(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(book_trip)

    outcome = await orch.run(book_trip, trip(price=500))

    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.payment is not None
    # --8<-- [end:world]


# --8<-- [start:clock]
confirm_trip = Saga("confirm-trip", Trip)


@confirm_trip.step
async def hold_flight(trip: Trip, ctx: StepContext) -> Trip:
    flight = await flights.book(ctx.idempotency_key, f"to {trip.destination}")
    return trip.model_copy(update={"flight": flight})


@hold_flight.compensate
async def release_flight(trip: Trip, ctx: StepContext) -> None:
    await flights.cancel(ctx.idempotency_key)


@confirm_trip.step(timeout=3600.0, retry=Retry(attempts=1))  # an hour to confirm, once
async def await_confirmation(trip: Trip) -> None:
    await anyio.sleep_forever()  # this airline never answers


async def test_an_unconfirmed_flight_is_released_after_an_hour(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(confirm_trip)

    saga_id = await orch.start(confirm_trip, trip())
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPENSATED, timeout=7200)

    assert record.failure is not None
    assert record.failure.type == "TimeoutError"
    assert saga_world.clock.elapsed == 3600.0  # an hour on the test's clock, none on yours
    assert f"{saga_id}/hold_flight" not in flights.bookings
    # --8<-- [end:clock]


# --8<-- [start:fail_step]
async def test_a_flaky_hotel_service_is_retried(saga_world: SagaWorld) -> None:
    saga_world.fail_step(book_trip, "book_hotel", ConnectionError, times=2)
    orch = await saga_world.start_orchestrator(book_trip)

    outcome = await orch.run(book_trip, trip())

    assert outcome.status is SagaStatus.COMPLETED
    record = await orch.get(outcome.saga_id)
    assert record.steps["book_hotel"].attempts == 3  # two injected failures, then the real one
    # --8<-- [end:fail_step]


# --8<-- [start:crash]
async def test_a_new_orchestrator_finishes_the_trip_after_a_crash(saga_world: SagaWorld) -> None:
    # The orchestrator dies right after it wrote that the flight is booked.
    saga_world.crash_after(EntryKind.STEP_SUCCEEDED, step="book_flight")
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, trip())
    await saga_world.wait_for_crash()

    await saga_world.restart_orchestrator()  # takes over once the dead one's lease runs out
    await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED)

    assert [key for key in flights.bookings if key.startswith(saga_id)] == [
        f"{saga_id}/book_flight"  # booked once, not again by the new orchestrator
    ]
    assert f"{saga_id}/book_hotel" in hotels.bookings
    # --8<-- [end:crash]


# --8<-- [start:deliveries]
@pytest.fixture
async def shop(saga_world: SagaWorld) -> SagaWorld:
    """The stock and payments services of remote_steps.py, running in the test's world."""
    levels["book"] = 3
    charges.clear()
    await saga_world.start_participant(stock)
    await saga_world.start_participant(payments)
    await saga_world.start_orchestrator(place_order)
    return saga_world


def two_books(order_id: str = "1") -> Order:
    return Order(order_id=order_id, sku="book", qty=2, amount=Decimal("25.00"))


async def test_a_command_delivered_three_times_reserves_once(shop: SagaWorld) -> None:
    shop.faults.duplicate(ReserveStock, copies=2)  # the next ReserveStock arrives three times

    outcome = await shop.orchestrator.run(place_order, two_books())

    assert outcome.status is SagaStatus.COMPLETED
    assert levels["book"] == 1  # 3 - 2, once


async def test_a_late_payment_command_charges_once(shop: SagaWorld) -> None:
    shop.faults.delay(ChargeCard, seconds=60)  # later than the step's 30 s timeout

    outcome = await shop.orchestrator.run(place_order, two_books())
    await anyio.sleep(60)  # let the late copy arrive too

    assert outcome.status is SagaStatus.COMPLETED
    record = await shop.orchestrator.get(outcome.saga_id)
    assert record.steps["charge_card"].attempts == 2  # timed out once, so sent twice
    assert list(charges.values()) == [Decimal("25.00")]  # and charged once
    # --8<-- [end:deliveries]


# --8<-- [start:waiting]
async def test_a_saga_can_be_caught_halfway(saga_world: SagaWorld) -> None:
    orch = await saga_world.start_orchestrator(confirm_trip)
    saga_id = await orch.start(confirm_trip, trip())

    record = await saga_world.wait_for(
        saga_id, until=lambda r: "await_confirmation" in r.steps, timeout=60
    )

    assert record.status is SagaStatus.RUNNING
    assert record.steps["hold_flight"].status is StepStatus.SUCCEEDED
    # --8<-- [end:waiting]


# --8<-- [start:unit]
async def test_booking_a_flight_twice_with_one_key_books_once() -> None:
    ctx = StepContext(
        saga_id="s-1",
        saga_name="book-trip",
        step="book_flight",
        attempt=1,
        idempotency_key="s-1/book_flight",
    )
    first = await book_flight(trip(), ctx)  # a step is still a plain async function
    again = await book_flight(trip(), ctx)

    assert first.flight is not None
    assert first.flight == again.flight
    assert flights.bookings["s-1/book_flight"] == first.flight
    # --8<-- [end:unit]
