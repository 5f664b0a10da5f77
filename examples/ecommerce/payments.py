"""The payment service: customer accounts, and a payment per order taken from them.

It owns its data (its own SQLite file) and talks to the other services only through
messages: :func:`payment_participant` makes its :class:`~pysaga.Participant` for both styles.
A payment is keyed by the order id, so charging an order again returns the first payment.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pysaga import BusinessError, HandlerContext, Participant

from .database import Database, from_cents, to_cents
from .flows import purchase
from .messages import (
    ChargePayment,
    Order,
    PaymentCompleted,
    PaymentFailed,
    PaymentTaken,
    StockReserved,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping
    from pathlib import Path

    from pysaga import Broker

__all__ = ("PaymentDeclined", "PaymentService", "payment_participant")


class PaymentDeclined(Exception):
    """The customer's balance does not cover the order."""


class PaymentService:
    """Customer balances, and the payments taken from them (amounts kept in cents)."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS accounts (
            customer_id   TEXT PRIMARY KEY,
            balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0)
        );
        CREATE TABLE IF NOT EXISTS payments (
            payment_id   INTEGER PRIMARY KEY,
            order_id     TEXT NOT NULL UNIQUE,
            customer_id  TEXT NOT NULL,
            amount_cents INTEGER NOT NULL
        );
    """

    def __init__(self, path: Path) -> None:
        self.db = Database(path, self.SCHEMA)

    async def open_accounts(self, balances: Mapping[str, Decimal]) -> None:
        """Open (or reset) customer accounts with these balances."""
        await self.db.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO accounts (customer_id, balance_cents) VALUES (?, ?) "
                "ON CONFLICT (customer_id) DO UPDATE SET balance_cents = excluded.balance_cents",
                [(customer, to_cents(balance)) for customer, balance in balances.items()],
            )
        )

    async def charge(self, order: Order) -> str:
        """Take the order's amount from the customer's account; return the payment's id.

        Raises:
            PaymentDeclined: the balance does not cover the amount.
        """
        cents = to_cents(order.amount)

        def charge(conn: sqlite3.Connection) -> str:
            found = conn.execute(
                "SELECT payment_id FROM payments WHERE order_id = ?", (order.order_id,)
            ).fetchone()
            if found is not None:
                return f"pay-{found[0]:04d}"  # charged before: the same payment, not a second
            row = conn.execute(
                "SELECT balance_cents FROM accounts WHERE customer_id = ?", (order.customer_id,)
            ).fetchone()
            balance = row[0] if row else 0
            if balance < cents:
                raise PaymentDeclined(f"payment declined: only {from_cents(balance)} left")
            conn.execute(
                "UPDATE accounts SET balance_cents = balance_cents - ? WHERE customer_id = ?",
                (cents, order.customer_id),
            )
            cursor = conn.execute(
                "INSERT INTO payments (order_id, customer_id, amount_cents) VALUES (?, ?, ?)",
                (order.order_id, order.customer_id, cents),
            )
            return f"pay-{cursor.lastrowid:04d}"

        return await self.db.transaction(charge)

    def balances(self) -> dict[str, Decimal]:
        """Each customer's balance."""
        rows = self.db.query("SELECT customer_id, balance_cents FROM accounts ORDER BY 1")
        return {customer: from_cents(cents) for customer, cents in rows}

    def captured(self) -> dict[str, Decimal]:
        """Money taken, by customer."""
        rows = self.db.query(
            "SELECT customer_id, sum(amount_cents) FROM payments GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}


def payment_participant(
    payments: PaymentService, *, broker: str | Broker, **options: Any
) -> Participant:
    """The payment service on the broker, for both styles of the flow."""
    service = Participant("payments", broker=broker, flows=[purchase], **options)

    @service.handles(ChargePayment)
    async def charge(cmd: ChargePayment) -> PaymentTaken:
        try:
            return PaymentTaken(payment_id=await payments.charge(cmd.order))
        except PaymentDeclined as refusal:
            raise BusinessError(str(refusal)) from None

    @service.on(StockReserved)
    async def on_stock_reserved(event: StockReserved, ctx: HandlerContext) -> None:
        order_id = event.order.order_id
        try:
            payment_id = await payments.charge(event.order)
        except PaymentDeclined as refusal:
            await ctx.publish(PaymentFailed(order_id=order_id, reason=str(refusal)))
            return
        await ctx.publish(PaymentCompleted(order_id=order_id, payment_id=payment_id))

    return service
