"""A three-step remote saga and its two participant services, for the remote-step tests.

Each test builds its own copy (``ShopSetup(suffix)``) with service names of its own, so tests
on a shared broker never see each other's messages. The participants count every effect by
idempotency key in a :class:`Ledger`, so a test can show that nothing happened twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Participant, Retry, Saga, StepContext
from pysaga.messaging import Broker


class Order(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: int
    reservation_id: str | None = None
    payment_id: str | None = None
    confirmed: bool = False


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


@dataclass
class Ledger:
    """Effects applied by the participants, counted by (effect, idempotency key)."""

    effects: Counter[tuple[str, str]] = field(default_factory=Counter)
    stock: int = 1_000
    charge_failures: Counter[str] = field(default_factory=Counter)
    fail_charges: int = 0
    """Fail this many charge attempts of every order with a technical error first."""
    charge_arrived: Any = None
    """An ``anyio.Event`` set when a charge command reaches the payments service."""
    charge_gate: Any = None
    """An ``anyio.Event`` the charge handler waits for before it charges."""

    def applied(self, effect: str, key: str) -> None:
        self.effects[(effect, key)] += 1

    def repeated(self) -> list[tuple[str, str]]:
        return [effect for effect, count in self.effects.items() if count > 1]


class ShopSetup:
    """The saga and the two services, named apart with *suffix*."""

    def __init__(self, suffix: str, *, reply_timeout: float = 10.0) -> None:
        self.suffix = suffix
        self.ledger = Ledger()
        self.stock_service = f"stock-{suffix}"
        self.payments_service = f"payments-{suffix}"
        self.saga = saga = Saga(f"place-order-{suffix}", Order)
        saga.remote(
            "reserve",
            service=self.stock_service,
            command=ReserveStock,
            reply=StockReserved,
            compensation=ReleaseStock,
            retry=Retry(attempts=3, backoff=0.05),
            timeout=reply_timeout,
            compensation_timeout=reply_timeout,
        )
        saga.remote(
            "charge",
            service=self.payments_service,
            command=ChargeCard,
            reply=CardCharged,
            pivot=True,
            retry=Retry(attempts=3, backoff=0.05),
            timeout=reply_timeout,
        )

        @saga.step
        async def confirm(order: Order, ctx: StepContext) -> Order:
            return order.model_copy(update={"confirmed": True})

    def participants(
        self, broker: Broker | str, *, inbox: str = "memory://", **options: Any
    ) -> tuple[Participant, Participant]:
        ledger = self.ledger
        stock = Participant(self.stock_service, broker=broker, inbox=inbox, **options)
        payments = Participant(self.payments_service, broker=broker, inbox=inbox, **options)

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
            if cmd.qty > ledger.stock:
                raise BusinessError(f"only {ledger.stock} left of {cmd.sku}")
            ledger.stock -= cmd.qty
            ledger.applied("reserve", ctx.idempotency_key)
            return StockReserved(reservation_id=f"r-{cmd.order_id}")

        @stock.compensates(ReleaseStock)
        async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
            if ledger.effects[("reserve", ctx.idempotency_key)]:
                ledger.stock += _reserved_qty(cmd.order_id)
            ledger.applied("release", ctx.idempotency_key)

        @payments.handles(ChargeCard)
        async def charge(cmd: ChargeCard, ctx: HandlerContext) -> CardCharged:
            if ledger.charge_arrived is not None:
                ledger.charge_arrived.set()
            if ledger.charge_gate is not None:
                await ledger.charge_gate.wait()
            if ledger.charge_failures[cmd.order_id] < ledger.fail_charges:
                ledger.charge_failures[cmd.order_id] += 1
                raise ConnectionError("card processor unreachable")
            if cmd.amount > 100:
                raise BusinessError(f"card declined for {cmd.amount}")
            ledger.applied("charge", ctx.idempotency_key)
            return CardCharged(payment_id=f"p-{cmd.order_id}")

        return stock, payments


def _reserved_qty(order_id: str) -> int:
    return 1  # every test order reserves one item


def order(n: int, *, amount: int = 10) -> Order:
    return Order(order_id=f"o-{n}", sku="book", qty=1, amount=amount)
