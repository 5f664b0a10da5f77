"""The shop's data: what an order carries through the ``place-order`` saga.

The saga's data is one pydantic model. The orchestrator stores it in the saga log as JSON
after every step that changes it, so amounts are ``Decimal`` (exact, and written as strings)
and everything in it must survive a round trip through JSON.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class OrderLine(BaseModel):
    """So many units of one article, at the price they were offered at."""

    model_config = ConfigDict(frozen=True)

    sku: str
    qty: PositiveInt
    unit_price: Decimal = Field(gt=0, decimal_places=2)

    @property
    def subtotal(self) -> Decimal:
        return self.qty * self.unit_price


class Order(BaseModel):
    """An order, as the ``place-order`` saga carries it from checkout to confirmation."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...] = Field(min_length=1)
    payment_id: str | None = None
    """Set by the ``take_payment`` step: the receipt the order is confirmed with."""

    @property
    def amount(self) -> Decimal:
        """What the customer pays: the sum of the lines."""
        return sum((line.subtotal for line in self.lines), Decimal("0.00"))

    def describe_items(self) -> str:
        """The basket in a few words: ``"2x book, lamp"``."""
        return ", ".join(
            line.sku if line.qty == 1 else f"{line.qty}x {line.sku}" for line in self.lines
        )
