"""The application layer: the shop's commands and queries, in one object.

:class:`ShopApp` is what a front end calls: the demo does, and the HTTP front (``http.py``)
maps ``POST /orders`` to :meth:`~ShopApp.place_order`, ``POST /orders/{id}/cancel`` to
:meth:`~ShopApp.cancel_order` and ``GET /orders/...`` to the queries.

* **Commands** change state through the saga. :meth:`~ShopApp.place_order` returns the order
  id at once: the saga is recorded (orchestrated) or its first event published
  (choreographed), and runs on its own from there. :meth:`~ShopApp.cancel_order` asks for an
  order that is not paid yet to be called off: its saga then compensates.
* **Queries** read the read model (see ``read_model.py``), never the services' databases.
  They answer what the projection has heard so far.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Literal

from pysaga import ConcurrencyError, Envelope, SagaStatus

from .flows import PlaceOrder, place_order, purchase
from .messages import PLACE, UPDATES, CancelOrder, Order, OrderCreated, OrderLine

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pysaga import Broker, Orchestrator

    from .orders import OrderService
    from .read_model import OrderView, ReadModel

__all__ = (
    "PAYMENTS",
    "OrderIdTaken",
    "OrderSettled",
    "ShopApp",
    "Style",
    "UnknownOrder",
    "cancellation",
    "take_order",
)

Style = Literal["orchestrated", "choreographed"]

PAYMENTS = "payments"
"""The payment service's name, and the destination of its commands (cancellations too)."""

_ORDER_STATUS = {
    SagaStatus.COMPLETED: "completed",
    SagaStatus.COMPENSATED: "rejected",
}
"""The order's status once its orchestrated saga has ended this way."""


class OrderIdTaken(ValueError):
    """A different order was placed under this id before."""

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"order id {order_id!r} is taken by a different order; place the same order to "
            "retry it, or leave the id out to get a new one"
        )
        self.order_id = order_id


