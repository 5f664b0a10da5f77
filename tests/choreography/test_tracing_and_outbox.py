"""One trace spans a choreographed saga across its services; and with a PostgreSQL inbox a
service's own writes and the events it publishes commit together."""

from __future__ import annotations

import anyio
import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pysaga import ChoreographyObserver, HandlerContext, Participant, SagaStatus
from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import Envelope
from pysaga.stores._postgres import parse_url
from pysaga.stores.memory import InMemorySagaLog

from .purchase import (
    WAIT,
    OrderCreated,
    Purchase,
    StockNotAvailable,
    StockReserved,
    order,
    wait_history,
    wait_until_ended,
)

pytestmark = pytest.mark.anyio


async def test_one_trace_spans_the_services_and_the_observer(suffix: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    purchase = Purchase(suffix)
    log = InMemorySagaLog()
    name = f"choreo-{suffix}"
    # Each service has its own connection, as separate processes would: only the events'
    # headers link their spans.
    async with (
        MemoryBroker(name, tracer_provider=provider) as starter,
        MemoryBroker(name, tracer_provider=provider) as services_broker,
        MemoryBroker(name, tracer_provider=provider) as observer_broker,
    ):
        orders, stock, payments = purchase.services(services_broker, tracer_provider=provider)
        async with (
            ChoreographyObserver(
                purchase.flow, log=log, broker=observer_broker, tracer_provider=provider
            ),
            orders,
            stock,
            payments,
        ):
            saga_id = await purchase.flow.start(starter, order(1))
            record = await wait_until_ended(log, saga_id)
            await wait_history(log, saga_id, 4)
    assert record.status is SagaStatus.COMPLETED
    spans = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1, "one trace"
    names = {span.name for span in spans}
    for expected in (
        "send OrderCreated",
        "handle OrderCreated",
        "send StockReserved",
        "handle StockReserved",
        "send PaymentCompleted",
        "handle PaymentCompleted",
        "send OrderCompleted",
        "handle OrderCompleted",  # the observer's
    ):
        assert expected in names, f"{expected!r} missing from {sorted(names)}"
    by_id = {span.context.span_id: span for span in spans}
    handled = [s for s in spans if s.name == "handle OrderCompleted"]
    assert handled
    chain = []
    span = handled[0]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    assert chain[-1] == "send OrderCreated", chain
    for cause in ("send StockReserved", "send PaymentCompleted", "send OrderCompleted"):
        assert cause in chain


async def test_events_are_published_iff_the_service_committed(
    suffix: str, postgres_url: str
) -> None:
    """A stock service on a PostgreSQL inbox writes its reservation in the handler's
    transaction: an event handled twice reserves once, and a handler that fails after its
    write publishes nothing and keeps nothing (the event is handled again and succeeds)."""
    purchase = Purchase(suffix)
    options = parse_url(postgres_url)
    dsn, schema = options.dsn, options.schema
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await connection.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".reservations '
            "(saga_id text PRIMARY KEY, qty int NOT NULL)"
        )
    finally:
        await connection.close()
    log = InMemorySagaLog()
    failures = {"left": 1}
    async with MemoryBroker() as broker:
        broker.faults.duplicate(OrderCreated, times=5, copies=2)
        stock = Participant(
            f"stock-{suffix}", broker=broker, inbox=postgres_url, flows=[purchase.flow]
        )

        @stock.on(OrderCreated)
        async def reserve(event: OrderCreated, ctx: HandlerContext) -> None:
            await ctx.transaction.execute(
                f'INSERT INTO "{schema}".reservations VALUES ($1, $2)', ctx.saga_id, event.qty
            )
            if event.qty > 100:
                await ctx.publish(StockNotAvailable(order_id=event.order_id, reason="no"))
                return
            await ctx.publish(StockReserved(**event.model_dump()))
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("the service lost something after its write")

        published: list[str | None] = []
        all_published = anyio.Event()

        async def count(envelope: Envelope) -> None:
            published.append(envelope.correlation_id)
            if len(published) >= 3:
                all_published.set()

        async with ChoreographyObserver(purchase.flow, log=log, broker=broker), stock:
            counter = await broker.subscribe(
                purchase.flow.destination(StockReserved), count, group="counter"
            )
            ids = [await purchase.flow.start(broker, order(n)) for n in range(3)]
            for saga_id in ids:
                await wait_history(log, saga_id, 2)
            with anyio.fail_after(WAIT):
                await all_published.wait()
            await anyio.sleep(0.1)  # room for a copy that should not come
            await counter.close()
    assert sorted(published) == sorted(ids), "each event sent once, none from the rollback"
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(f'SELECT saga_id, qty FROM "{schema}".reservations')
    finally:
        await connection.close()
    assert sorted(r["saga_id"] for r in rows) == sorted(ids), "one reservation per saga"
    for saga_id in ids:
        history = await log.history(saga_id)
        assert [(e.kind.value, e.step) for e in history].count(
            ("step_succeeded", "reserve_stock")
        ) == 1
