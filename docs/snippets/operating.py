"""Operator actions: retry a saga whose compensation gave up, abort one whose step hangs, and
resolve one settled by hand, with an ``Operator`` on the log an orchestrator is running on.

``main()`` runs everything in one process on one SQLite log; an ``Operator`` in an admin
script or the ``pysaga`` command does the same from another process.
"""

from __future__ import annotations

from typing import ClassVar

import anyio
from pydantic import BaseModel

from pysaga import Operator, OperatorActionRefused, Orchestrator, Retry, Saga


class Order(BaseModel):
    order_id: str
    amount: int


class Bank:
    """A stand-in payment service that can be down, and a courier that can stop answering."""

    up = True
    courier_answers = True
    refunds: ClassVar[list[str]] = []


ship_order = Saga("ship-order", Order)


@ship_order.step(retry=Retry(attempts=1))
async def charge(order: Order) -> None:
    pass


@charge.compensate(retry=Retry(attempts=2, backoff=0.01, jitter=0))
async def refund(order: Order) -> None:
    if not Bank.up:
        raise ConnectionError("bank unreachable")
    Bank.refunds.append(order.order_id)


@ship_order.step(retry=Retry(attempts=1))
async def book_courier(order: Order) -> None:
    if order.amount > 1000:
        raise ValueError("too heavy for the courier")
    if not Bank.courier_answers:
        await anyio.sleep_forever()  # a participant that never replies


async def main(log: str = "sqlite:///shop.db") -> None:
    async with Orchestrator(sagas=[ship_order], log=log, lease=1.0) as orch:
        # the refund gives up while the bank is down: the saga ends FAILED
        Bank.up = False
        failed = await orch.run(ship_order, Order(order_id="o-1", amount=5000), saga_id="o-1")
        print(failed.status.value, "-", failed.compensation_failure)  # what it is stuck on

        # --8<-- [start:retry]
        Bank.up = True  # the cause is fixed first: the retry runs the same code
        async with Operator(log) as operator:
            await operator.retry(failed.saga_id, reason="bank is back", by="alice")
        # --8<-- [end:retry]
        outcome = await orch.wait(failed.saga_id)
        print(outcome.status.value, "- refunded:", Bank.refunds)

        # a courier that never answers: abort the running saga
        Bank.courier_answers = False
        stuck_id = await orch.start(ship_order, Order(order_id="o-2", amount=10), saga_id="o-2")
        await anyio.sleep(0.1)
        # --8<-- [start:abort]
        async with Operator(log) as operator:
            try:
                await operator.resolve(stuck_id, reason="shipped by hand")
            except OperatorActionRefused as refused:
                print(refused)
            await operator.abort(stuck_id, reason="customer cancelled", by="bob")
        # --8<-- [end:abort]
        outcome = await orch.wait(stuck_id)
        print(outcome.status.value, "-", outcome.failure)

        # a refund that nobody can make: settled by hand, then resolved
        Bank.up = False
        failed = await orch.run(ship_order, Order(order_id="o-3", amount=5000), saga_id="o-3")
        # --8<-- [start:resolve]
        async with Operator(log) as operator:
            await operator.resolve(failed.saga_id, reason="refunded by bank transfer", by="carol")
            history = await operator.log.history(failed.saga_id)
        # --8<-- [end:resolve]
        last = history[-1]
        print((await orch.wait(failed.saga_id)).status.value, "-", last.kind, "by", last.owner)


if __name__ == "__main__":
    anyio.run(main)
