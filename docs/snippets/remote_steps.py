"""Remote steps: the shop's order saga, with stock and payments as separate services.

The saga sends each of its first two steps as a command to a service over a broker; each
service is a ``Participant`` that handles the command and replies. Here everything runs in one
process on the in-memory broker; give every part the same ``amqp://`` or ``kafka://`` URL and
they can run as separate processes, unchanged.

Run it with ``python remote_steps.py``.
"""

# --8<-- [start:messages]
from __future__ import annotations

from decimal import Decimal

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Orchestrator, Participant, Saga


class Order(BaseModel):
    """The saga's data."""

    order_id: str
    sku: str
    qty: int
    amount: Decimal
    reservation_id: str | None = None
    payment_id: str | None = None


class ReserveStock(BaseModel):
    """Command to the stock service."""

    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    """Its reply."""

    reservation_id: str


class ReleaseStock(BaseModel):
    """Undoes a reservation."""

    order_id: str


class ChargeCard(BaseModel):
    """Command to the payments service."""

    order_id: str
    amount: Decimal


class CardCharged(BaseModel):
    """Its reply."""

    payment_id: str


# --8<-- [end:messages]


# --8<-- [start:saga]
place_order = Saga("place-order", Order)

place_order.remote(
    "reserve_stock",
    service="stock",
    command=ReserveStock,  # built from Order's fields of the same names
    reply=StockReserved,  # its reservation_id is copied into Order
    compensation=ReleaseStock,
    timeout=5,
)
place_order.remote(
    "charge_card",
    service="payments",
    command=ChargeCard,
    reply=CardCharged,
    pivot=True,
)
# --8<-- [end:saga]


# --8<-- [start:stock]
stock = Participant("stock")
levels = {"book": 3}
reservations: dict[str, int] = {}  # idempotency key -> quantity


@stock.handles(ReserveStock)
async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
    if levels[cmd.sku] < cmd.qty:
        raise BusinessError(f"only {levels[cmd.sku]} {cmd.sku} left")
    levels[cmd.sku] -= cmd.qty
    reservations[ctx.idempotency_key] = cmd.qty
    return StockReserved(reservation_id=f"R-{cmd.order_id}")


@stock.compensates(ReleaseStock)
async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
    # The compensation carries the step's idempotency key: it names what to undo.
    levels["book"] += reservations.pop(ctx.idempotency_key, 0)


# --8<-- [end:stock]


# --8<-- [start:payments]
payments = Participant("payments")
charges: dict[str, Decimal] = {}


@payments.handles(ChargeCard)
async def charge(cmd: ChargeCard, ctx: HandlerContext) -> CardCharged:
    if cmd.amount > 100:
        raise BusinessError(f"card declined for {cmd.amount}")
    charges[ctx.idempotency_key] = cmd.amount
    return CardCharged(payment_id=f"P-{cmd.order_id}")


# --8<-- [end:payments]


# --8<-- [start:main]
async def main(broker: str = "memory://shop") -> None:
    stock.broker = payments.broker = broker
    async with (
        stock,
        payments,
        Orchestrator(sagas=[place_order], log="memory://", broker=broker) as orch,
    ):
        for order in (
            Order(order_id="1", sku="book", qty=2, amount=Decimal("25.00")),
            Order(order_id="2", sku="book", qty=1, amount=Decimal("250.00")),
            Order(order_id="3", sku="book", qty=5, amount=Decimal("60.00")),
        ):
            outcome = await orch.run(place_order, order)
            reason = f" ({outcome.failure.message})" if outcome.failure else ""
            print(f"order {order.order_id}: {outcome.status}{reason}")
    print(f"books left: {levels['book']}, charged: {sorted(charges.values())}")


if __name__ == "__main__":
    anyio.run(main)
# --8<-- [end:main]
