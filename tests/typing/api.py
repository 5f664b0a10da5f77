"""Make sure the public API types the way its docs promise: checked by ``mypy --strict``
(in CI), never run. ``assert_type`` fails the type check when an inferred type drifts."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from pysaga import (
    BusinessError,
    Failure,
    LogEntry,
    Orchestrator,
    Retry,
    Saga,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    Step,
    StepContext,
    new_saga_id,
)


class Order(BaseModel):
    order_id: str
    paid: bool = False


place_order = Saga("place-order", Order, version=2, deadline=30.0)
assert_type(place_order, Saga[Order])


@place_order.step
async def reserve(order: Order, ctx: StepContext) -> Order:
    assert_type(ctx.idempotency_key, str)
    assert_type(ctx.attempt, int)
    return order


assert_type(reserve, Step[Order])


@reserve.compensate
async def release(order: Order, ctx: StepContext) -> None:
    return None


@place_order.step(pivot=True, retry=Retry(attempts=5, backoff=0.1, abort_on=(KeyError,)))
async def charge(order: Order) -> Order:
    if not order.order_id:
        raise BusinessError("declined", details={"why": "no id"})
    return order.model_copy(update={"paid": True})


with place_order.parallel("notify"):

    @place_order.step(timeout=2.0)
    async def email(order: Order) -> None: ...

    @place_order.step(name="text-message")
    async def sms(order: Order) -> None: ...


async def use() -> None:
    async with Orchestrator(sagas=[place_order], log="sqlite:///sagas.db", lease=10.0) as orch:
        outcome = await orch.run(place_order, Order(order_id="o-1"))
        assert_type(outcome, SagaOutcome[Order])
        assert_type(outcome.data, Order)
        assert_type(outcome.status, SagaStatus)
        assert_type(outcome.failure, Failure | None)
        saga_id = await orch.start(place_order, {"order_id": "o-2"}, saga_id=new_saga_id())
        assert_type(saga_id, str)
        assert_type(await orch.get(saga_id), SagaRecord)
        assert_type(await orch.history(saga_id), list[LogEntry])
        drawing = place_order.to_mermaid()
        assert_type(drawing, str)