class UnknownOrder(LookupError):
    """No order was placed under this id."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no order {order_id!r} was placed")
        self.order_id = order_id


class OrderSettled(ValueError):
    """The order has completed or was rejected: there is nothing left to cancel."""

    def __init__(self, order_id: str, status: str) -> None:
        super().__init__(f"order {order_id!r} is {status} already: there is nothing to cancel")
        self.order_id = order_id
        self.status = status


class ShopApp:
    """The shop's commands and queries.

    Where the commands go depends on what runs beside the application layer:

    * the orchestrator (orchestrated style, in one process): it starts the saga;
    * the order service's data (choreographed style, in one process): the order service takes
      the order and publishes the flow's first event, as the original sample's API does;
    * neither (the shop runs as separate processes, ``distributed.py``): the order is sent to
      the shop's front, :data:`~.messages.PLACE`, where the order service or the orchestrator
      takes it, and a command checks what it needs against the read model.

    Args:
        broker: The entered broker the services listen on.
        read_model: What queries read.
        orders: The order service's data, if it runs in this process.
        orchestrator: The running orchestrator, if it runs in this process.
    """

    def __init__(
        self,
        *,
        broker: Broker,
        read_model: ReadModel,
        orders: OrderService | None = None,
        orchestrator: Orchestrator | None = None,
    ) -> None:
        self.style: Style | None = (
            "orchestrated" if orchestrator else "choreographed" if orders else None
        )
        """How the saga runs, if it runs in this process."""
        self._broker = broker
        self._read_model = read_model
        self._orders = orders
        self._orchestrator = orchestrator

    # -- commands ------------------------------------------------------------------------------

    async def place_order(
        self, customer_id: str, lines: Iterable[OrderLine], *, order_id: str | None = None
    ) -> str:
        """Place an order; return its id at once, while its saga runs.

        The order id is the saga's id too: placing the same order again under its id (a
        retried request) is the same saga, never a second one.

        Raises:
            pydantic.ValidationError: the order is not valid (no lines, say).
            OrderIdTaken: a different order was placed under this id.
        """
        order = Order(
            order_id=order_id or f"o-{uuid.uuid4().hex[:12]}",
            customer_id=customer_id,
            lines=tuple(lines),
        )
        if self._orchestrator is not None:
            try:
                await self._orchestrator.start(
                    place_order, PlaceOrder(order=order), saga_id=order.order_id
                )
            except ConcurrencyError:  # a saga has this id: the same order again, or not?
                record = await self._orchestrator.log.get(order.order_id)
                if record is None or PlaceOrder.model_validate_json(record.data).order != order:
                    raise OrderIdTaken(order.order_id) from None
        elif self._orders is not None:
            placed = await self._orders.find(order.order_id)
            if placed is not None and placed != order:
                raise OrderIdTaken(order.order_id)
            await self._take(order)
        else:  # the front takes it; a copy of the same order is dropped there
            known = self._read_model.order(order.order_id)
            if known is not None and (known.customer_id, known.items, known.amount) != (
                order.customer_id,
                order.items,
                order.amount,
            ):
                raise OrderIdTaken(order.order_id)
            await self._broker.publish(PLACE, Envelope.of(order, id=f"{order.order_id}#place"))
        return order.order_id

    async def cancel_order(self, order_id: str) -> None:
        """Ask for the order to be cancelled; return at once, while that happens.

        The cancellation goes to the payment service, where the charge, the point of no
        return, happens. If it arrives first, the order is declined there and its saga
        compensates: the order ends ``rejected``, "cancelled by the customer". If the charge
        came first, the order completes as placed. Either way :meth:`get_order` tells, once the
        saga has ended. Asking again changes nothing.

        Raises:
            UnknownOrder: no order was placed under this id.
            OrderSettled: the order has completed or was rejected already.
        """
        status = await self._status(order_id)
        if status is None:
            raise UnknownOrder(order_id)
        if status != "pending":
            raise OrderSettled(order_id, status)
        await self._broker.publish(PAYMENTS, cancellation(order_id))

    async def _status(self, order_id: str) -> str | None:
        """Where the order stands now, from the service that decides it if it runs here (else
        from the read model): ``pending``, ``completed``, ``rejected``, or ``None`` if no
        order has this id."""
        if self._orchestrator is not None:
            record = await self._orchestrator.log.get(order_id)
            if record is None:
                return None
            if not record.status.is_terminal:
                return "pending"
            return _ORDER_STATUS.get(record.status, record.status.value)
        if self._orders is not None:
            return await self._orders.status(order_id)
        view = self._read_model.order(order_id)
        return None if view is None else view.status

    async def _take(self, order: Order) -> None:
        """Choreographed: record the order as pending, then publish the flow's first event.

        Both the update and the event have ids made from the order id, so doing this again
        (:meth:`resend_pending` after a crash in between) publishes the same messages, which
        the receivers' inboxes drop.
        """
        assert self._orders is not None
        await take_order(self._broker, self._orders, order)

    async def resend_pending(self) -> int:
        """Choreographed: publish again the first event of every pending order (a crash may
        have come between recording one and publishing its event); return how many.

        The pending order is its own outbox: the order service runs this when it starts."""
        if self._orders is None:
            return 0
        pending = await self._orders.pending()
        for order in pending:
            await self._take(order)
        return len(pending)

    # -- queries -------------------------------------------------------------------------------

    def get_order(self, order_id: str) -> OrderView | None:
        """The order, or ``None`` while the read model has not heard of it."""
        return self._read_model.order(order_id)

    def list_orders(self, status: str | None = None) -> list[OrderView]:
        """Every order, or those in *status* (``pending``, ``completed``, ``rejected``)."""
        return self._read_model.orders(status)

    def stock_levels(self) -> dict[str, int]:
        """Units on the shelf, by article."""
        return self._read_model.stock_levels()


def cancellation(order_id: str) -> Envelope:
    """The cancellation of *order_id*, for the payment service (:data:`PAYMENTS`). Its id is
    made from the order id, so asking twice is one cancellation: the inbox drops the copy."""
    return Envelope.of(
        CancelOrder(order_id=order_id), id=f"{order_id}#cancel", correlation_id=order_id
    )


async def take_order(broker: Broker, orders: OrderService, order: Order) -> None:
    """Choreographed: the order service takes *order*. It records it as pending, publishes
    the update for the read model, then the flow's first event (``OrderCreated``).

    Both messages have ids made from the order id, so taking the same order again (a retried
    request, or a resend after a crash in between) publishes the same messages, which the
    receivers' inboxes drop. :class:`ShopApp` calls this in one process; the order service
    does when it runs as a process of its own (``distributed.py``).
    """
    update = await orders.create(order)
    await broker.publish(UPDATES, Envelope.of(update, id=f"{order.order_id}#placed"))
    await purchase.start(broker, OrderCreated(order=order), saga_id=order.order_id, source="orders")
