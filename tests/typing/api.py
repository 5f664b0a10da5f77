"""Make sure the public API types the way its docs promise: checked by ``mypy --strict``
(in CI), never run. ``assert_type`` fails the type check when an inferred type drifts."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from pysaga import (
    Broker,
    BusinessError,
    DeadLetter,
    Envelope,
    Failure,
    HandlerContext,
    Inspector,
    LogEntry,
    Orchestrator,
    Participant,
    Retry,
    Saga,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    SagaVersion,
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
        assert_type(place_order.fingerprint, str)
        by_name = await orch.run("place-order", Order(order_id="o-4"))  # the newest version
        assert_type(by_name, SagaOutcome[Order])
        assert_type(await Inspector(orch.log).versions(), list[SagaVersion])
        assert_type(await Inspector(orch.log).held(), list[SagaRecord])


# -- remote steps, participants and messages -------------------------------------------------


class Reserve(BaseModel):
    order_id: str


class Reserved(BaseModel):
    reservation_id: str


shipping = Saga("ship-order", Order)
ship = shipping.remote(
    "reserve",
    service="stock",
    command=Reserve,
    reply=Reserved,
    build=lambda order: Reserve(order_id=order.order_id),
    on_reply=lambda order, reply: order,
    timeout=5.0,
)
assert_type(ship, Step[Order])

stock = Participant("stock", broker="memory://typing", inbox="sqlite:///inbox.db")


@stock.handles(Reserve)
async def on_reserve(cmd: Reserve, ctx: HandlerContext) -> Reserved:
    assert_type(ctx.idempotency_key, str)
    assert_type(ctx.saga_id, str | None)
    return Reserved(reservation_id=cmd.order_id)




async def use_messages(broker: Broker) -> None:
    ctx = HandlerContext("stock", "m-1", None, "saga-1/reserve", None, {})
    assert_type(await on_reserve(Reserve(order_id="o-1"), ctx), Reserved)  # still callable
    envelope = Envelope.of(Reserve(order_id="o-1"), correlation_id="saga-1")
    assert_type(envelope.parse(Reserve), Reserve)
    assert_type(Envelope.decode(envelope.encode()), Envelope)
    await broker.publish("stock", envelope)

    async def handler(message: Envelope) -> None: ...

    subscription = await broker.subscribe("stock", handler, group="audit")
    await subscription.close()

    async def on_dead(letter: DeadLetter) -> None:
        assert_type(letter.envelope, Envelope | None)

    await broker.subscribe_dead_letters("stock", on_dead)
    async with Orchestrator(sagas=[shipping], log="memory://", broker=broker) as orch:
        assert_type(await orch.run(shipping, Order(order_id="o-3")), SagaOutcome[Order])
