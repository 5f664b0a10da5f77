"""The stock service: articles and their stock levels, and reservations that hold units.

It owns its data (its own database: see ``database.py``) and talks to the other services
only through messages: :func:`stock_participant` makes the :class:`~pysaga.Participant` that
serves both styles of the flow. Every operation is keyed by the order id, so doing it again
has no second effect; the participant's inbox already drops a message it handled, and the
key covers the rest (a handler that ran, then crashed before the inbox remembered it).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from pysaga import BusinessError, HandlerContext, Participant

from .database import Database, Transaction
from .flows import purchase
from .messages import (
    UPDATES,
    Order,
    OrderCreated,
    PaymentFailed,
    ReleaseStock,
    ReserveStock,
    StockNotAvailable,
    StockReleased,
    StockReserved,
    StockUpdated,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pysaga import Broker

__all__ = ("OutOfStock", "StockService", "stock_participant")


class OutOfStock(Exception):
    """There are fewer units of an article left than the order asks for."""


class StockService:
    """Stock levels, and a reservation per order: ``held`` until it is ``released``.

    Every operation that changes the stock takes the handler's ``ctx`` when a handler calls
    it, so that its writes join the message's transaction where there is one (see
    :meth:`.database.Database.transaction`).
    """

    TABLES = """
        CREATE TABLE IF NOT EXISTS stock (
            sku     TEXT PRIMARY KEY,
            on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
            version BIGINT NOT NULL  -- counts the changes, for the read model
        );
        CREATE TABLE IF NOT EXISTS reservations (
            order_id TEXT PRIMARY KEY,
            items    TEXT NOT NULL,  -- JSON: {sku: qty}
            state    TEXT NOT NULL,  -- 'held', 'released', 'refused' or 'cancelled'
            reason   TEXT NOT NULL DEFAULT ''  -- why it was refused
        );
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def restock(self, levels: Mapping[str, int]) -> list[StockUpdated]:
        """Set the stock levels (when the shop opens); return the new levels."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO stock (sku, on_hand, version) VALUES ($1, $2, 1) "
                "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, "
                "version = stock.version + 1",
                levels.items(),
            )
            return await _levels(tx, levels)

    async def reserve(self, order: Order, ctx: HandlerContext | None = None) -> list[StockUpdated]:
        """Hold the units of every line of *order*, or none of them; return the new levels.

        Asked again for the same order, it gives the same answer as the first time, whatever
        the shelves hold now: the order was reserved (even if released since), or refused
        for the same reason. So a flow replayed after a crash takes the path it took before.

        Raises:
            OutOfStock: an article has fewer units left than wanted (the refusal is
                recorded, and given again to a repeat), or the reservation was cancelled
                before it arrived.
        """
        wanted = order.items
        refusal = None
        async with self.db.transaction(ctx) as tx:
            found = await tx.fetchone(
                "SELECT state, reason FROM reservations WHERE order_id = $1", order.order_id
            )
            if found is None:
                refusal = await _take(tx, wanted)
                await tx.execute(
                    "INSERT INTO reservations (order_id, items, state, reason) "
                    "VALUES ($1, $2, $3, $4)",
                    order.order_id,
                    json.dumps(wanted),
                    "held" if refusal is None else "refused",
                    refusal or "",
                )
            elif found[0] == "refused":
                refusal = found[1]
            elif found[0] == "cancelled":  # undone before it arrived: never hold it now
                refusal = "the reservation was cancelled"
            levels = await _levels(tx, wanted) if refusal is None else []
        if refusal is not None:
            raise OutOfStock(refusal)
        return levels

    async def release(self, order_id: str, ctx: HandlerContext | None = None) -> list[StockUpdated]:
        """Put the units held for *order_id* back on the shelf; return the new levels.

        Safe to call twice, and safe to call when nothing was reserved: it then leaves a
        ``cancelled`` marker, so that a late reservation for the order is refused.
        """
        async with self.db.transaction(ctx) as tx:
            found = await tx.fetchone(
                "SELECT items, state FROM reservations WHERE order_id = $1", order_id
            )
            if found is None:
                await tx.execute(
                    "INSERT INTO reservations (order_id, items, state) "
                    "VALUES ($1, '{}', 'cancelled')",
                    order_id,
                )
                return []
            items: dict[str, int] = json.loads(found[0])
            if found[1] == "held":
                for sku, qty in sorted(items.items()):
                    await tx.execute(
                        "UPDATE stock SET on_hand = on_hand + $1, version = version + 1 "
                        "WHERE sku = $2",
                        qty,
                        sku,
                    )
                await tx.execute(
                    "UPDATE reservations SET state = 'released' WHERE order_id = $1", order_id
                )
            return await _levels(tx, items)

    async def levels(self) -> dict[str, int]:
        """Units on the shelf, by article."""
        return dict(await self.db.fetchall("SELECT sku, on_hand FROM stock ORDER BY sku"))

    async def updates(self) -> list[StockUpdated]:
        """Every article's level now, with its version, as the read model hears it."""
        rows = await self.db.fetchall("SELECT sku, on_hand, version FROM stock ORDER BY sku")
        return [StockUpdated(sku=sku, on_hand=n, version=version) for sku, n, version in rows]

    async def held(self) -> Counter[str]:
        """Units held by reservations that were not released, by article."""
        held = Counter[str]()
        for (items,) in await self.db.fetchall(
            "SELECT items FROM reservations WHERE state = 'held'"
        ):
            held.update(json.loads(items))
        return held


