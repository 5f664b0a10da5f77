"""One saga's trace, drawn as a tree (what a tracing backend would show).

pysaga creates OpenTelemetry spans through the API alone. The demo installs the SDK's
in-memory exporter (the ``examples`` extra) and prints the trace of one order: the spans of
every service it went through, nested by cause, as ActivitySource spans nest in the original
sample. In production you would export them to your tracing backend instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

__all__ = ("InMemoryTracing", "trace_tree")


class InMemoryTracing:
    """One tracer provider per service, named by its ``service.name`` resource as in a real
    deployment, all keeping their spans in one in-memory exporter.

    Raises:
        ImportError: the OpenTelemetry SDK is not installed (the ``examples`` extra).
    """

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()

    def provider(self, service: str) -> TracerProvider:
        """The tracer provider of *service*."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        return provider

    def spans(self) -> tuple[ReadableSpan, ...]:
        """Every span finished so far."""
        return self.exporter.get_finished_spans()


PLUMBING = ("OrderUpdated", "StockUpdated", "pysaga.done")
"""Messages left out of the short tree: the read model's updates and plain acknowledgements."""

QUIET = ("observer", "read-model")
"""Services left out of the short tree: they only listen."""


def trace_tree(spans: tuple[ReadableSpan, ...], saga_id: str, *, full: bool = True) -> list[str]:
    """The lines of the tree of the trace that saga *saga_id* started: a span's children in
    the order they started.

    With ``full=False`` the tree is the saga's path only: a message handled by a service
    shows as its ``handle`` span under the ``send`` that carried it (the ``process`` span
    between them is left out), and the read model's updates, plain acknowledgements and the
    spans of services that only listen (the observer, the read model) are left out."""
    mine = [s for s in spans if s.attributes and s.attributes.get("saga.id") == saga_id]
    if not mine:
        return []
    first = min(mine, key=lambda s: s.start_time or 0)
    assert first.context is not None
    trace_id = first.context.trace_id
    in_trace = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
    ids = {s.context.span_id for s in in_trace if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in in_trace:
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)

    def service(span: ReadableSpan) -> str:
        return str(span.resource.attributes.get("service.name", ""))

    def kids(span: ReadableSpan | None) -> list[ReadableSpan]:
        """The children of *span* (of the trace's roots for ``None``) in the tree drawn."""
        key = None if span is None else span.context.span_id if span.context else None
        found = sorted(children.get(key, []), key=lambda s: s.start_time or 0)
        if full:
            return found
        shown: list[ReadableSpan] = []
        for kid in found:
            if service(kid) in QUIET or kid.name.split(" ", 1)[-1] in PLUMBING:
                continue
            if kid.name.startswith("process "):
                shown.extend(kids(kid))  # its handle and sends, one level up
            else:
                shown.append(kid)
        return shown

    lines: list[str] = []

    def draw(span: ReadableSpan, prefix: str, last: bool, root: bool) -> None:
        label = f"{span.name}  [{service(span)}]"
        lines.append(label if root else f"{prefix}{'└─ ' if last else '├─ '}{label}")
        below = prefix if root else prefix + ("   " if last else "│  ")
        shown = kids(span)
        for n, kid in enumerate(shown):
            draw(kid, below, n == len(shown) - 1, False)

    for root in kids(None):
        draw(root, "", True, True)
    return lines


def _order(span: ReadableSpan) -> tuple[str, int]:
    service = str(span.resource.attributes.get("service.name", ""))
    return (service if span.name.startswith("process ") else "", span.start_time or 0)
