"""Tests for the trip saga of ``first_saga.py``, on the in-memory saga log.

Put this file next to ``first_saga.py`` and run ``pytest testing_saga.py``.
"""

# --8<-- [start:fixture]
from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from first_saga import Trip, book_flight, book_trip, flights, hotels

from pysaga import EntryKind, Orchestrator, SagaStatus, StepContext, StepStatus

pytestmark = pytest.mark.anyio  # run every test in this file on an event loop


@pytest.fixture
async def orch() -> AsyncIterator[Orchestrator]:
    # "memory://" keeps the saga log in this process: nothing to set up or clean.
    async with Orchestrator(sagas=[book_trip], log="memory://") as orch:
        yield orch


def trip(price: int) -> Trip:
    return Trip(traveller="Ada", destination="Lisbon", nights=2, price=Decimal(price))
    # --8<-- [end:fixture]


# --8<-- [start:outcomes]
async def test_a_trip_within_the_card_limit_completes(orch: Orchestrator) -> None:
    outcome = await orch.run(book_trip, trip(price=500))

    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.flight is not None
    assert outcome.data.payment is not None


async def test_a_declined_card_cancels_the_flight_and_the_hotel(orch: Orchestrator) -> None:
    outcome = await orch.run(book_trip, trip(price=5000))

    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failure is not None
    assert outcome.failure.business  # a BusinessError: no retry, compensate at once
    assert outcome.failure.step == "take_payment"
    record = await orch.get(outcome.saga_id)
    assert record.steps["book_flight"].status is StepStatus.COMPENSATED
    assert record.steps["book_hotel"].status is StepStatus.COMPENSATED
    # and the services agree: nothing is left booked under this saga's keys
    assert f"{outcome.saga_id}/book_flight" not in flights.bookings
    assert f"{outcome.saga_id}/book_hotel" not in hotels.bookings
    # --8<-- [end:outcomes]


# --8<-- [start:faults]
async def test_a_flaky_hotel_service_is_retried(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_book = hotels.book
    calls = 0

    async def flaky_book(key: str, what: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("hotel service unreachable")
        return await real_book(key, what)

    monkeypatch.setattr(hotels, "book", flaky_book)

    outcome = await orch.run(book_trip, trip(price=500))

    assert outcome.status is SagaStatus.COMPLETED
    record = await orch.get(outcome.saga_id)
    assert record.steps["book_hotel"].attempts == 2
    history = await orch.history(outcome.saga_id)
    failed = [e for e in history if e.kind is EntryKind.STEP_FAILED]
    assert [(e.step, e.attempt) for e in failed] == [("book_hotel", 1)]
    assert failed[0].failure is not None
    assert failed[0].failure.type == "ConnectionError"
    # --8<-- [end:faults]


# --8<-- [start:unit]
async def test_booking_a_flight_twice_with_one_key_books_once() -> None:
    ctx = StepContext(
        saga_id="s-1",
        saga_name="book-trip",
        step="book_flight",
        attempt=1,
        idempotency_key="s-1/book_flight",
    )
    first = await book_flight(trip(price=500), ctx)  # a step is still a plain async function
    again = await book_flight(trip(price=500), ctx)

    assert first.flight is not None
    assert first.flight == again.flight
    assert flights.bookings["s-1/book_flight"] == first.flight
    # --8<-- [end:unit]
