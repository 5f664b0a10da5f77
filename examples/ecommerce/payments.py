"""The payment service: customer accounts, and a payment per order taken from them.

It owns its data (its own database: see ``database.py``) and talks to the other services
only through messages: :func:`payment_participant` makes its :class:`~pysaga.Participant` for
both styles. A payment is keyed by the order id, so charging an order again returns the first
payment. It also takes the customers' cancellations (:class:`~.messages.CancelOrder`): the
charge is the point of no return, so this is where the two meet.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pysaga import BusinessError, HandlerContext, Participant

from .database import from_cents, to_cents
from .flows import purchase
from .messages import (
    CancelOrder,
    ChargePayment,
    Order,
    PaymentCompleted,
    PaymentFailed,
    PaymentTaken,
    StockReserved,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pysaga import Broker

    from .database import Database, Transaction

__all__ = (
    "CANCELLED",
    "PaymentDeclined",
    "PaymentService",
    "TooLateToCancel",
    "payment_participant",
)


CANCELLED = "cancelled by the customer"
"""Why an order that was cancelled before it was charged is declined."""


class PaymentDeclined(Exception):
    """The customer's balance does not cover the order, or the order was cancelled."""


class TooLateToCancel(Exception):
    """The order was charged before its cancellation arrived."""


class PaymentService:
    """Customer balances, and what became of each order's payment: ``charged``, or
    ``cancelled`` before it could be (amounts kept in cents).

    The charge is the flow's point of no return, so this is where a customer's cancellation
    and the charge meet: whichever comes first is recorded for the order, and the other finds
    it. A cancelled order is declined, and its saga compensates; a charged one can no longer
    be cancelled.

    Every operation that changes the books takes the handler's ``ctx`` when a handler calls
    it, so that its writes join the message's transaction where there is one (see
    :meth:`.database.Database.transaction`).
    """

    TABLES = """
        CREATE TABLE IF NOT EXISTS accounts (
            customer_id   TEXT PRIMARY KEY,
            balance_cents BIGINT NOT NULL CHECK (balance_cents >= 0)
        );
        CREATE TABLE IF NOT EXISTS payments (
            order_id     TEXT PRIMARY KEY,  -- one decision per order, whichever came first
            state        TEXT NOT NULL,     -- 'charged' or 'cancelled'
            payment_id   TEXT,              -- these three only when charged
            customer_id  TEXT,
            amount_cents BIGINT
        );
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open_accounts(self, balances: Mapping[str, Decimal]) -> None:
        """Open (or reset) customer accounts with these balances."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO accounts (customer_id, balance_cents) VALUES ($1, $2) "
                "ON CONFLICT (customer_id) DO UPDATE SET balance_cents = excluded.balance_cents",
                [(customer, to_cents(balance)) for customer, balance in balances.items()],
            )

    async def charge(self, order: Order, ctx: HandlerContext | None = None) -> str:
        """Take the order's amount from the customer's account; return the payment's id.

        Charging an order again returns the first payment, never takes a second one.

        Raises:
            PaymentDeclined: the balance does not cover the amount, or the order was
                cancelled.
        """
        cents = to_cents(order.amount)
        async with self.db.transaction(ctx) as tx:
            payment_id = f"pay-{uuid.uuid4().hex[:8]}"
            if not await tx.fetchone(
                "INSERT INTO payments (order_id, state, payment_id, customer_id, amount_cents) "
                "VALUES ($1, 'charged', $2, $3, $4) ON CONFLICT (order_id) DO NOTHING "
                "RETURNING order_id",
                order.order_id,
                payment_id,
                order.customer_id,
                cents,
            ):  # decided before: charged (the same payment, not a second) or cancelled
                state, payment_id = await _decision(tx, order.order_id)
                if state == "cancelled":
                    raise PaymentDeclined(CANCELLED)
                return payment_id
            debited = await tx.fetchone(
                "UPDATE accounts SET balance_cents = balance_cents - $1 "
                "WHERE customer_id = $2 AND balance_cents >= $1 RETURNING balance_cents",
                cents,
                order.customer_id,
            )
            if debited is None:  # the transaction is undone: no payment is recorded
                row = await tx.fetchone(
                    "SELECT balance_cents FROM accounts WHERE customer_id = $1", order.customer_id
                )
                left = from_cents(row[0] if row else 0)
                raise PaymentDeclined(f"payment declined: only {left} left")
            return payment_id

    async def cancel(self, order_id: str, ctx: HandlerContext | None = None) -> None:
        """Make sure *order_id* is never charged: a charge that comes later is declined.

        Raises:
            TooLateToCancel: the order was charged already.
        """
        async with self.db.transaction(ctx) as tx:
            await tx.execute(
                "INSERT INTO payments (order_id, state) VALUES ($1, 'cancelled') "
                "ON CONFLICT (order_id) DO NOTHING",
                order_id,
            )
            state, payment_id = await _decision(tx, order_id)
            if state == "charged":
                raise TooLateToCancel(f"too late to cancel {order_id}: it is paid ({payment_id})")

    async def balances(self) -> dict[str, Decimal]:
        """Each customer's balance."""
        rows = await self.db.fetchall(
            "SELECT customer_id, balance_cents FROM accounts ORDER BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}

    async def captured(self) -> dict[str, Decimal]:
        """Money taken, by customer."""
        rows = await self.db.fetchall(
            "SELECT customer_id, sum(amount_cents) FROM payments WHERE state = 'charged' "
            "GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}


async def _decision(tx: Transaction, order_id: str) -> tuple[str, str]:
    """What was decided for *order_id*: ``("charged", payment id)`` or ``("cancelled", "")``."""
    row = await tx.fetchone("SELECT state, payment_id FROM payments WHERE order_id = $1", order_id)
    assert row is not None, "called after an insert of the order's row"
    return row[0], row[1] or ""


def payment_participant(
    payments: PaymentService, *, broker: str | Broker, **options: Any
) -> Participant:
    """The payment service on the broker, for both styles of the flow."""
    service = Participant("payments", broker=broker, flows=[purchase], **options)

    # -- both styles: a customer's cancellation ---------------------------------------------

    @service.handles(CancelOrder)
    async def cancel(cmd: CancelOrder, ctx: HandlerContext) -> None:
        try:
            await payments.cancel(cmd.order_id, ctx)
        except TooLateToCancel as refusal:
            raise BusinessError(str(refusal)) from None  # recorded; the order stays paid

    # -- orchestrated: the command of the saga's pivot step ----------------------------------

    @service.handles(ChargePayment)
    async def charge(cmd: ChargePayment, ctx: HandlerContext) -> PaymentTaken:
        try:
            return PaymentTaken(payment_id=await payments.charge(cmd.order, ctx))
        except PaymentDeclined as refusal:
            raise BusinessError(str(refusal)) from None

    # -- choreographed: the reaction to the stock being held ---------------------------------

    @service.on(StockReserved)
    async def on_stock_reserved(event: StockReserved, ctx: HandlerContext) -> None:
        order_id = event.order.order_id
        try:
            payment_id = await payments.charge(event.order, ctx)
        except PaymentDeclined as refusal:
            await ctx.publish(PaymentFailed(order_id=order_id, reason=str(refusal)))
            return
        await ctx.publish(PaymentCompleted(order_id=order_id, payment_id=payment_id))

    return service
