"""The application layer: the shop's commands and queries, in one object.

:class:`ShopApp` is what a front end calls: the demo does, and an HTTP front would map
``POST /orders`` to :meth:`~ShopApp.place_order` and ``GET /orders/...`` to the queries.

* **Commands** change state through the saga. :meth:`~ShopApp.place_order` returns the order
  id at once: the saga is recorded (orchestrated) or its first event published
  (choreographed), and runs on its own from there.
* **Queries** read the read model (see ``read_model.py``), never the services' databases.
  They answer what the projection has heard so far.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Literal

from pysaga import Envelope

from .flows import PlaceOrder, place_order, purchase
from .messages import UPDATES, Order, OrderCreated, OrderLine

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pysaga import Broker, Orchestrator

    from .orders import OrderService
    from .read_model import OrderView, ReadModel

__all__ = ("ShopApp", "Style", "take_order")

Style = Literal["orchestrated", "choreographed"]


class ShopApp:
    """The shop's commands and queries.

    Args:
        style: How the place-order saga runs.
        broker: The entered broker the services listen on.
        read_model: What queries read.
        orders: The order service's data (choreographed: the order service takes the order
            and publishes the flow's first event, as the original sample's API does).
        orchestrator: The running orchestrator (orchestrated style only).
    """

    def __init__(
        self,
        *,
        style: Style,
        broker: Broker,
        read_model: ReadModel,
        orders: OrderService,
        orchestrator: Orchestrator | None = None,
    ) -> None:
        if style == "orchestrated" and orchestrator is None:
            raise ValueError("the orchestrated style needs a running orchestrator")
        self.style = style
        self._broker = broker
        self._read_model = read_model
        self._orders = orders
        self._orchestrator = orchestrator

    # -- commands ------------------------------------------------------------------------------

    async def place_order(
        self, customer_id: str, lines: Iterable[OrderLine], *, order_id: str | None = None
    ) -> str:
        """Place an order; return its id at once, while its saga runs.

        The order id is the saga's id too: placing the same id again (a retried request) is
        the same saga, never a second one.

        Raises:
            pydantic.ValidationError: the order is not valid (no lines, say).
        """
        order = Order(
            order_id=order_id or f"o-{uuid.uuid4().hex[:12]}",
            customer_id=customer_id,
            lines=tuple(lines),
        )
        if self._orchestrator is not None:
            await self._orchestrator.start(
                place_order, PlaceOrder(order=order), saga_id=order.order_id
            )
        else:
            await self._take(order)
        return order.order_id

    async def _take(self, order: Order) -> None:
        """Choreographed: record the order as pending, then publish the flow's first event.

        Both the update and the event have ids made from the order id, so doing this again
        (:meth:`resend_pending` after a crash in between) publishes the same messages, which
        the receivers' inboxes drop.
        """
        await take_order(self._broker, self._orders, order)

    async def resend_pending(self) -> int:
        """Choreographed: publish again the first event of every pending order (a crash may
        have come between recording one and publishing its event); return how many.

        The pending order is its own outbox: the order service runs this when it starts."""
        pending = self._orders.pending()
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