async def _take(tx: Transaction, wanted: Mapping[str, int]) -> str | None:
    """Take *wanted* off the shelves, all or nothing; return why not, or ``None`` if taken."""
    taken: list[tuple[str, int]] = []
    for sku, qty in sorted(wanted.items()):  # one order of locks: no deadlock
        row = await tx.fetchone(
            "UPDATE stock SET on_hand = on_hand - $1, version = version + 1 "
            "WHERE sku = $2 AND on_hand >= $1 RETURNING on_hand",
            qty,
            sku,
        )
        if row is None:
            row = await tx.fetchone("SELECT on_hand FROM stock WHERE sku = $1", sku)
            left = row[0] if row else 0
            for back, units in taken:  # put back what this order took: none of it is held
                await tx.execute(
                    "UPDATE stock SET on_hand = on_hand + $1, version = version + 1 WHERE sku = $2",
                    units,
                    back,
                )
            return f"out of stock: {sku} ({left} left, {qty} wanted)"
        taken.append((sku, qty))
    return None


async def _levels(tx: Transaction, skus: Mapping[str, int]) -> list[StockUpdated]:
    if not skus:
        return []
    places = ", ".join(f"${n}" for n in range(1, len(skus) + 1))
    rows = await tx.fetchall(
        f"SELECT sku, on_hand, version FROM stock WHERE sku IN ({places}) ORDER BY sku", *skus
    )
    return [StockUpdated(sku=sku, on_hand=n, version=version) for sku, n, version in rows]


def stock_participant(stock: StockService, *, broker: str | Broker, **options: Any) -> Participant:
    """The stock service on the broker: its command handlers (orchestrated) and its event
    handlers (choreographed) call the same :class:`StockService` operations.

    *options* go to the :class:`~pysaga.Participant` (``inbox=``, ``tracer_provider=``).
    """
    service = Participant("stock", broker=broker, flows=[purchase], **options)

    async def publish_levels(ctx: HandlerContext, levels: list[StockUpdated]) -> None:
        for level in levels:
            await ctx.publish(UPDATES, level)

    # -- orchestrated: commands from the place-order saga ------------------------------------

    # --8<-- [start:reserve]
    @service.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> None:
        try:
            levels = await stock.reserve(cmd.order, ctx)
        except OutOfStock as refusal:
            raise BusinessError(str(refusal)) from None  # a "no": the saga compensates
        await publish_levels(ctx, levels)

    # --8<-- [end:reserve]

    @service.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        await publish_levels(ctx, await stock.release(cmd.order.order_id, ctx))

    # -- choreographed: reactions to the flow's events ---------------------------------------

    @service.on(OrderCreated)
    async def on_order_created(event: OrderCreated, ctx: HandlerContext) -> None:
        order = event.order
        try:
            levels = await stock.reserve(order, ctx)
        except OutOfStock as refusal:
            await ctx.publish(StockNotAvailable(order_id=order.order_id, reason=str(refusal)))
            return
        await publish_levels(ctx, levels)
        await ctx.publish(StockReserved(order=order))

    @service.on(PaymentFailed)
    async def on_payment_failed(event: PaymentFailed, ctx: HandlerContext) -> None:
        await publish_levels(ctx, await stock.release(event.order_id, ctx))  # the compensation
        await ctx.publish(StockReleased(order_id=event.order_id, reason=event.reason))

    return service
