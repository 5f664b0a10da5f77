"""A choreographed purchase, as in the sample this project answers: order, stock and payment
services that each react to the previous one's event, with no coordinator.

OrderCreated -> StockReserved | StockNotAvailable -> PaymentCompleted | PaymentFailed
-> OrderCompleted | (StockReleased ->) OrderRejected.

Each test builds its own copy (``Purchase(suffix)``): the flow's name carries the suffix, so
its destinations are the test's own on a shared broker. The services count every effect by
saga id in a :class:`Ledger`, so a test can show that nothing happened twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel

from pysaga import (
    Choreography,
    HandlerContext,
    Participant,
    SagaLog,
    SagaRecord,
    SagaStatus,
    StepEvents,
)
from pysaga.messaging import Broker


class OrderCreated(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: int


class StockReserved(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: int


class StockNotAvailable(BaseModel):
    order_id: str
    reason: str


class PaymentCompleted(BaseModel):
    order_id: str


class PaymentFailed(BaseModel):
    order_id: str
    sku: str
    qty: int
    reason: str


class StockReleased(BaseModel):
    order_id: str


class OrderCompleted(BaseModel):
    order_id: str


class OrderRejected(BaseModel):
    order_id: str
    reason: str


def declare(name: str, *, deadline: float = 30.0) -> Choreography:
    return Choreography(
        name,
        starts=OrderCreated,
        steps={
            "reserve_stock": StepEvents(
                done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
            ),
            "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
        },
        completes=OrderCompleted,
        compensates=OrderRejected,
        deadline=deadline,
    )


@dataclass
class Ledger:
    """What the services did, counted by (effect, saga id)."""

    stock: int = 1_000
    card_limit: int = 500
    effects: Counter[tuple[str, str]] = field(default_factory=Counter)
    orders: dict[str, str] = field(default_factory=dict)
    charge_gate: anyio.Event | None = None
    """If set, the payment service waits for it before it answers a reservation."""
    reject_gate: anyio.Event | None = None
    """If set, the order service waits for it before it rejects an order."""

    def applied(self, effect: str, saga_id: str) -> None:
        self.effects[(effect, saga_id)] += 1

    def count(self, effect: str, saga_id: str) -> int:
        return self.effects[(effect, saga_id)]

    def repeated(self) -> list[tuple[str, str]]:
        return [effect for effect, n in self.effects.items() if n > 1]


class Purchase:
    """The flow and its three services, named apart with *suffix*."""

    def __init__(self, suffix: str, *, deadline: float = 30.0) -> None:
        self.suffix = suffix
        self.flow = declare(f"purchase-{suffix}", deadline=deadline)
        self.ledger = Ledger()

    def services(
        self, broker: Broker | str, *, inbox: str = "memory://", **options: Any
    ) -> tuple[Participant, Participant, Participant]:
        """The order, stock and payment services (not entered)."""
        flow, ledger = self.flow, self.ledger
        orders = Participant(
            f"orders-{self.suffix}", broker=broker, inbox=inbox, flows=[flow], **options
        )
        stock = Participant(
            f"stock-{self.suffix}", broker=broker, inbox=inbox, flows=[flow], **options
        )
        payments = Participant(
            f"payments-{self.suffix}", broker=broker, inbox=inbox, flows=[flow], **options
        )

        @stock.on(OrderCreated)
        async def reserve(event: OrderCreated, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            if event.qty > ledger.stock:
                await ctx.publish(
                    StockNotAvailable(
                        order_id=event.order_id, reason=f"only {ledger.stock} of {event.sku}"
                    )
                )
                return
            ledger.stock -= event.qty
            ledger.applied("reserve", ctx.saga_id)
            await ctx.publish(StockReserved(**event.model_dump()))

        @stock.on(PaymentFailed)
        async def release(event: PaymentFailed, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            ledger.stock += event.qty
            ledger.applied("release", ctx.saga_id)
            await ctx.publish(StockReleased(order_id=event.order_id))

        @payments.on(StockReserved)
        async def charge(event: StockReserved, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            if ledger.charge_gate is not None:
                await ledger.charge_gate.wait()
            if event.amount > ledger.card_limit:
                await ctx.publish(
                    PaymentFailed(
                        order_id=event.order_id,
                        sku=event.sku,
                        qty=event.qty,
                        reason=f"card declined: {event.amount} is over the limit",
                    )
                )
                return
            ledger.applied("charge", ctx.saga_id)
            await ctx.publish(PaymentCompleted(order_id=event.order_id))

        @orders.on(PaymentCompleted)
        async def complete(event: PaymentCompleted, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            ledger.orders[ctx.saga_id] = "completed"
            ledger.applied("complete", ctx.saga_id)
            await ctx.publish(OrderCompleted(order_id=event.order_id))

        @orders.on(StockNotAvailable)
        async def reject_no_stock(event: StockNotAvailable, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            ledger.orders[ctx.saga_id] = "rejected"
            ledger.applied("reject", ctx.saga_id)
            await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))

        @orders.on(StockReleased)
        async def reject_declined(event: StockReleased, ctx: HandlerContext) -> None:
            assert ctx.saga_id is not None
            if ledger.reject_gate is not None:
                await ledger.reject_gate.wait()
            ledger.orders[ctx.saga_id] = "rejected"
            ledger.applied("reject", ctx.saga_id)
            await ctx.publish(OrderRejected(order_id=event.order_id, reason="payment declined"))

        return orders, stock, payments


WAIT = 30.0
"""Seconds a test waits for the background work it expects before it fails (not a bound on
how long that work may take: a healthy run takes a fraction of it)."""


def order(n: int, *, qty: int = 1, amount: int = 100) -> OrderCreated:
    return OrderCreated(order_id=f"o-{n}", sku="sku-1", qty=qty, amount=amount)


async def wait_until_ended(log: SagaLog, saga_id: str) -> SagaRecord:
    """The saga's record once its status has ended (the observer works in the background)."""
    with anyio.fail_after(WAIT):
        while True:
            record = await log.get(saga_id)
            if record is not None and record.status.is_terminal:
                return record
            await anyio.sleep(0.02)


async def wait_for(log: SagaLog, saga_id: str, status: SagaStatus) -> SagaRecord:
    with anyio.fail_after(WAIT):
        while True:
            record = await log.get(saga_id)
            if record is not None and record.status is status:
                return record
            await anyio.sleep(0.02)


async def wait_history(log: SagaLog, saga_id: str, entries: int) -> list[Any]:
    """The saga's history once it holds at least *entries* entries."""
    with anyio.fail_after(WAIT):
        while True:
            history = await log.history(saga_id)
            if len(history) >= entries:
                return history
            await anyio.sleep(0.02)
