"""Trace shape and metrics, checked with the OpenTelemetry SDK's in-memory exporter/reader."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Retry, Saga, SagaStatus
from pysaga.tracing import Telemetry

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    qty: int = 1
    flaky: bool = False


def make_saga() -> Saga[Order]:
    saga: Saga[Order] = Saga("place-order", Order)
    tries = {"n": 0}

    @saga.step(retry=Retry(attempts=3, backoff=0))
    async def reserve(order: Order) -> None:
        tries["n"] += 1
        if order.flaky and tries["n"] == 1:
            raise ConnectionError("stock service busy")

    @reserve.compensate
    async def release(order: Order) -> None: ...

    @saga.step(pivot=True)
    async def pay(order: Order) -> None:
        if order.qty > 5:
            raise BusinessError("declined")

    return saga


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def providers(
    exporter: InMemorySpanExporter,
) -> tuple[TracerProvider, MeterProvider, InMemoryMetricReader]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, MeterProvider(metric_readers=[reader]), reader


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


async def test_span_tree_of_a_retried_then_completed_saga(
    exporter: InMemorySpanExporter, providers: Any
) -> None:
    """One saga span; a span per step attempt (child of it) with id, name, attempt, outcome."""
    tracer_provider, meter_provider, _ = providers
    saga = make_saga()
    async with Orchestrator(
        sagas=[saga],
        log="memory://",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as orch:
        outcome = await orch.run(saga, Order(flaky=True))
    assert outcome.status is SagaStatus.COMPLETED
    spans = by_name(exporter.get_finished_spans())
    assert sorted(spans) == ["saga place-order", "step pay", "step reserve"]
    (root,) = spans["saga place-order"]
    assert root.attributes is not None
    assert root.attributes["saga.id"] == outcome.saga_id
    assert root.attributes["saga.name"] == "place-order"
    assert root.attributes["saga.status"] == "completed"
    attempts = spans["step reserve"]
    assert [(s.attributes or {})["step.attempt"] for s in attempts] == [1, 2]
    assert [(s.attributes or {})["step.outcome"] for s in attempts] == ["failed", "succeeded"]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[0].events[0].name == "exception"
    for span in [*attempts, *spans["step pay"]]:
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert (span.attributes or {})["saga.id"] == outcome.saga_id
        assert (span.attributes or {})["step.name"] in ("reserve", "pay")


async def test_compensation_spans_and_metrics(
    exporter: InMemorySpanExporter, providers: Any
) -> None:
    """A compensated saga shows the compensation span; counters and histograms record it."""
    tracer_provider, meter_provider, reader = providers
    saga = make_saga()
    async with Orchestrator(
        sagas=[saga],
        log="memory://",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as orch:
        ok = await orch.run(saga, Order())
        refused = await orch.run(saga, Order(qty=9))
    assert (ok.status, refused.status) == (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
    spans = by_name(exporter.get_finished_spans())
    (compensation,) = spans["compensate reserve"]
    assert (compensation.attributes or {})["step.outcome"] == "succeeded"
    roots = {(s.attributes or {})["saga.id"]: s for s in spans["saga place-order"]}
    assert compensation.parent is not None
    assert compensation.parent.span_id == roots[refused.saga_id].context.span_id
    assert (roots[refused.saga_id].attributes or {})["saga.status"] == "compensated"

    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "pysaga"
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    sagas = {dict(p.attributes)["saga.status"]: p.value for p in points["pysaga.sagas"]}
    assert sagas == {"completed": 1, "compensated": 1}
    assert sum(p.count for p in points["pysaga.saga.duration"]) == 2
    steps = {
        (dict(p.attributes)["step.name"], dict(p.attributes)["step.outcome"]): p.value
        for p in points["pysaga.steps"]
    }
    assert steps == {("reserve", "succeeded"): 2, ("pay", "succeeded"): 1, ("pay", "failed"): 1}
    (comp,) = points["pysaga.compensations"]
    assert comp.value == 1
    assert sum(p.count for p in points["pysaga.step.duration"]) == 4
    assert sum(p.count for p in points["pysaga.compensation.duration"]) == 1


def test_no_sdk_means_no_telemetry() -> None:
    """With the API's default (proxy) or no-op providers, no tracer and no instruments are
    created at all: pysaga records nothing and costs nothing."""
    from opentelemetry import metrics, trace
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    for tracer_provider, meter_provider in [
        (trace.ProxyTracerProvider(), _ProxyMeterProvider()),
        (trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()),
    ]:
        handle = Telemetry(tracer_provider, meter_provider)
        assert handle.tracer is None
        assert handle.instruments is None
        with handle.span("saga x", {}) as span:
            assert span is None
