"""Sagas and services for the kit's tests: a trip booked with local steps, and an order whose
first two steps are remote (stock and payments services behind participants)."""

from __future__ import annotations

from collections import Counter

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Participant, Retry, Saga, StepContext

# -- a trip: local steps -----------------------------------------------------------------------


class Trip(BaseModel):
    traveller: str
    flight: str | None = None
    hotel: str | None = None
    hotel_stuck_for: float = 0.0  # seconds the hotel API hangs before answering
    declined: bool = False


class Services:
    """Stand-in services that count what each idempotency key did, net."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # step name -> calls, every attempt counted
        self.booked: dict[str, str] = {}  # idempotency key -> booking, once per key
        self.undone: Counter[str] = Counter()  # step name -> compensation calls

    def book(self, step: str, key: str) -> str:
        self.calls[step] += 1
        return self.booked.setdefault(key, f"{step}-{len(self.booked) + 1}")

    def cancel(self, step: str, key: str) -> None:
        self.undone[step] += 1
        self.booked.pop(key, None)


services = Services()

book_trip = Saga("kit-book-trip", Trip)


@book_trip.step(
    retry=Retry(attempts=3, backoff=600.0, multiplier=2.0, max_backoff=3600.0, jitter=0.0)
)
async def book_flight(trip: Trip, ctx: StepContext) -> Trip:
    return trip.model_copy(update={"flight": services.book("book_flight", ctx.idempotency_key)})


@book_flight.compensate(retry=Retry(attempts=5, backoff=60.0, jitter=0.0))
async def cancel_flight(trip: Trip, ctx: StepContext) -> None:
    services.cancel("book_flight", ctx.idempotency_key)


@book_trip.step(timeout=3600.0, retry=Retry(attempts=1))  # one hour, one attempt
async def book_hotel(trip: Trip, ctx: StepContext) -> Trip:
    if trip.hotel_stuck_for:
        await anyio.sleep(trip.hotel_stuck_for)
    return trip.model_copy(update={"hotel": services.book("book_hotel", ctx.idempotency_key)})


@book_hotel.compensate
async def cancel_hotel(trip: Trip, ctx: StepContext) -> None:
    services.cancel("book_hotel", ctx.idempotency_key)


@book_trip.step(pivot=True)
async def take_payment(trip: Trip, ctx: StepContext) -> None:
    services.calls["take_payment"] += 1
    if trip.declined:
        raise BusinessError("card declined")


# -- a saga with a deadline --------------------------------------------------------------------

late_trip = Saga("kit-late-trip", Trip, deadline=3600.0)  # one hour to reach the pivot


@late_trip.step
async def hold_seat(trip: Trip, ctx: StepContext) -> Trip:
    await anyio.sleep(2 * 3600.0)  # the airline takes two hours to answer
    return trip.model_copy(update={"flight": services.book("hold_seat", ctx.idempotency_key)})


@hold_seat.compensate
async def release_seat(trip: Trip, ctx: StepContext) -> None:
    services.cancel("hold_seat", ctx.idempotency_key)


@late_trip.step(pivot=True)
async def issue_ticket(trip: Trip) -> None:
    pass


# -- an order: remote steps --------------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: int
    reservation_id: str | None = None
    payment_id: str | None = None


class ReserveStock(BaseModel):
    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    reservation_id: str


class ReleaseStock(BaseModel):
    order_id: str


class ChargeCard(BaseModel):
    order_id: str
    amount: int


class CardCharged(BaseModel):
    payment_id: str


place_order = Saga("kit-place-order", Order)
place_order.remote(
    "reserve_stock",
    service="stock",
    command=ReserveStock,
    reply=StockReserved,
    compensation=ReleaseStock,
    timeout=30.0,
)
place_order.remote(
    "charge_card",
    service="payments",
    command=ChargeCard,
    reply=CardCharged,
    pivot=True,
    timeout=30.0,
)


class Shop:
    """The two services' state: stock levels, reservations and charges, and how many times
    each handler ran."""

    def __init__(self, stock: int = 10) -> None:
        self.levels = {"book": stock}
        self.reservations: dict[str, int] = {}
        self.charges: dict[str, int] = {}
        self.handled: Counter[str] = Counter()

    def participants(self) -> tuple[Participant, Participant]:
        """The stock and payments services (no broker yet: a world points them at its own)."""
        stock = Participant("stock")
        payments = Participant("payments")

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
            self.handled["reserve"] += 1
            if self.levels[cmd.sku] < cmd.qty:
                raise BusinessError(f"only {self.levels[cmd.sku]} left")
            self.levels[cmd.sku] -= cmd.qty
            self.reservations[cmd.order_id] = cmd.qty
            return StockReserved(reservation_id=f"r-{cmd.order_id}")

        @stock.compensates(ReleaseStock)
        async def release(cmd: ReleaseStock) -> None:
            self.handled["release"] += 1
            qty = self.reservations.pop(cmd.order_id, 0)
            self.levels["book"] += qty

        @payments.handles(ChargeCard)
        async def charge(cmd: ChargeCard) -> CardCharged:
            self.handled["charge"] += 1
            if cmd.amount > 100:
                raise BusinessError("card declined")
            self.charges[cmd.order_id] = cmd.amount
            return CardCharged(payment_id=f"p-{cmd.order_id}")

        return stock, payments
