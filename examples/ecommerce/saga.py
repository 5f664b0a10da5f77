"""The ``place-order`` saga: from checkout to a confirmed order, or to no trace at all.

::

    create_order ─▶ reserve_stock ─▶ take_payment ─▶ complete_order ═▶ send_confirmation
         │               │                │            (the pivot)        (retriable)
    cancel_order ◀─ release_stock ◀─ refund_payment

When stock is short or the payment is declined, the steps that already ran are undone in
reverse order, and the order ends cancelled with nothing reserved and nothing charged.

**Why ``complete_order`` is the pivot.** A payment can be refunded, so taking it is not the
point of no return: if anything fails up to that point, the customer gets the money back.
Confirming the order is: once it is confirmed, the customer has been told and the warehouse
starts picking, so from there the saga only goes forward. Steps after the pivot, like
sending the confirmation, are *retriable*: retried until they succeed, never compensated.

Every step passes ``ctx.idempotency_key`` (or the order id, which the order service uses as its
key) to the service it calls, and the compensation passes the same key: after a crash the
orchestrator may run a step or a compensation again, and the services make sure that the
second call changes nothing.
"""

from __future__ import annotations

from pysaga import BusinessError, Retry, Saga, StepContext

from .models import Order
from .orders import OrderService
from .payments import PaymentDeclined, PaymentService
from .stock import OutOfStock, StockService

__all__ = ("build_place_order",)


def build_place_order(
    orders: OrderService, stock: StockService, payments: PaymentService
) -> Saga[Order]:
    """Declare the ``place-order`` saga over these services.

    A function rather than a module-level saga only so that the demo and its tests can hand
    each run its own services; an application would declare its sagas at import time.
    """
    place_order = Saga("place-order", Order, version=1)

    @place_order.step
    async def create_order(order: Order) -> None:
        await orders.create(order)

    @create_order.compensate
    async def cancel_order(order: Order) -> None:
        await orders.cancel(order)

    @place_order.step
    async def reserve_stock(order: Order, ctx: StepContext) -> None:
        try:
            await stock.reserve(order.order_id, order.lines, key=ctx.idempotency_key)
        except OutOfStock as exc:
            # A business "no": retrying will not help, so the saga turns back at once.
            details = {"sku": exc.sku, "available": exc.available, "wanted": exc.wanted}
            raise BusinessError(str(exc), details=details) from exc

    @reserve_stock.compensate
    async def release_stock(order: Order, ctx: StepContext) -> None:
        await stock.release(order.order_id, key=ctx.idempotency_key)

    # The gateway may hiccup: try up to three times, with the same key each time, so that a
    # retry can never charge twice. A timed-out attempt counts as "maybe charged": if the saga
    # then turns back, it is refunded (the refund copes with "nothing was charged" too).
    @place_order.step(retry=Retry(attempts=3, backoff=0.05), timeout=5)
    async def take_payment(order: Order, ctx: StepContext) -> Order:
        try:
            payment_id = await payments.charge(
                order.order_id, order.customer_id, order.amount, key=ctx.idempotency_key
            )
        except PaymentDeclined as exc:
            raise BusinessError(str(exc)) from exc
        # The returned data replaces the saga's data (and is saved in the saga log).
        return order.model_copy(update={"payment_id": payment_id})

    @take_payment.compensate
    async def refund_payment(order: Order, ctx: StepContext) -> None:
        await payments.refund(order.order_id, order.customer_id, key=ctx.idempotency_key)

    @place_order.step(pivot=True)
    async def complete_order(order: Order) -> None:
        assert order.payment_id is not None, "take_payment sets it"
        await orders.confirm(order.order_id, order.payment_id)

    @place_order.step
    async def send_confirmation(order: Order, ctx: StepContext) -> None:
        await orders.send_confirmation(order, key=ctx.idempotency_key)

    return place_order
