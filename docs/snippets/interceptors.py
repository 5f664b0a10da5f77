"""Interceptors: log every attempt of every step, and time the slow ones.

Run it with ``python interceptors.py``; it keeps its saga log in memory.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Retry, Saga, StepCall
from pysaga.interceptors import Proceed

logging.basicConfig(level=logging.INFO, format="%(message)s")
audit = logging.getLogger("shop.audit")


class Order(BaseModel):
    order_id: str
    amount: int


place_order = Saga("place-order", Order)
flaky = {"calls": 0}


@place_order.step(retry=Retry(attempts=3, backoff=0, jitter=0))
async def reserve_stock(order: Order) -> None:
    flaky["calls"] += 1
    if flaky["calls"] == 1:
        raise ConnectionError("warehouse busy")


@reserve_stock.compensate
async def release_stock(order: Order) -> None:
    return None


@place_order.step(pivot=True)
async def take_payment(order: Order) -> None:
    if order.amount > 100:
        raise BusinessError("card declined")


# --8<-- [start:interceptor]
async def log_attempts(call: StepCall, proceed: Proceed) -> Any:
    """Log each attempt of each step and compensation, with its outcome."""
    ctx = call.ctx
    what = "undo" if ctx.compensating else "run"
    try:
        result = await proceed(call)  # the next interceptor, then the step itself
    except Exception as exc:
        audit.info("%s %s #%d for %s: %s", what, ctx.step, ctx.attempt, ctx.saga_id, exc)
        raise  # the step's retry policy decides what happens next
    audit.info("%s %s #%d for %s: ok", what, ctx.step, ctx.attempt, ctx.saga_id)
    return result


slow: list[tuple[str, float]] = []


async def time_attempts(call: StepCall, proceed: Proceed) -> Any:
    """Keep the attempts that took longer than a second."""
    started = time.perf_counter()
    try:
        return await proceed(call)
    finally:
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            slow.append((call.ctx.step, elapsed))


async def main() -> None:
    async with Orchestrator(
        sagas=[place_order],
        log="memory://",
        interceptors=[log_attempts, time_attempts],  # outermost first
    ) as orch:
        await orch.run(place_order, Order(order_id="o-1", amount=30), saga_id="o-1")
        await orch.run(place_order, Order(order_id="o-2", amount=500), saga_id="o-2")
# --8<-- [end:interceptor]


if __name__ == "__main__":
    anyio.run(main)
