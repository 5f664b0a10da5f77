"""The place-order flow, declared twice: choreographed and orchestrated.

Both run the same business flow over the same three services: create the order, reserve its
stock, charge the customer, complete the order; when stock is short or the payment is
declined, release what was reserved and reject the order. Pick one with
``python -m examples.ecommerce --style choreographed|orchestrated``.

* :data:`purchase` is a :class:`~pysaga.Choreography`: no coordinator. It only *declares*
  which event starts a saga, which events mark each step's outcome and which end it, so that
  a :class:`~pysaga.ChoreographyObserver` can record every saga in the saga log. The services
  react to each other's events (see ``@service.on(...)`` in ``orders.py``, ``stock.py`` and
  ``payments.py``).
* :data:`place_order` is a :class:`~pysaga.Saga` of remote steps: an
  :class:`~pysaga.Orchestrator` sends each service its command, waits for the reply, and sends
  the compensations when a step says no.

Both are drawn on the example's documentation page with ``to_mermaid()``.
"""

from __future__ import annotations

from pydantic import BaseModel

from pysaga import Choreography, Saga, StepEvents

from .messages import (
    ChargePayment,
    CompleteOrder,
    CreateOrder,
    Order,
    OrderCompleted,
    OrderCreated,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
    PaymentTaken,
    RejectOrder,
    ReleaseStock,
    ReserveStock,
    StockNotAvailable,
    StockReleased,
    StockReserved,
)

__all__ = ("DEADLINE", "PlaceOrder", "place_order", "purchase")

DEADLINE = 30.0
"""Seconds a choreographed saga may take; the observer marks a slower one FAILED."""

# -- choreographed ---------------------------------------------------------------------------

purchase = Choreography(
    "purchase",
    starts=OrderCreated,
    steps={
        "reserve_stock": StepEvents(
            done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
        ),
        "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
    },
    completes=OrderCompleted,
    compensates=OrderRejected,
    deadline=DEADLINE,
)

# -- orchestrated ----------------------------------------------------------------------------


class PlaceOrder(BaseModel):
    """The orchestrated saga's data: the order, and the payment once it is taken."""

    order: Order
    payment_id: str | None = None


place_order = Saga("place-order", PlaceOrder)
place_order.remote("create_order", service="orders", command=CreateOrder, compensation=RejectOrder)
place_order.remote(
    "reserve_stock", service="stock", command=ReserveStock, compensation=ReleaseStock
)
place_order.remote(
    "charge_payment", service="payments", command=ChargePayment, reply=PaymentTaken, pivot=True
)
place_order.remote("complete_order", service="orders", command=CompleteOrder)
