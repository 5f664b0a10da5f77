"""Tracing and metrics: watch the shop saga of ``place_order.py`` through OpenTelemetry.

Put this file next to ``place_order.py`` and run ``python tracing_setup.py``. It needs the
OpenTelemetry SDK (the ``opentelemetry-sdk`` package); pysaga itself needs only the API.
"""

from __future__ import annotations

from typing import Any

# --8<-- [start:setup]
import anyio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from place_order import Order, place_order

from pysaga import Orchestrator


def setup_telemetry() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """Install an SDK for traces and metrics, kept in memory so that we can print them.

    In production, export to your collector instead (for example with a BatchSpanProcessor
    and an OTLP exporter, and a PeriodicExportingMetricReader).
    """
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return spans, reader
    # --8<-- [end:setup]


# --8<-- [start:main]
async def main(log: str = "memory://") -> dict[str, Any]:
    """Run one order that completes and one that is declined, then print the telemetry."""
    spans, reader = setup_telemetry()
    async with Orchestrator(sagas=[place_order], log=log) as orch:
        for order_id, amount in [("o-1", 12), ("o-2", 900)]:
            order = Order(order_id=order_id, sku="book", qty=1, amount=amount)
            await orch.run(place_order, order)

    names = {span.context.span_id: span.name for span in spans.get_finished_spans()}
    print("spans (as they ended):")
    for span in spans.get_finished_spans():
        attributes = dict(span.attributes or {})
        shown = {k: v for k, v in attributes.items() if k in ("step.outcome", "saga.status")}
        parent = names.get(span.parent.span_id) if span.parent else None
        print(f"  {span.name:<24} parent={parent or '-':<18} {shown}")

    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = found.setdefault(metric.name, [])
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)  # counters have a value,
                    if value is None:
                        value = getattr(point, "count", None)  # histograms a count
                    points.append((dict(point.attributes or {}), value))
    print("metrics:")
    for name, points in sorted(found.items()):
        print(f"  {name}")
        for attributes, value in sorted(points, key=lambda p: sorted(p[0].items())):
            labels = ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))
            print(f"    {labels}: {value}")
    return {"spans": spans.get_finished_spans(), "metrics": found}


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
