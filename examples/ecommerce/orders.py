"""The order service: orders and their status, ``pending``, then ``completed`` or ``rejected``.

It owns its data (its own database: see ``database.py``) and talks to the other services
only through messages: :func:`order_participant` makes its :class:`~pysaga.Participant` for
both styles. A status only moves forward (a pending order completes or is rejected, once),
so a repeated message finds its change already made. Every change is also published as an
:class:`~.messages.OrderUpdated` for the read model.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pysaga import HandlerContext, Participant

from .database import from_cents, to_cents
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
    from pysaga import Broker

    from .database import Database, Transaction

__all__ = ("OrderService", "order_participant")


class OrderService:
    """Orders and their status.

    Every operation that changes an order takes the handler's ``ctx`` when a handler calls
    it, so that its writes join the message's transaction where there is one (see
    :meth:`.database.Database.transaction`).
    """

    TABLES = """
        CREATE TABLE IF NOT EXISTS orders (
            order_id     TEXT PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            items        TEXT NOT NULL,  -- JSON: {sku: qty}
            amount_cents BIGINT NOT NULL,
            status       TEXT NOT NULL,  -- 'pending', 'completed' or 'rejected'
            reason       TEXT NOT NULL DEFAULT '',
            placed       TEXT NOT NULL   -- JSON: the order as placed
        );
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, order: Order, ctx: HandlerContext | None = None) -> OrderUpdated:
        """Record *order* as pending (once: creating it again changes nothing)."""
        async with self.db.transaction(ctx) as tx:
            return await _settle(tx, order, "pending", "")

    async def complete(self, order_id: str, ctx: HandlerContext | None = None) -> OrderUpdated:
        """Complete a pending order."""
        async with self.db.transaction(ctx) as tx:
            return await _settle(tx, order_id, "completed", "")

    async def reject(
        self, order: Order | str, reason: str, ctx: HandlerContext | None = None
    ) -> OrderUpdated:
        """Reject a pending order (given whole, an order never created is recorded rejected)."""
        async with self.db.transaction(ctx) as tx:
            return await _settle(tx, order, "rejected", reason)

    async def find(self, order_id: str) -> Order | None:
        """The order as it was placed, or ``None`` if the service never took it."""
        rows = await self.db.fetchall("SELECT placed FROM orders WHERE order_id = $1", order_id)
        return Order.model_validate_json(rows[0][0]) if rows else None

    async def status(self, order_id: str) -> str | None:
        """The order's status, or ``None`` if the service never took it."""
        rows = await self.db.fetchall("SELECT status FROM orders WHERE order_id = $1", order_id)
        return str(rows[0][0]) if rows else None

    async def placed(self) -> list[Order]:
        """Every order the service took, as it was placed, by id."""
        rows = await self.db.fetchall("SELECT placed FROM orders ORDER BY order_id")
        return [Order.model_validate_json(placed) for (placed,) in rows]

    async def pending(self) -> list[Order]:
        """Orders still pending (their sagas have not ended)."""
        rows = await self.db.fetchall(
            "SELECT placed FROM orders WHERE status = 'pending' ORDER BY order_id"
        )
        return [Order.model_validate_json(placed) for (placed,) in rows]

    async def statuses(self) -> Counter[str]:
        """How many orders are in each status."""
        rows = await self.db.fetchall("SELECT status, count(*) FROM orders GROUP BY status")
        return Counter({status: int(count) for status, count in rows})

    async def by_status(self, status: str) -> set[str]:
        """The ids of the orders in *status*."""
        rows = await self.db.fetchall("SELECT order_id FROM orders WHERE status = $1", status)
        return {order_id for (order_id,) in rows}

    async def sold(self) -> Counter[str]:
        """Units in completed orders, by article."""
        sold = Counter[str]()
        for (items,) in await self.db.fetchall(
            "SELECT items FROM orders WHERE status = 'completed'"
        ):
            sold.update(json.loads(items))
        return sold

    async def revenue(self) -> dict[str, Decimal]:
        """The amounts of completed orders, by customer."""
        rows = await self.db.fetchall(
            "SELECT customer_id, sum(amount_cents) FROM orders WHERE status = 'completed' "
            "GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}


async def _settle(tx: Transaction, order: Order | str, status: str, reason: str) -> OrderUpdated:
    """Move the order to *status* if it is pending (or record it, given whole); return it as
    it is now. Nothing else ever changes, so a repeated call returns the same update."""
    if isinstance(order, Order):
        await tx.execute(
            "INSERT INTO orders (order_id, customer_id, items, amount_cents, status, reason, "
            "placed) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
            order.order_id,
            order.customer_id,
            json.dumps(order.items),
            to_cents(order.amount),
            status,
            reason,
            order.model_dump_json(),
        )
        order_id = order.order_id
    else:
        order_id = order
    row = await tx.fetchone(
        "UPDATE orders SET status = $1, reason = $2 WHERE order_id = $3 AND status = 'pending' "
        "RETURNING customer_id, items, amount_cents, status, reason",
        status,
        reason,
        order_id,
    )
    if row is None:  # not pending: settled before, it stays as it is
        row = await tx.fetchone(
            "SELECT customer_id, items, amount_cents, status, reason FROM orders "
            "WHERE order_id = $1",
            order_id,
        )
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
        await ctx.publish(UPDATES, await orders.create(cmd.order, ctx))

    @service.compensates(RejectOrder)
    async def reject(cmd: RejectOrder, ctx: HandlerContext) -> None:
        # Why the saga turned back: the refusal of a later step ("out of stock: ..."), a
        # customer's cancellation, a deadline; the order keeps it as its reason.
        reason = ctx.failure.message if ctx.failure is not None else "the saga turned back"
        await ctx.publish(UPDATES, await orders.reject(cmd.order, reason, ctx))

    @service.handles(CompleteOrder)
    async def complete(cmd: CompleteOrder, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.complete(cmd.order.order_id, ctx))

    # -- choreographed: the order service ends the flow --------------------------------------

    @service.on(PaymentCompleted)
    async def on_payment_completed(event: PaymentCompleted, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.complete(event.order_id, ctx))
        await ctx.publish(OrderCompleted(order_id=event.order_id))

    @service.on(StockNotAvailable)
    async def on_stock_not_available(event: StockNotAvailable, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.reject(event.order_id, event.reason, ctx))
        await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))

    @service.on(StockReleased)
    async def on_stock_released(event: StockReleased, ctx: HandlerContext) -> None:
        await ctx.publish(UPDATES, await orders.reject(event.order_id, event.reason, ctx))
        await ctx.publish(OrderRejected(order_id=event.order_id, reason=event.reason))

    return service
