"""The order service: orders and their status, and the customer's confirmation messages.

Like every service of the shop, it is idempotent by a key the caller passes (see the
package's docstring for why that is what a saga needs from its participants).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

from .database import Database, from_cents, to_cents

if TYPE_CHECKING:
    import sqlite3
    from decimal import Decimal
    from pathlib import Path

    from .models import Order

__all__ = ("OrderService",)


class OrderService:
    """Orders and their status: ``pending``, then ``confirmed`` or ``cancelled``.

    The order id is this service's idempotency key: an order is created once, and each change
    of status is a guarded transition, which a repeated call finds already made. Confirmation
    messages go to an outbox under the caller's key.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS orders (
            order_id     TEXT PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            lines        TEXT NOT NULL,  -- JSON: {sku: qty}
            amount_cents INTEGER NOT NULL,
            status       TEXT NOT NULL,  -- 'pending', 'confirmed' or 'cancelled'
            payment_id   TEXT
        );
        CREATE TABLE IF NOT EXISTS outbox (
            key      TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            message  TEXT NOT NULL
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path, self.SCHEMA)

    async def create(self, order: Order) -> None:
        """Record the order as ``pending`` (once: creating it again changes nothing)."""
        await self.db.transaction(lambda conn: self._upsert(conn, order, "pending"))

    async def cancel(self, order: Order) -> None:
        """Cancel a pending order; record it as cancelled if it was never created."""
        await self.db.transaction(lambda conn: self._upsert(conn, order, "cancelled"))

    async def confirm(self, order_id: str, payment_id: str) -> None:
        """Confirm a pending order, paid by *payment_id*."""

        def confirm(conn: sqlite3.Connection) -> None:
            found = conn.execute(
                "SELECT status FROM orders WHERE order_id = ?", (order_id,)
            ).fetchone()
            status = found[0] if found else "missing"
            if status == "pending":
                conn.execute(
                    "UPDATE orders SET status = 'confirmed', payment_id = ? WHERE order_id = ?",
                    (payment_id, order_id),
                )
            elif status != "confirmed":
                raise RuntimeError(f"order {order_id} is {status}; it cannot be confirmed")

        await self.db.transaction(confirm)

    async def send_confirmation(self, order: Order, *, key: str) -> None:
        """Queue the confirmation message for the customer (once per key)."""
        message = f"Dear {order.customer_id}, your order {order.order_id} is confirmed."

        def queue(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO outbox (key, order_id, message) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING",
                (key, order.order_id, message),
            )

        await self.db.transaction(queue)

    @staticmethod
    def _upsert(conn: sqlite3.Connection, order: Order, status: str) -> None:
        # Insert the order, or move a *pending* one to *status*; nothing else ever changes.
        conn.execute(
            "INSERT INTO orders (order_id, customer_id, lines, amount_cents, status) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (order_id) DO UPDATE SET status = excluded.status "
            "WHERE status = 'pending'",
            (
                order.order_id,
                order.customer_id,
                json.dumps({line.sku: line.qty for line in order.lines}),
                to_cents(order.amount),
                status,
            ),
        )

    def statuses(self) -> Counter[str]:
        """How many orders are in each status."""
        return Counter(dict(self.db.query("SELECT status, count(*) FROM orders GROUP BY 1")))

    def sold(self) -> Counter[str]:
        """Units in confirmed orders, by article."""
        sold = Counter[str]()
        for (lines,) in self.db.query("SELECT lines FROM orders WHERE status = 'confirmed'"):
            sold.update(json.loads(lines))
        return sold

    def confirmed(self) -> set[str]:
        """The ids of confirmed orders."""
        rows = self.db.query("SELECT order_id FROM orders WHERE status = 'confirmed'")
        return {order_id for (order_id,) in rows}

    def revenue(self) -> dict[str, Decimal]:
        """The amounts of confirmed orders, by customer."""
        rows = self.db.query(
            "SELECT customer_id, sum(amount_cents) FROM orders WHERE status = 'confirmed' "
            "GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}

    def confirmations(self) -> Counter[str]:
        """Confirmation messages queued, by order."""
        return Counter(dict(self.db.query("SELECT order_id, count(*) FROM outbox GROUP BY 1")))
