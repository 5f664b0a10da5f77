"""The shop flow the scale-out tests run across processes, on PostgreSQL and a real broker.

A ``purchase`` saga reserves stock (compensated by releasing it), charges the customer (the
pivot) and completes the order. The two services keep their own tables in PostgreSQL and write
them in the same transaction as their inbox record and reply (``ctx.transaction``), so a
command handled twice would show as a second row: every effect is journaled by idempotency key,
and the test counts the rows.

Refusals are real, not drawn at random by the services: some orders want more of a scarce
product than is left, some customers cannot afford what they order.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Participant, Retry, Saga

TABLES = """
CREATE TABLE IF NOT EXISTS shop_stock (
    sku text PRIMARY KEY, level integer NOT NULL CHECK (level >= 0));
CREATE TABLE IF NOT EXISTS shop_stock_moves (
    key text NOT NULL, kind text NOT NULL, sku text NOT NULL, qty integer NOT NULL);
CREATE TABLE IF NOT EXISTS shop_balances (
    customer text PRIMARY KEY, balance integer NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS shop_payments (
    key text NOT NULL, kind text NOT NULL, customer text NOT NULL, amount integer NOT NULL);
"""

STOCK = {"book": 10_000, "lamp": 10_000, "rare-print": 40}
BALANCES = {f"c-{n}": 10_000 for n in range(20)} | {"c-poor": 30}


class Purchase(BaseModel):
    order_id: str
    sku: str
    qty: int
    customer: str
    amount: int
    reserved: bool = False
    payment_id: str | None = None
    completed: bool = False


class ReserveStock(BaseModel):
    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    reserved: bool = True


class ReleaseStock(BaseModel):
    order_id: str
    sku: str
    qty: int


class ChargeCustomer(BaseModel):
    order_id: str
    customer: str
    amount: int


class CustomerCharged(BaseModel):
    payment_id: str


def plan(count: int, seed: int) -> list[Purchase]:
    """*count* orders: mostly affordable and in stock, some on the scarce print, some by the
    customer who cannot pay."""
    rng = random.Random(seed)
    orders = []
    for n in range(count):
        sku = rng.choices(["book", "lamp", "rare-print"], weights=[6, 3, 2])[0]
        customer = "c-poor" if rng.random() < 0.1 else f"c-{rng.randrange(20)}"
        qty = rng.randint(1, 3)
        orders.append(
            Purchase(
                order_id=f"o-{n:04d}",
                sku=sku,
                qty=qty,
                customer=customer,
                amount=qty * rng.randint(5, 20),
            )
        )
    return orders


def services(suffix: str) -> tuple[str, str]:
    return f"stock-{suffix}", f"payment-{suffix}"


def purchase_saga(suffix: str) -> Saga[Purchase]:
    stock, payment = services(suffix)
    saga = Saga(f"purchase-{suffix}", Purchase)
    saga.remote(
        "reserve",
        service=stock,
        command=ReserveStock,
        reply=StockReserved,
        compensation=ReleaseStock,
        retry=Retry(attempts=5, backoff=0.2),
        timeout=10,
        compensation_timeout=10,
    )
    saga.remote(
        "charge",
        service=payment,
        command=ChargeCustomer,
        reply=CustomerCharged,
        pivot=True,
        retry=Retry(attempts=5, backoff=0.2),
        timeout=10,
    )

    @saga.step
    async def complete(order: Purchase) -> Purchase:
        return order.model_copy(update={"completed": True})

    return saga


def participant(kind: str, suffix: str, broker: str, database: str, **options: Any) -> Participant:
    """The stock or the payment service, with its transactional inbox in *database*."""
    stock_name, payment_name = services(suffix)
    if kind == "stock":
        stock = Participant(stock_name, broker=broker, inbox=database, **options)

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
            db = ctx.transaction
            left = await db.fetchval(
                "UPDATE shop_stock SET level = level - $2 WHERE sku = $1 AND level >= $2 "
                "RETURNING level",
                cmd.sku,
                cmd.qty,
            )
            if left is None:
                raise BusinessError(f"not enough {cmd.sku} left for {cmd.qty}")
            await db.execute(
                "INSERT INTO shop_stock_moves VALUES ($1, 'reserve', $2, $3)",
                ctx.idempotency_key,
                cmd.sku,
                cmd.qty,
            )
            return StockReserved()

        @stock.compensates(ReleaseStock)
        async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
            db = ctx.transaction
            reserved = await db.fetchval(
                "SELECT count(*) FROM shop_stock_moves WHERE key = $1 AND kind = 'reserve'",
                ctx.idempotency_key,
            )
            if reserved:  # nothing to undo when the reservation never happened
                await db.execute(
                    "UPDATE shop_stock SET level = level + $2 WHERE sku = $1", cmd.sku, cmd.qty
                )
            await db.execute(
                "INSERT INTO shop_stock_moves VALUES ($1, 'release', $2, $3)",
                ctx.idempotency_key,
                cmd.sku,
                cmd.qty if reserved else 0,
            )

        return stock

    payment = Participant(payment_name, broker=broker, inbox=database, **options)

    @payment.handles(ChargeCustomer)
    async def charge(cmd: ChargeCustomer, ctx: HandlerContext) -> CustomerCharged:
        db = ctx.transaction
        left = await db.fetchval(
            "UPDATE shop_balances SET balance = balance - $2 WHERE customer = $1 "
            "AND balance >= $2 RETURNING balance",
            cmd.customer,
            cmd.amount,
        )
        if left is None:
            raise BusinessError(f"{cmd.customer} cannot pay {cmd.amount}")
        await db.execute(
            "INSERT INTO shop_payments VALUES ($1, 'charge', $2, $3)",
            ctx.idempotency_key,
            cmd.customer,
            cmd.amount,
        )
        return CustomerCharged(payment_id=f"pay-{cmd.order_id}")

    return payment
