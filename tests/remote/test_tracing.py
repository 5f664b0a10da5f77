"""One trace shows the whole saga: the orchestrator's spans, each command, each participant's
handler and each reply, joined through the envelope's W3C trace context headers."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pysaga import Orchestrator, SagaStatus

from .conftest import BrokerKit
from .shop import ShopSetup, order

pytestmark = pytest.mark.anyio


async def test_one_trace_spans_orchestrator_and_participants(kit: BrokerKit, suffix: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shop = ShopSetup(suffix)
    # The orchestrator and the participants each have their own connection, as separate
    # processes would; only the message headers link their spans.
    async with (
        kit.make(tracer_provider=provider) as orch_broker,
        kit.make(tracer_provider=provider) as service_broker,
    ):
        stock, payments = shop.participants(service_broker, tracer_provider=provider)
        async with (
            stock,
            payments,
            Orchestrator(
                sagas=[shop.saga], log="memory://", broker=orch_broker, tracer_provider=provider
            ) as orch,
        ):
            outcome = await orch.run(shop.saga, order(1))
    assert outcome.status is SagaStatus.COMPLETED
    spans = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1, "one trace"
    names = {span.name for span in spans}
    for expected in (
        f"saga {shop.saga.name}",
        "step reserve",
        "send ReserveStock",
        "process ReserveStock",
        "handle ReserveStock",
        "process StockReserved",
        "step charge",
        "handle ChargeCard",
        "process CardCharged",
        "step confirm",
    ):
        assert expected in names, f"{expected!r} missing from {sorted(names)}"
    by_id = {span.context.span_id: span for span in spans}

    def ancestors(name: str) -> list[str]:
        span = next(s for s in spans if s.name == name)
        chain = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span.name)
        return chain

    assert ancestors("process CardCharged")[:5] == [
        "send CardCharged",
        "process ChargeCard",
        "send ChargeCard",
        "step charge",
        f"saga {shop.saga.name}",
    ]
    assert ancestors("handle ChargeCard")[:3] == [
        "process ChargeCard",
        "send ChargeCard",
        "step charge",
    ]
    kinds = {span.name: span.kind for span in spans}
    assert kinds["send ReserveStock"] is SpanKind.PRODUCER
    assert kinds["process ReserveStock"] is SpanKind.CONSUMER
