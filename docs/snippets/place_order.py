"""The shop in a few lines: reserve stock, take the payment, confirm the order."""

# --8<-- [start:saga]
from collections import Counter
from decimal import Decimal

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Saga, StepContext

stock = Counter(book=5)  # stand-ins for the stock and order services
reserved: dict[str, int] = {}
confirmed: list[str] = []


class Order(BaseModel):
    order_id: str
    sku: str
    qty: int
    amount: Decimal
    paid: bool = False


place_order = Saga("place-order", Order, version=1)


@place_order.step
async def reserve_stock(order: Order, ctx: StepContext) -> None:
    if stock[order.sku] < order.qty:
        raise BusinessError("out of stock")  # a business "no": compensate, don't retry
    stock[order.sku] -= order.qty
    reserved[ctx.idempotency_key] = order.qty


@reserve_stock.compensate
async def release_stock(order: Order, ctx: StepContext) -> None:
    stock[order.sku] += reserved.pop(ctx.idempotency_key, 0)  # idempotent: once only


@place_order.step(pivot=True)  # the point of no return
async def take_payment(order: Order) -> Order:
    if order.amount > 100:
        raise BusinessError("payment declined")
    return order.model_copy(update={"paid": True})


@place_order.step  # after the pivot: retried until it succeeds, never undone
async def confirm_order(order: Order) -> None:
    confirmed.append(order.order_id)


async def main(log: str = "sqlite:///shop.db") -> None:
    async with Orchestrator(sagas=[place_order], log=log) as orch:
        book = {"sku": "book", "qty": 1}
        ok = await orch.run(place_order, {"order_id": "o-1", **book, "amount": 12})
        no = await orch.run(place_order, {"order_id": "o-2", **book, "amount": 900})
        print(ok.status, no.status, no.failure)  # completed compensated step 'take_payment': ...


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:saga]
