"""A choreographed flow is checked when it is declared, and so are the services' handlers of
its events: a mistake fails at once with a message that says what to change."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from pysaga import (
    Choreography,
    ChoreographyObserver,
    HandlerContext,
    Participant,
    SagaDefinitionError,
    StepEvents,
)
from pysaga.brokers.memory import MemoryBroker
from pysaga.choreography import EventMeaning
from pysaga.messaging import Envelope

from .purchase import (
    OrderCompleted,
    OrderCreated,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
    StockNotAvailable,
    StockReleased,
    StockReserved,
    declare,
)

pytestmark = pytest.mark.anyio


class Other(BaseModel):
    """An event no flow declares."""

    n: int = 0


class AlsoOrderCreated(BaseModel):
    __message_type__: ClassVar[str] = "OrderCreated"


class Spaced(BaseModel):
    __message_type__: ClassVar[str] = "order created"


def flow(**changes: Any) -> Choreography:
    options: dict[str, Any] = {
        "starts": OrderCreated,
        "steps": {
            "reserve_stock": StepEvents(
                done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
            ),
            "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
        },
        "completes": OrderCompleted,
        "compensates": OrderRejected,
        "deadline": 30,
    }
    options.update(changes)
    name = options.pop("name", "purchase")
    return Choreography(name, **options)


def test_a_good_declaration() -> None:
    purchase = flow()
    assert purchase.name == "purchase"
    assert purchase.deadline == 30.0
    assert set(purchase.events) == {
        "OrderCreated",
        "StockReserved",
        "StockNotAvailable",
        "StockReleased",
        "PaymentCompleted",
        "PaymentFailed",
        "OrderCompleted",
        "OrderRejected",
    }
    assert purchase.destination(StockReserved) == "purchase.StockReserved"
    assert purchase.destination(OrderCreated(order_id="o", sku="s", qty=1, amount=1)) == (
        "purchase.OrderCreated"
    )
    assert purchase.declares(PaymentFailed)
    assert not purchase.declares(Other)
    assert not purchase.declares(AlsoOrderCreated)


def test_each_event_has_one_meaning_to_read() -> None:
    """What an event means for a saga is the flow's public, read-only answer (the observer
    records events by it)."""
    purchase = flow()
    assert purchase.meanings["OrderCreated"] == EventMeaning("start", OrderCreated)
    assert purchase.meanings["StockReleased"] == EventMeaning(
        "compensated", StockReleased, "reserve_stock"
    )
    assert purchase.meanings["OrderRejected"] == EventMeaning("compensates", OrderRejected)
    assert set(purchase.meanings) == set(purchase.events)
    with pytest.raises(TypeError):
        purchase.meanings["Other"] = EventMeaning("done", Other, "x")  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "needs a name of letters"),
        ({"name": "a flow"}, "needs a name of letters"),
        ({"starts": "OrderCreated"}, "starts= takes the pydantic model class"),
        ({"completes": []}, "completes= names no event"),
        ({"completes": [OrderCompleted, 3]}, "takes pydantic model classes"),
        ({"deadline": 0}, "deadline must be a positive number"),
        ({"deadline": float("inf")}, "deadline must be a positive number"),
        ({"deadline": True}, "deadline must be a positive number"),
        ({"version": 0}, "version must be an int >= 1"),
        ({"compensates": []}, "turn the saga back, but compensates= names no event"),
        ({"completes": [OrderCompleted, OrderRejected]}, "declared as completes= and as"),
        ({"completes": OrderCreated}, "an event has one meaning in a flow"),
        (
            {"steps": {"a": StepEvents(done=StockReserved), "b": StepEvents(done=StockReserved)}},
            "declared as step 'a' done= and as step 'b' done=",
        ),
        ({"steps": {"a": StockReserved}}, "give StepEvents(done=..."),
        ({"steps": {"": StepEvents(done=StockReserved)}}, "step names are non-empty strings"),
        ({"completes": AlsoOrderCreated}, "both travel as message type 'OrderCreated'"),
        ({"completes": Spaced}, "makes a destination name"),
    ],
)
def test_bad_declarations_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message.replace("(", r"\(")):
        flow(**changes)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "needs done=Event"),
        ({"compensated": StockReleased, "failed": StockNotAvailable}, "needs done= too"),
        ({"done": "StockReserved"}, "takes pydantic model classes"),
    ],
)
def test_bad_step_events_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        StepEvents(**arguments)


def test_event_handlers_are_checked() -> None:
    purchase, other = flow(), flow(name="purchase-2")
    service = Participant("stock", flows=[purchase])
    with pytest.raises(SagaDefinitionError, match="none declares it"):
        service.on(Other)
    with pytest.raises(SagaDefinitionError, match="does not declare Other"):
        service.on(Other, flow=purchase)
    with pytest.raises(SagaDefinitionError, match="several declare it"):
        Participant("stock", flows=[purchase, other]).on(OrderCreated)
    with pytest.raises(SagaDefinitionError, match="must be an 'async def'"):
        service.on(OrderCreated)(lambda event: None)

    async def returns_reply(event: OrderCreated) -> StockReserved:
        raise AssertionError

    with pytest.raises(SagaDefinitionError, match="an event handler returns None"):
        service.on(OrderCreated)(returns_reply)

    @service.on(OrderCreated)
    async def reserve(event: OrderCreated, ctx: HandlerContext) -> None: ...

    with pytest.raises(SagaDefinitionError, match="already handles it"):
        service.on(OrderCreated)(reserve)
    assert set(service.events) == {"OrderCreated"}
    assert dict(service.commands) == {}
    assert Participant("x").on(OrderCreated, flow=other)(reserve) is reserve
    with pytest.raises(TypeError, match="takes a pysaga.Choreography"):
        ChoreographyObserver("purchase", log="memory://", broker="memory://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_groups is 'service'"):
        Participant("x", event_groups="flow")  # type: ignore[arg-type]


async def test_publishing_an_undeclared_event_fails_the_handler() -> None:
    """An event the flow does not declare is refused at publish time (and the event handled
    is tried again, then dead-lettered), and a command handler must name a destination."""
    purchase = declare("purchase-undeclared")
    async with MemoryBroker() as broker:
        service = Participant("stock", broker=broker, flows=[purchase])
        seen: list[str] = []

        @service.on(OrderCreated)
        async def reserve(event: OrderCreated, ctx: HandlerContext) -> None:
            try:
                await ctx.publish(Other())
            except SagaDefinitionError as exc:
                seen.append(str(exc))
            ctx_without_flow = HandlerContext("s", "m", None, "k", None, {})
            with pytest.raises(TypeError, match="pass one"):
                await ctx_without_flow.publish(Other())
            seen.append("checked")

        async with service:
            event = OrderCreated(order_id="o", sku="s", qty=1, amount=1)
            await service.handle_message(Envelope.of(event, correlation_id="saga-1"))
    assert "does not declare the event Other" in seen[0]
    assert seen[1] == "checked"


async def test_start_takes_the_starting_event_only() -> None:
    purchase = declare("purchase-start")
    async with MemoryBroker() as broker:
        with pytest.raises(SagaDefinitionError, match="starts with OrderCreated"):
            await purchase.start(broker, StockReleased(order_id="o"))
        saga_id = await purchase.start(
            broker, OrderCreated(order_id="o", sku="s", qty=1, amount=1), saga_id="mine"
        )
    assert saga_id == "mine"
