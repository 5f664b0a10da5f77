"""Your first saga: book a trip (flight, hotel, then payment as the pivot).

Run it with ``python first_saga.py``; it writes its saga log to ``trips.db``.
"""

# --8<-- [start:imports]
from __future__ import annotations

from decimal import Decimal

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Saga, StepContext

# --8<-- [end:imports]


# --8<-- [start:services]
class BookingService:
    """Stands in for a remote service that books things, such as an airline's API.

    Like any service a saga calls, it is idempotent by key: booking twice with the same key
    returns the first booking, and cancelling what was never booked is not an error.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bookings: dict[str, str] = {}  # idempotency key -> booking reference
        self.issued = 0

    async def book(self, key: str, what: str) -> str:
        if key not in self.bookings:
            self.issued += 1
            self.bookings[key] = f"{self.prefix}-{self.issued} {what}"
        return self.bookings[key]

    async def cancel(self, key: str) -> None:
        self.bookings.pop(key, None)


class CardDeclined(Exception):
    """The payment provider refused the charge."""


class PaymentService:
    """Stands in for a payment provider: charges up to a card's limit, idempotent by key."""

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit
        self.charges: dict[str, Decimal] = {}

    async def charge(self, key: str, amount: Decimal) -> str:
        if amount > self.limit:
            raise CardDeclined(f"amount {amount} is over the card's limit")
        self.charges[key] = amount
        return f"PAY-{len(self.charges)}"


flights = BookingService("FL")
hotels = BookingService("HT")
payments = PaymentService(limit=Decimal("1000"))
outbox: list[str] = []  # the e-mails we "sent"
# --8<-- [end:services]


# --8<-- [start:data]
class Trip(BaseModel):
    traveller: str
    destination: str
    nights: int
    price: Decimal
    flight: str | None = None
    hotel: str | None = None
    payment: str | None = None


book_trip = Saga("book-trip", Trip, version=1)
# --8<-- [end:data]


# --8<-- [start:steps]
@book_trip.step
async def book_flight(trip: Trip, ctx: StepContext) -> Trip:
    flight = await flights.book(ctx.idempotency_key, f"to {trip.destination}")
    return trip.model_copy(update={"flight": flight})


@book_flight.compensate
async def cancel_flight(trip: Trip, ctx: StepContext) -> None:
    await flights.cancel(ctx.idempotency_key)  # the same key as the booking


@book_trip.step
async def book_hotel(trip: Trip, ctx: StepContext) -> Trip:
    hotel = await hotels.book(ctx.idempotency_key, f"{trip.nights} nights")
    return trip.model_copy(update={"hotel": hotel})


@book_hotel.compensate
async def cancel_hotel(trip: Trip, ctx: StepContext) -> None:
    await hotels.cancel(ctx.idempotency_key)


@book_trip.step(pivot=True)
async def take_payment(trip: Trip, ctx: StepContext) -> Trip:
    try:
        payment = await payments.charge(ctx.idempotency_key, trip.price)
    except CardDeclined as exc:
        raise BusinessError("card declined", details={"price": str(trip.price)}) from exc
    return trip.model_copy(update={"payment": payment})


@book_trip.step
async def send_itinerary(trip: Trip) -> None:
    outbox.append(f"{trip.traveller}: {trip.flight}, {trip.hotel}, paid {trip.payment}")
    # --8<-- [end:steps]


# --8<-- [start:main]
async def main(log: str = "sqlite:///trips.db") -> list[str]:
    """Book two trips, print how each ended, and return the ids of their sagas."""
    async with Orchestrator(sagas=[book_trip], log=log) as orch:
        lisbon = await orch.run(
            book_trip, Trip(traveller="Ada", destination="Lisbon", nights=3, price=Decimal(640))
        )
        print(f"Lisbon: {lisbon.status}")
        print(f"  {lisbon.data.flight} | {lisbon.data.hotel} | {lisbon.data.payment}")

        tokyo = await orch.run(
            book_trip, Trip(traveller="Ada", destination="Tokyo", nights=9, price=Decimal(3100))
        )
        print(f"Tokyo: {tokyo.status} ({tokyo.failure})")
        print(f"  flights still booked: {sorted(flights.bookings.values())}")
        print(f"  hotels still booked: {sorted(hotels.bookings.values())}")

        print("Tokyo's history:")
        for entry in await orch.history(tokyo.saga_id):
            line = f"  {entry.kind:<24} {entry.step or '':<14} {entry.attempt or ''}"
            print(line.rstrip())
    return [lisbon.saga_id, tokyo.saga_id]


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
