"""The transactional outbox: a stock service whose own writes, inbox record, reply and events
commit in one PostgreSQL transaction.

Run it with ``python outbox.py postgresql://user@host:5432/database``; it writes to the schema
``outbox_demo`` of that database.
"""

from __future__ import annotations

import sys

import anyio
import asyncpg
from pydantic import BaseModel

from pysaga import BusinessError, Envelope, HandlerContext, Orchestrator, Participant, Saga
from pysaga.brokers.memory import MemoryBroker


class Order(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: int
    reservation_id: str | None = None


class ReserveStock(BaseModel):
    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    reservation_id: str


class ReleaseStock(BaseModel):
    order_id: str


class StockLevel(BaseModel):
    """An event: how many of a product are left."""

    sku: str
    level: int


# --8<-- [start:tables]
TABLES = """
CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, level integer NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (key text PRIMARY KEY, sku text NOT NULL, qty integer);
"""
# --8<-- [end:tables]


# --8<-- [start:service]
def stock_service(database: str) -> Participant:
    stock = Participant("stock", inbox=database)  # a PostgreSQL inbox: transactional

    @stock.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
        db = ctx.transaction  # the connection this command's transaction runs on
        level = await db.fetchval(
            "UPDATE stock SET level = level - $2 WHERE sku = $1 AND level >= $2 RETURNING level",
            cmd.sku,
            cmd.qty,
        )
        if level is None:
            raise BusinessError(f"not enough {cmd.sku}")
        await db.execute(
            "INSERT INTO reservations VALUES ($1, $2, $3)", ctx.idempotency_key, cmd.sku, cmd.qty
        )
        await ctx.publish("stock-levels", StockLevel(sku=cmd.sku, level=level))
        return StockReserved(reservation_id=ctx.idempotency_key)

    @stock.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        db = ctx.transaction
        taken = await db.fetchrow(
            "DELETE FROM reservations WHERE key = $1 RETURNING sku, qty", ctx.idempotency_key
        )
        if taken is None:  # the command never took effect: nothing to undo
            return
        level = await db.fetchval(
            "UPDATE stock SET level = level + $2 WHERE sku = $1 RETURNING level", *taken
        )
        await ctx.publish("stock-levels", StockLevel(sku=taken["sku"], level=level))

    return stock


# --8<-- [end:service]


place_order = Saga("place-order", Order)
place_order.remote(
    "reserve_stock",
    service="stock",
    command=ReserveStock,
    reply=StockReserved,
    compensation=ReleaseStock,
)


@place_order.step(pivot=True)
async def charge_card(order: Order) -> Order:
    if order.amount > 100:
        raise BusinessError("card declined")
    return order


# --8<-- [start:main]
async def main(dsn: str, schema: str = "outbox_demo") -> list[int]:
    """Three orders, every command delivered twice; returns the stock levels published."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema};")
    await conn.execute(TABLES + "INSERT INTO stock VALUES ('book', 5) ON CONFLICT DO NOTHING;")
    levels: list[int] = []
    published = anyio.Event()

    async def on_level(envelope: Envelope) -> None:
        levels.append(envelope.parse(StockLevel).level)
        if len(levels) == 3:
            published.set()

    async with MemoryBroker("outbox-demo") as broker:
        broker.faults.duplicate(ReserveStock, times=10)  # the broker delivers them twice
        await broker.subscribe("stock-levels", on_level)
        stock = stock_service(f"{dsn}?schema={schema}")
        stock.broker = broker
        async with stock, Orchestrator(sagas=[place_order], log="memory://", broker=broker) as orch:
            for order_id, qty, amount in (("o-1", 2, 30), ("o-2", 1, 500), ("o-3", 9, 20)):
                order = Order(order_id=order_id, sku="book", qty=qty, amount=amount)
                outcome = await orch.run(place_order, order)
                reason = f" ({outcome.failure.message})" if outcome.failure else ""
                print(f"order {order_id}: {outcome.status}{reason}")
            with anyio.fail_after(10):
                await published.wait()
    print(f"stock levels published: {levels}")
    left = await conn.fetchval("SELECT level FROM stock WHERE sku = 'book'")
    reserved = await conn.fetchval("SELECT count(*) FROM reservations")
    waiting = await conn.fetchval("SELECT count(*) FROM pysaga_outbox")
    print(f"book: {left} left, {reserved} reservation, {waiting} messages in the outbox")
    await conn.close()
    return levels


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
# --8<-- [end:main]
