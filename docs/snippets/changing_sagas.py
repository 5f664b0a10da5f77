"""Changing a saga while instances are in flight: three deploys of a shipping saga.

1. Version 1 runs; two orders wait for the payment provider when the deploy stops it.
2. The next deploy renames a step but keeps ``version=1``: the orders in flight are held for
   an operator, not driven. The operator aborts one of them, to move it to the new shape.
3. The fixed deploy hosts version 1 (the original, until its sagas drain) and version 2 (the
   new shape): one order finishes on version 1, the aborted one is compensated on version 1
   and started again on version 2.

Run it with ``python changing_sagas.py``; it writes its saga log to ``shipping.db``.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel

from pysaga import Inspector, Operator, Orchestrator, Saga, SagaVersion, StepContext

payments_up = anyio.Event()  # the payment provider answers once this is set
charging: set[str] = set()  # orders whose charge step has started
both_charging = anyio.Event()
reserved: dict[str, str] = {}  # the warehouse: idempotency key -> order id


class Order(BaseModel):
    order_id: str
    item: str


# --8<-- [start:define]
def shipping(version: int, *, reserve_step: str) -> Saga[Order]:
    """reserve (undone by release) -> charge -> ship; only the first step's name varies."""
    saga = Saga("ship-order", Order, version=version)

    async def reserve(order: Order, ctx: StepContext) -> None:
        reserved[ctx.idempotency_key] = order.order_id

    async def release(order: Order, ctx: StepContext) -> None:
        reserved.pop(ctx.idempotency_key, None)

    saga.step(name=reserve_step)(reserve).compensate(release)

    @saga.step
    async def charge(order: Order) -> None:
        charging.add(order.order_id)
        if len(charging) == 2:
            both_charging.set()
        await payments_up.wait()

    @saga.step
    async def ship(order: Order) -> None:
        return None

    return saga


ship_order = shipping(1, reserve_step="reserve")  # what version 1 always was
edited = shipping(1, reserve_step="reserve_stock")  # a rename that forgot the version
ship_order_v2 = shipping(2, reserve_step="reserve_stock")  # the same change, done right
# --8<-- [end:define]


def outline(found: SagaVersion) -> str:
    counts = ", ".join(f"{status} {n}" for status, n in sorted(found.counts.items()))
    return f"{found.name} v{found.version}: {counts}"


# --8<-- [start:main]
async def main(log: str = "sqlite:///shipping.db") -> list[SagaVersion]:
    # Deploy 1: two orders start and wait for the payment provider; then the deploy stops.
    async with Orchestrator(sagas=[ship_order], log=log, drain_timeout=0) as orch:
        for order_id in ("order-a", "order-b"):
            await orch.start(ship_order, Order(order_id=order_id, item="lamp"), saga_id=order_id)
        await both_charging.wait()

    # Deploy 2: the renamed step under the same version. The orders are held, not driven.
    async with Orchestrator(sagas=[edited], log=log) as orch:
        for record in await Inspector(orch.log).held():
            what = (record.held or "").partition(". ")[0]
            print(f"deploy 2: {record.saga_id} {record.status}, held: {what}")
        # order-b moves to the new shape: abort it (it compensates on the definition it was
        # started on, once that is hosted again), then start it again on the newest version
        await Operator(orch.log).abort("order-b", reason="move to version 2", by="ops")

    # Deploy 3: version 1 (until its sagas drain) beside version 2 (what new sagas start on).
    payments_up.set()
    async with Orchestrator(sagas=[ship_order, ship_order_v2], log=log) as orch:
        done = await orch.wait("order-a")
        print(f"deploy 3: order-a {done.status} on version {(await orch.get('order-a')).version}")
        undone = await orch.wait("order-b")
        again = await orch.run("ship-order", undone.data, saga_id="order-b2")
        version = (await orch.get("order-b2")).version
        print(f"deploy 3: order-b {undone.status}, then order-b2 {again.status} on v{version}")
        versions = [v for v in await Inspector(orch.log).versions() if v.total]
    for found in versions:
        print(outline(found))
    return versions


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
