"""The stock service: stock levels, and reservations that hold units for an order.

Like every service of the shop, it is idempotent by a key the caller passes (see the
package's docstring for why that is what a saga needs from its participants).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

from .database import Database

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from .models import OrderLine

__all__ = ("OutOfStock", "StockService")


class OutOfStock(Exception):
    """There are fewer units of an article left than the order asks for."""

    def __init__(self, sku: str, *, available: int, wanted: int) -> None:
        super().__init__(f"out of stock: {sku} ({available} left, {wanted} wanted)")
        self.sku, self.available, self.wanted = sku, available, wanted


class StockService:
    """Stock levels, and reservations that hold units for an order.

    A reservation is recorded under the caller's key: ``held`` until it is ``released``.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS stock (
            sku     TEXT PRIMARY KEY,
            on_hand INTEGER NOT NULL CHECK (on_hand >= 0)
        );
        CREATE TABLE IF NOT EXISTS reservations (
            key      TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            lines    TEXT NOT NULL,  -- JSON: {sku: qty}
            state    TEXT NOT NULL   -- 'held' or 'released'
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path, self.SCHEMA)

    async def restock(self, levels: Mapping[str, int]) -> None:
        """Set the stock levels (when the shop is set up)."""
        await self.db.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO stock (sku, on_hand) VALUES (?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand",
                levels.items(),
            )
        )

    async def reserve(self, order_id: str, lines: Iterable[OrderLine], *, key: str) -> None:
        """Hold the units of every line, or none of them.

        Raises:
            OutOfStock: an article has fewer units left than wanted.
        """
        wanted = Counter[str]()
        for line in lines:
            wanted[line.sku] += line.qty

        def reserve(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM reservations WHERE key = ?", (key,)).fetchone():
                return  # done before (or already released): a repeated call changes nothing
            for sku, qty in sorted(wanted.items()):
                row = conn.execute("SELECT on_hand FROM stock WHERE sku = ?", (sku,)).fetchone()
                available = row[0] if row else 0
                if available < qty:
                    raise OutOfStock(sku, available=available, wanted=qty)
                conn.execute("UPDATE stock SET on_hand = on_hand - ? WHERE sku = ?", (qty, sku))
            conn.execute(
                "INSERT INTO reservations (key, order_id, lines, state) VALUES (?, ?, ?, 'held')",
                (key, order_id, json.dumps(wanted)),
            )

        await self.db.transaction(reserve)

    async def release(self, order_id: str, *, key: str) -> None:
        """Put the units held under *key* back on the shelf.

        Safe to call twice, and safe to call when nothing was reserved: it then leaves a
        ``released`` marker, so that a late reservation under the same key is ignored.
        """

        def release(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT lines, state FROM reservations WHERE key = ?", (key,))
            found = row.fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO reservations (key, order_id, lines, state) "
                    "VALUES (?, ?, '{}', 'released')",
                    (key, order_id),
                )
                return
            lines, state = found
            if state == "released":
                return
            for sku, qty in json.loads(lines).items():
                conn.execute("UPDATE stock SET on_hand = on_hand + ? WHERE sku = ?", (qty, sku))
            conn.execute("UPDATE reservations SET state = 'released' WHERE key = ?", (key,))

        await self.db.transaction(release)

    def levels(self) -> dict[str, int]:
        """Units on the shelf, by article."""
        return dict(self.db.query("SELECT sku, on_hand FROM stock ORDER BY sku"))

    def held(self) -> Counter[str]:
        """Units held by reservations that were not released, by article."""
        held = Counter[str]()
        for (lines,) in self.db.query("SELECT lines FROM reservations WHERE state = 'held'"):
            held.update(json.loads(lines))
        return held
