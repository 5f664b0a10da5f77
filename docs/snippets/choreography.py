"""A choreographed purchase: order, stock and payment services react to each other's events,
with no coordinator, and an observer records every purchase in the saga log.

Run it with ``python choreography.py``; it keeps its saga log in ``purchases.db``.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel

from pysaga import (
    Choreography,
    ChoreographyObserver,
    HandlerContext,
    Inspector,
    Participant,
    StepEvents,
)
from pysaga.brokers.memory import MemoryBroker


# --8<-- [start:events]
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


# --8<-- [end:events]

# --8<-- [start:flow]
purchase = Choreography(
    "purchase",
    starts=OrderCreated,
    steps={
        "reserve_stock": StepEvents(
            done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
        ),
        "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
    },
    completes=OrderCompleted,
    compensates=OrderRejected,
    deadline=30,  # seconds from its first event to its end
)
# --8<-- [end:flow]

BROKER = "memory://shop"  # "amqp://..." or "kafka://..." across processes

# --8<-- [start:services]
stock = Participant("stock", broker=BROKER, flows=[purchase])
payments = Participant("payments", broker=BROKER, flows=[purchase])
orders = Participant("orders", broker=BROKER, flows=[purchase])
shelf = {"book": 5}


@stock.on(OrderCreated)
async def reserve(event: OrderCreated, ctx: HandlerContext) -> None:
    if shelf.get(event.sku, 0) < event.qty:
        reason = f"only {shelf.get(event.sku, 0)} {event.sku} left"
        await ctx.publish(StockNotAvailable(order_id=event.order_id, reason=reason))
        return
    shelf[event.sku] -= event.qty
    await ctx.publish(StockReserved(**event.model_dump()))


@stock.on(PaymentFailed)
async def release(event: PaymentFailed, ctx: HandlerContext) -> None:
    shelf[event.sku] += event.qty  # the compensation
    await ctx.publish(StockReleased(order_id=event.order_id))


@payments.on(StockReserved)
async def charge(event: StockReserved, ctx: HandlerContext) -> None:
    if event.amount > 100:
        reason = f"card declined for {event.amount}"
        await ctx.publish(PaymentFailed(**event.model_dump(exclude={"amount"}), reason=reason))
        return
    await ctx.publish(PaymentCompleted(order_id=event.order_id))


@orders.on(PaymentCompleted)
async def complete(event: PaymentCompleted, ctx: HandlerContext) -> None:
    await ctx.publish(OrderCompleted(order_id=event.order_id))


@orders.on(StockNotAvailable)
async def reject(event: StockNotAvailable, ctx: HandlerContext) -> None:
    await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))


@orders.on(StockReleased)
async def reject_declined(event: StockReleased, ctx: HandlerContext) -> None:
    await ctx.publish(OrderRejected(order_id=event.order_id, reason="payment declined"))


# --8<-- [end:services]


async def main(log: str = "sqlite:///purchases.db") -> dict[str, str]:
    """Run three purchases; return each order's saga id."""
    # --8<-- [start:run]
    async with (
        ChoreographyObserver(purchase, log=log, broker=BROKER) as observer,
        stock,
        payments,
        orders,
        MemoryBroker("shop") as broker,
    ):
        books = [("o-1", 2, 30), ("o-2", 9, 90), ("o-3", 1, 500)]
        started = {
            order_id: await purchase.start(
                broker, OrderCreated(order_id=order_id, sku="book", qty=qty, amount=amount)
            )
            for order_id, qty, amount in books
        }
        for order_id, saga_id in started.items():
            record = await observer.log.get(saga_id)
            while record is None or not record.status.is_terminal:
                await anyio.sleep(0.01)
                record = await observer.log.get(saga_id)
            print(f"{order_id}: {record.status.value}")
        stuck = await Inspector(observer.log).stuck(no_progress_for=60)
    # --8<-- [end:run]
    print(f"stuck: {len(stuck)}, books on the shelf: {shelf['book']}")
    return started


if __name__ == "__main__":
    anyio.run(main)
