"""The stock service: articles and their stock levels, and reservations that hold units.

It owns its data (its own SQLite file) and talks to the other services only through
messages: :func:`stock_participant` makes the :class:`~pysaga.Participant` that serves both
styles of the flow. Every operation is keyed by the order id, so doing it again has no second
effect; the participant's inbox already drops a message it handled, and the key covers the
rest (a handler that ran, then crashed before the inbox remembered it).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from pysaga import BusinessError, HandlerContext, Participant

from .database import Database
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
    import sqlite3
    from collections.abc import Mapping
    from pathlib import Path

    from pysaga import Broker

__all__ = ("OutOfStock", "StockService", "stock_participant")


class OutOfStock(Exception):
    """There are fewer units of an article left than the order asks for."""


class StockService:
    """Stock levels, and a reservation per order: ``held`` until it is ``released``."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS stock (
            sku     TEXT PRIMARY KEY,
            on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
            version INTEGER NOT NULL  -- counts the changes, for the read model
        );
        CREATE TABLE IF NOT EXISTS reservations (
            order_id TEXT PRIMARY KEY,
            items    TEXT NOT NULL,  -- JSON: {sku: qty}
            state    TEXT NOT NULL   -- 'held' or 'released'
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path, self.SCHEMA)

    async def restock(self, levels: Mapping[str, int]) -> list[StockUpdated]:
        """Set the stock levels (when the shop opens); return the new levels."""

        def restock(conn: sqlite3.Connection) -> list[StockUpdated]:
            conn.executemany(
                "INSERT INTO stock (sku, on_hand, version) VALUES (?, ?, 1) "
                "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, "
                "version = version + 1",
                levels.items(),
            )
            return _levels(conn, levels)

        return await self.db.transaction(restock)

    async def reserve(self, order: Order) -> list[StockUpdated]:
        """Hold the units of every line of *order*, or none of them; return the new levels.

        Raises:
            OutOfStock: an article has fewer units left than wanted.
        """
        wanted = order.items

        def reserve(conn: sqlite3.Connection) -> list[StockUpdated]:
            found = conn.execute(
                "SELECT state FROM reservations WHERE order_id = ?", (order.order_id,)
            ).fetchone()
            if found is None:
                for sku, qty in sorted(wanted.items()):
                    row = conn.execute("SELECT on_hand FROM stock WHERE sku = ?", (sku,)).fetchone()
                    available = row[0] if row else 0
                    if available < qty:
                        raise OutOfStock(f"out of stock: {sku} ({available} left, {qty} wanted)")
                    conn.execute(
                        "UPDATE stock SET on_hand = on_hand - ?, version = version + 1 "
                        "WHERE sku = ?",
                        (qty, sku),
                    )
                conn.execute(
                    "INSERT INTO reservations (order_id, items, state) VALUES (?, ?, 'held')",
                    (order.order_id, json.dumps(wanted)),
                )
            elif found[0] == "released":  # undone before it arrived: never hold it now
                raise OutOfStock("the reservation was cancelled")
            return _levels(conn, wanted)

        return await self.db.transaction(reserve)

    async def release(self, order_id: str) -> list[StockUpdated]:
        """Put the units held for *order_id* back on the shelf; return the new levels.

        Safe to call twice, and safe to call when nothing was reserved: it then leaves a
        ``released`` marker, so that a late reservation for the order is refused.
        """

        def release(conn: sqlite3.Connection) -> list[StockUpdated]:
            found = conn.execute(
                "SELECT items, state FROM reservations WHERE order_id = ?", (order_id,)
            ).fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO reservations (order_id, items, state) "
                    "VALUES (?, '{}', 'released')",
                    (order_id,),
                )
                return []
            items: dict[str, int] = json.loads(found[0])
            if found[1] == "held":
                for sku, qty in items.items():
                    conn.execute(
                        "UPDATE stock SET on_hand = on_hand + ?, version = version + 1 "
                        "WHERE sku = ?",
                        (qty, sku),
                    )
                conn.execute(
                    "UPDATE reservations SET state = 'released' WHERE order_id = ?", (order_id,)
                )
            return _levels(conn, items)

        return await self.db.transaction(release)

    def levels(self) -> dict[str, int]:
        """Units on the shelf, by article."""
        return dict(self.db.query("SELECT sku, on_hand FROM stock ORDER BY sku"))

    def held(self) -> Counter[str]:
        """Units held by reservations that were not released, by article."""
        held = Counter[str]()
        for (items,) in self.db.query("SELECT items FROM reservations WHERE state = 'held'"):
            held.update(json.loads(items))
        return held


def _levels(conn: sqlite3.Connection, skus: Mapping[str, int]) -> list[StockUpdated]:
    return [
        StockUpdated(sku=sku, on_hand=on_hand, version=version)
        for sku, on_hand, version in conn.execute(
            f"SELECT sku, on_hand, version FROM stock WHERE sku IN ({','.join('?' * len(skus))})"
            " ORDER BY sku",
            list(skus),
        )
    ]


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

    @service.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> None:
        try:
            levels = await stock.reserve(cmd.order)
        except OutOfStock as refusal:
            raise BusinessError(str(refusal)) from None  # a "no": the saga compensates
        await publish_levels(ctx, levels)

    @service.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        await publish_levels(ctx, await stock.release(cmd.order.order_id))

    # -- choreographed: reactions to the flow's events ---------------------------------------

    @service.on(OrderCreated)
    async def on_order_created(event: OrderCreated, ctx: HandlerContext) -> None:
        order = event.order
        try:
            levels = await stock.reserve(order)
        except OutOfStock as refusal:
            await ctx.publish(StockNotAvailable(order_id=order.order_id, reason=str(refusal)))
            return
        await publish_levels(ctx, levels)
        await ctx.publish(StockReserved(order=order))

    @service.on(PaymentFailed)
    async def on_payment_failed(event: PaymentFailed, ctx: HandlerContext) -> None:
        await publish_levels(ctx, await stock.release(event.order_id))  # the compensation
        await ctx.publish(StockReleased(order_id=event.order_id, reason=event.reason))

    return service
