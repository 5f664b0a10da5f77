"""The place-order saga of ``remote_steps.py`` (its messages and declaration, copied
unchanged), as separate processes: a stock service and a payments service, each keeping its
data in PostgreSQL, and orchestrators that share one PostgreSQL saga log, all over RabbitMQ.

    python going_distributed.py setup        BROKER DATABASE     (once: the services' tables)
    python going_distributed.py stock        BROKER DATABASE
    python going_distributed.py payments     BROKER DATABASE
    python going_distributed.py orchestrator BROKER DATABASE     (as many as you like)
    python going_distributed.py place        BROKER DATABASE

``BROKER`` is an ``amqp://`` (or ``kafka://``) URL, ``DATABASE`` a ``postgresql://`` one. The
first three run until stopped (Ctrl-C); ``place`` places three orders and prints what became
of them.
"""

# --8<-- [start:imports]
from __future__ import annotations

import sys
from decimal import Decimal

import anyio
import asyncpg
from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Orchestrator, Participant, Saga

# --8<-- [end:imports]


# --8<-- [start:messages]
class Order(BaseModel):
    """The saga's data."""

    order_id: str
    sku: str
    qty: int
    amount: Decimal
    reservation_id: str | None = None
    payment_id: str | None = None


class ReserveStock(BaseModel):
    """Command to the stock service."""

    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    """Its reply."""

    reservation_id: str


class ReleaseStock(BaseModel):
    """Undoes a reservation."""

    order_id: str


class ChargeCard(BaseModel):
    """Command to the payments service."""

    order_id: str
    amount: Decimal


class CardCharged(BaseModel):
    """Its reply."""

    payment_id: str


# --8<-- [end:messages]


# --8<-- [start:saga]
place_order = Saga("place-order", Order)

place_order.remote(
    "reserve_stock",
    service="stock",
    command=ReserveStock,  # built from Order's fields of the same names
    reply=StockReserved,  # its reservation_id is copied into Order
    compensation=ReleaseStock,
    timeout=5,
)
place_order.remote(
    "charge_card",
    service="payments",
    command=ChargeCard,
    reply=CardCharged,
    pivot=True,
)
# --8<-- [end:saga]


# --8<-- [start:stock]
def stock_service(broker: str, database: str) -> Participant:
    """The stock service: its levels and reservations are rows in its own tables."""
    stock = Participant("stock", broker=broker, inbox=database)

    @stock.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
        db = ctx.transaction  # commits with the inbox record and the reply, or not at all
        left = await db.fetchval(
            "UPDATE levels SET qty = qty - $2 WHERE sku = $1 AND qty >= $2 RETURNING qty",
            cmd.sku,
            cmd.qty,
        )
        if left is None:
            raise BusinessError(f"not enough {cmd.sku} left")
        await db.execute(
            "INSERT INTO reservations VALUES ($1, $2, $3)", ctx.idempotency_key, cmd.sku, cmd.qty
        )
        return StockReserved(reservation_id=f"R-{cmd.order_id}")

    @stock.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        db = ctx.transaction
        row = await db.fetchrow(
            "DELETE FROM reservations WHERE key = $1 RETURNING sku, qty", ctx.idempotency_key
        )
        if row is not None:  # nothing to undo if the reservation never happened
            await db.execute("UPDATE levels SET qty = qty + $2 WHERE sku = $1", *row)

    return stock


# --8<-- [end:stock]


# --8<-- [start:payments]
def payments_service(broker: str, database: str) -> Participant:
    """The payments service: every charge is a row in its own table."""
    payments = Participant("payments", broker=broker, inbox=database)

    @payments.handles(ChargeCard)
    async def charge(cmd: ChargeCard, ctx: HandlerContext) -> CardCharged:
        if cmd.amount > 100:
            raise BusinessError(f"card declined for {cmd.amount}")
        await ctx.transaction.execute(
            "INSERT INTO charges VALUES ($1, $2)", ctx.idempotency_key, cmd.amount
        )
        return CardCharged(payment_id=f"P-{cmd.order_id}")

    return payments


# --8<-- [end:payments]


# --8<-- [start:setup]
TABLES = """
CREATE TABLE IF NOT EXISTS levels (sku text PRIMARY KEY, qty integer NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (key text PRIMARY KEY, sku text, qty integer);
CREATE TABLE IF NOT EXISTS charges (key text PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO levels VALUES ('book', 3) ON CONFLICT DO NOTHING;
"""


async def setup(database: str) -> None:
    """Create the services' tables (your migrations would do this)."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(TABLES)
    finally:
        await conn.close()


async def serve(service: Participant) -> None:
    async with service:
        print(f"{service.service} ready", flush=True)
        await anyio.sleep_forever()


# --8<-- [end:setup]


# --8<-- [start:orchestrator]
async def orchestrator(broker: str, database: str) -> None:
    """An orchestrator: runs, and takes over, the sagas of the log it shares."""
    async with Orchestrator(sagas=[place_order], log=database, broker=broker, lease=5):
        print("orchestrator ready", flush=True)
        await anyio.sleep_forever()


# --8<-- [end:orchestrator]


# --8<-- [start:place]
async def place(broker: str, database: str) -> None:
    """Place three orders and wait for each outcome."""
    async with Orchestrator(sagas=[place_order], log=database, broker=broker) as orch:
        for order in (
            Order(order_id="1", sku="book", qty=2, amount=Decimal("25.00")),
            Order(order_id="2", sku="book", qty=1, amount=Decimal("250.00")),
            Order(order_id="3", sku="book", qty=5, amount=Decimal("60.00")),
        ):
            outcome = await orch.run(place_order, order)
            reason = f" ({outcome.failure.message})" if outcome.failure else ""
            print(f"order {order.order_id}: {outcome.status}{reason}")


# --8<-- [end:place]


# --8<-- [start:main]
def main(argv: list[str]) -> None:
    role, broker, database = argv
    if role == "setup":
        anyio.run(setup, database)
    elif role == "stock":
        anyio.run(serve, stock_service(broker, database))
    elif role == "payments":
        anyio.run(serve, payments_service(broker, database))
    elif role == "orchestrator":
        anyio.run(orchestrator, broker, database)
    elif role == "place":
        anyio.run(place, broker, database)
    else:
        raise SystemExit(f"unknown role {role!r}: setup, stock, payments, orchestrator or place")


if __name__ == "__main__":
    main(sys.argv[1:])
    # --8<-- [end:main]
