"""The order service: orders and their status, ``pending``, then ``completed`` or ``rejected``.

It owns its data (its own SQLite file) and talks to the other services only through
messages: :func:`order_participant` makes its :class:`~pysaga.Participant` for both styles.
A status only moves forward (a pending order completes or is rejected, once), so a repeated
message finds its change already made. Every change is also published as an
:class:`~.messages.OrderUpdated` for the read model.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pysaga import HandlerContext, Participant

from .database import Database, from_cents, to_cents
from .flows import purchase
from .messages import (
    UPDATES,
    CompleteOrder,
    CreateOrder,
    Order,
    OrderCompleted,
    OrderRejected,
    OrderUpdated,
    PaymentCompleted,
    RejectOrder,
    StockNotAvailable,
    StockReleased,
)

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

    from pysaga import Broker

__all__ = ("OrderService", "order_participant")


class OrderService:
    """Orders and their status."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS orders (
            order_id     TEXT PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            items        TEXT NOT NULL,  -- JSON: {sku: qty}
            amount_cents INTEGER NOT NULL,
            status       TEXT NOT NULL,  -- 'pending', 'completed' or 'rejected'
            reason       TEXT NOT NULL DEFAULT '',
            placed       TEXT NOT NULL   -- JSON: the order as placed
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path, self.SCHEMA)

    async def create(self, order: Order) -> OrderUpdated:
        """Record *order* as pending (once: creating it again changes nothing)."""
        return await self.db.transaction(lambda conn: _settle(conn, order, "pending", ""))

    async def complete(self, order_id: str) -> OrderUpdated:
        """Complete a pending order."""
        return await self.db.transaction(lambda conn: _settle(conn, order_id, "completed", ""))

    async def reject(self, order: Order | str, reason: str) -> OrderUpdated:
        """Reject a pending order (given whole, an order never created is recorded rejected)."""
        return await self.db.transaction(lambda conn: _settle(conn, order, "rejected", reason))

    def pending(self) -> list[Order]:
        """Orders still pending (their sagas have not ended), oldest first."""
        rows = self.db.query("SELECT placed FROM orders WHERE status = 'pending' ORDER BY rowid")
        return [Order.model_validate_json(placed) for (placed,) in rows]

    def statuses(self) -> Counter[str]:
        """How many orders are in each status."""
        return Counter(dict(self.db.query("SELECT status, count(*) FROM orders GROUP BY 1")))

    def by_status(self, status: str) -> set[str]:
        """The ids of the orders in *status*."""
        rows = self.db.query("SELECT order_id FROM orders WHERE status = ?", status)
        return {order_id for (order_id,) in rows}

    def sold(self) -> Counter[str]:
        """Units in completed orders, by article."""
        sold = Counter[str]()
        for (items,) in self.db.query("SELECT items FROM orders WHERE status = 'completed'"):
            sold.update(json.loads(items))
        return sold

    def revenue(self) -> dict[str, Decimal]:
        """The amounts of completed orders, by customer."""
        rows = self.db.query(
            "SELECT customer_id, sum(amount_cents) FROM orders WHERE status = 'completed' "
            "GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}


def _settle(conn: sqlite3.Connection, order: Order | str, status: str, reason: str) -> OrderUpdated:
    """Move the order to *status* if it is pending (or record it, given whole); return it as
    it is now. Nothing else ever changes, so a repeated call returns the same update."""
    if isinstance(order, Order):
        conn.execute(
            "INSERT INTO orders (order_id, customer_id, items, amount_cents, status, reason, "
            "placed) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
            (
                order.order_id,
                order.customer_id,
                json.dumps(order.items),
                to_cents(order.amount),
                status,
                reason,
                order.model_dump_json(),
            ),
        )
        order_id = order.order_id
    else:
        order_id = order
    conn.execute(
        "UPDATE orders SET status = ?, reason = ? WHERE order_id = ? AND status = 'pending'",
        (status, reason, order_id),
    )
    row = conn.execute(
        "SELECT customer_id, items, amount_cents, status, reason FROM orders WHERE order_id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"order {order_id} is unknown to the order service")
    customer_id, items, cents, now, why = row
    return OrderUpdated(
        order_id=order_id,
        customer_id=customer_id,
        items=json.loads(items),
        amount=from_cents(cents),
        status=now,
        reason=why,
    )


def order_participant(orders: OrderService, *, broker: str | Broker, **options: Any) -> Participant:
    """The order service on the broker, for both styles of the flow."""
    service = Participant("orders", broker=broker, flows=[purchase], **options)

    # -- orchestrated: commands from the place-order saga ------------------------------------

    @service.handles(CreateOrder)
    async def create(cmd: CreateOrder, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.create(cmd.order))

    @service.compensates(RejectOrder)
    async def reject(cmd: RejectOrder, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.reject(cmd.order, "the saga was compensated"))

    @service.handles(CompleteOrder)
    async def complete(cmd: CompleteOrder, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.complete(cmd.order.order_id))

    # -- choreographed: the order service ends the flow --------------------------------------

    @service.on(PaymentCompleted)
    async def on_payment_completed(event: PaymentCompleted, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.complete(event.order_id))
        await ctx.publish(OrderCompleted(order_id=event.order_id))

    @service.on(StockNotAvailable)
    async def on_stock_not_available(event: StockNotAvailable, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.reject(event.order_id, event.reason))
        await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))

    @service.on(StockReleased)
    async def on_stock_released(event: StockReleased, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.reject(event.order_id, event.reason))
        await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))

    return service
