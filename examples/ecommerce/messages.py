"""Every message the shop's services exchange, in one place.

Three kinds, each a pydantic model:

* **Events of the choreographed flow** (``OrderCreated`` ... ``OrderRejected``): each service
  publishes what it did, and the next service reacts. They are the same events as in the
  original .NET sample.
* **Commands of the orchestrated saga** (``CreateOrder``, ``ReserveStock`` ...): the
  orchestrator tells each service what to do and waits for its reply.
* **Updates for the read model** (``OrderUpdated``, ``StockUpdated``): the services publish
  them in both styles, so the projection that answers queries sees every change, whichever
  style runs the saga.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

UPDATES = "shop.updates"
"""The destination of the read-model updates (the projection consumes it in its own group)."""

PLACE = "shop.place-order"
"""Where orders to place are sent (an :class:`Order` each) when the shop runs as separate
processes: its front takes them, the order service (choreographed) or the orchestrator."""


class OrderLine(BaseModel):
    """So many units of one article, at the price they were offered at."""

    model_config = ConfigDict(frozen=True)

    sku: str
    qty: PositiveInt
    unit_price: Decimal = Field(gt=0, decimal_places=2)


class Order(BaseModel):
    """An order as the customer placed it: the data of the saga, in both styles."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...] = Field(min_length=1)

    @property
    def amount(self) -> Decimal:
        """What the customer pays: the sum of the lines."""
        return sum((line.qty * line.unit_price for line in self.lines), Decimal("0.00"))

    @property
    def items(self) -> dict[str, int]:
        """Units wanted, by article."""
        wanted: dict[str, int] = {}
        for line in self.lines:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.qty
        return wanted

    def describe_items(self) -> str:
        """The basket in a few words: ``"2x book, lamp"``."""
        return ", ".join(sku if qty == 1 else f"{qty}x {sku}" for sku, qty in self.items.items())


# -- the choreographed flow: each service reacts to the previous one's event ------------------


class OrderCreated(BaseModel):
    """The order service took an order: the flow starts."""

    order: Order


class StockReserved(BaseModel):
    """The stock service holds the order's units; the payment service charges next."""

    order: Order


class StockNotAvailable(BaseModel):
    """The stock service cannot hold the units: the order is rejected."""

    order_id: str
    reason: str


class PaymentCompleted(BaseModel):
    """The payment service charged the customer: the order completes."""

    order_id: str
    payment_id: str


class PaymentFailed(BaseModel):
    """The payment service declined: the stock is released (the compensation)."""

    order_id: str
    reason: str


class StockReleased(BaseModel):
    """The stock service put the units back: the order is rejected."""

    order_id: str
    reason: str


class OrderCompleted(BaseModel):
    """The order service completed the order: the flow ends, completed."""

    order_id: str


class OrderRejected(BaseModel):
    """The order service rejected the order: the flow ends, compensated."""

    order_id: str
    reason: str


# -- the orchestrated saga: commands to each service, and their compensations ----------------


class CreateOrder(BaseModel):
    """Record the order as pending (undone by :class:`RejectOrder`)."""

    order: Order


class RejectOrder(BaseModel):
    """Mark the order rejected: the compensation of :class:`CreateOrder`."""

    order: Order


class ReserveStock(BaseModel):
    """Hold the order's units (undone by :class:`ReleaseStock`)."""

    order: Order


class ReleaseStock(BaseModel):
    """Put the order's units back: the compensation of :class:`ReserveStock`."""

    order: Order


class ChargePayment(BaseModel):
    """Charge the customer for the order (the saga's point of no return)."""

    order: Order


class PaymentTaken(BaseModel):
    """The reply to :class:`ChargePayment`: the payment's id, kept in the saga's data."""

    payment_id: str


class CompleteOrder(BaseModel):
    """Mark the order completed."""

    order: Order


# -- a customer's cancellation, in both styles ------------------------------------------------


class CancelOrder(BaseModel):
    """Cancel the order if it is not paid yet. Sent to the payment service, where the charge
    (the point of no return) happens: a cancelled order is then declined, and its saga
    compensates as for any refusal; an order already paid stays paid."""

    order_id: str


# -- updates for the read model --------------------------------------------------------------


class OrderUpdated(BaseModel):
    """An order as it is now. ``status`` only moves forward: pending, then completed or
    rejected, so the projection keeps the furthest one it heard."""

    order_id: str
    customer_id: str
    items: dict[str, int]
    amount: Decimal
    status: str
    reason: str = ""


class StockUpdated(BaseModel):
    """An article's stock level after a change. ``version`` counts the article's changes, so
    the projection keeps the newest level even when updates arrive out of order."""

    sku: str
    on_hand: int
    version: int
