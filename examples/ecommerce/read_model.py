"""The query side (CQRS): a read model kept up to date by a projection of the services' events.

Commands change state through the saga, in the services' own databases. Queries never touch
those: they read the read model, a SQLite file of its own shaped for the questions asked
(an order by id, orders by status, stock levels). The :class:`Projection` fills it from the
:class:`~.messages.OrderUpdated` and :class:`~.messages.StockUpdated` events that the
services publish, consuming them in its own consumer group, ``read-model``.

The read model is *eventually* consistent: it shows a change a moment after the service made
it. The projection is idempotent, and does not mind events arriving twice or out of order:
an order's status only moves forward, and a stock level is kept only if its version is newer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self

from pysaga import Envelope

from .database import SqliteDatabase, from_cents, to_cents
from .messages import UPDATES, OrderUpdated, StockUpdated

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from pysaga import Broker
    from pysaga.messaging import Subscription

__all__ = ("OrderView", "Projection", "ReadModel")


@dataclass(frozen=True)
class OrderView:
    """An order as the read model answers it."""

    order_id: str
    customer_id: str
    items: dict[str, int]
    amount: Decimal
    status: str
    reason: str


class ReadModel:
    """The read model's SQLite file: writes come from the projection, reads from queries."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS orders (
            order_id     TEXT PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            items        TEXT NOT NULL,
            amount_cents INTEGER NOT NULL,
            status       TEXT NOT NULL,
            reason       TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, order_id);
        CREATE TABLE IF NOT EXISTS stock (
            sku     TEXT PRIMARY KEY,
            on_hand INTEGER NOT NULL,
            version INTEGER NOT NULL
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, self.SCHEMA)

    async def apply(self, update: OrderUpdated | StockUpdated) -> None:
        """Fold one update in; an older or repeated one changes nothing."""
        async with self.db.transaction() as tx:
            if isinstance(update, StockUpdated):
                await tx.execute(
                    "INSERT INTO stock (sku, on_hand, version) VALUES ($1, $2, $3) "
                    "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, "
                    "version = excluded.version WHERE excluded.version > stock.version",
                    update.sku,
                    update.on_hand,
                    update.version,
                )
            else:
                await tx.execute(
                    "INSERT INTO orders (order_id, customer_id, items, amount_cents, status, "
                    "reason) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO UPDATE "
                    "SET status = excluded.status, reason = excluded.reason "
                    "WHERE orders.status = 'pending'",
                    update.order_id,
                    update.customer_id,
                    json.dumps(update.items),
                    to_cents(update.amount),
                    update.status,
                    update.reason,
                )

    def order(self, order_id: str) -> OrderView | None:
        """One order, or ``None`` if the read model has not heard of it (yet)."""
        rows = self.db.query(f"{_ORDERS} WHERE order_id = $1", order_id)
        return _view(rows[0]) if rows else None

    def orders(self, status: str | None = None) -> list[OrderView]:
        """Every order, or those in *status*, by id."""
        if status is None:
            return [_view(row) for row in self.db.query(f"{_ORDERS} ORDER BY order_id")]
        rows = self.db.query(f"{_ORDERS} WHERE status = $1 ORDER BY order_id", status)
        return [_view(row) for row in rows]

    def stock_levels(self) -> dict[str, int]:
        """Units on the shelf, by article."""
        return dict(self.db.query("SELECT sku, on_hand FROM stock ORDER BY sku"))

    def close(self) -> None:
        self.db.close()


_ORDERS = "SELECT order_id, customer_id, items, amount_cents, status, reason FROM orders"


def _view(row: tuple[Any, ...]) -> OrderView:
    order_id, customer_id, items, cents, status, reason = row
    return OrderView(order_id, customer_id, json.loads(items), from_cents(cents), status, reason)


class Projection:
    """Consumes the services' updates in its own group and writes them to a read model.

    Enter it before the first update is published (the group then exists, and the broker
    keeps what arrives while the projection is busy or down).
    """

    GROUP = "read-model"

    def __init__(self, read_model: ReadModel, broker: Broker) -> None:
        self.read_model = read_model
        self._broker = broker
        self._subscription: Subscription | None = None

    async def _handle(self, envelope: Envelope) -> None:
        if envelope.type == "StockUpdated":
            await self.read_model.apply(envelope.parse(StockUpdated))
        elif envelope.type == "OrderUpdated":
            await self.read_model.apply(envelope.parse(OrderUpdated))

    async def __aenter__(self) -> Self:
        self._subscription = await self._broker.subscribe(UPDATES, self._handle, group=self.GROUP)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
