"""Tracing and metrics on opentelemetry-api alone.

One span per saga run (``saga <name>``), one per step attempt (``step <name>``) and one per
compensation attempt (``compensate <name>``), children of the saga's span. Counters and
duration histograms for sagas, steps and compensations.

Without an SDK (no tracer or meter provider set), pysaga creates no span and records no
metric at all: it checks which provider is installed, and the check is one global read.
Install ``opentelemetry-sdk`` and set a provider to see everything.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from . import _clock
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from .interceptors import Proceed, StepCall
    from .models import SagaOutcome

__all__ = (
    "ATTR_ATTEMPT",
    "ATTR_OUTCOME",
    "ATTR_SAGA_ID",
    "ATTR_SAGA_NAME",
    "ATTR_SAGA_STATUS",
    "ATTR_SAGA_VERSION",
    "ATTR_STEP_NAME",
    "INSTRUMENTATION_NAME",
    "METRIC_COMPENSATIONS",
    "METRIC_COMPENSATION_DURATION",
    "METRIC_SAGAS",
    "METRIC_SAGA_DURATION",
    "METRIC_STEPS",
    "METRIC_STEP_DURATION",
)

INSTRUMENTATION_NAME = "pysaga"
ATTR_SAGA_ID = "saga.id"
ATTR_SAGA_NAME = "saga.name"
ATTR_SAGA_VERSION = "saga.version"
ATTR_SAGA_STATUS = "saga.status"
ATTR_STEP_NAME = "step.name"
ATTR_ATTEMPT = "step.attempt"
ATTR_OUTCOME = "step.outcome"

METRIC_SAGAS = "pysaga.sagas"
"""Counter: sagas that reached a terminal status (attributes: saga.name, saga.status)."""
METRIC_SAGA_DURATION = "pysaga.saga.duration"
"""Histogram, seconds: from start to terminal status."""
METRIC_STEPS = "pysaga.steps"
"""Counter: step attempts (attributes: saga.name, step.name, step.outcome)."""
METRIC_STEP_DURATION = "pysaga.step.duration"
"""Histogram, seconds: one step attempt."""
METRIC_COMPENSATIONS = "pysaga.compensations"
"""Counter: compensation attempts (attributes: saga.name, step.name, step.outcome)."""
METRIC_COMPENSATION_DURATION = "pysaga.compensation.duration"
"""Histogram, seconds: one compensation attempt."""

_NO_SDK_TRACERS: tuple[type[Any], ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

try:  # the API keeps the global providers in module globals; reading them skips the
    # environment lookup that get_*_provider() makes on every call while none is set
    from opentelemetry.environment_variables import (
        OTEL_PYTHON_METER_PROVIDER,
        OTEL_PYTHON_TRACER_PROVIDER,
    )
    from opentelemetry.metrics import _internal as _metrics_internal

    _FAST_GLOBALS = (
        hasattr(trace, "_TRACER_PROVIDER")
        and hasattr(_metrics_internal, "_METER_PROVIDER")
        and OTEL_PYTHON_TRACER_PROVIDER not in os.environ
        and OTEL_PYTHON_METER_PROVIDER not in os.environ
    )
except ImportError:  # pragma: no cover - depends on the API's internals
    _FAST_GLOBALS = False


def _global_tracer_provider() -> object:
    """The global tracer provider, or ``None`` when none was set (a cheap check)."""
    if _FAST_GLOBALS:
        return trace._TRACER_PROVIDER
    return trace.get_tracer_provider()


def _global_meter_provider() -> object:
    """The global meter provider, or ``None`` when none was set (a cheap check)."""
    if _FAST_GLOBALS:
        return _metrics_internal._METER_PROVIDER
    return metrics.get_meter_provider()


try:  # the API's default meter provider is private; fall back to the public no-op one
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _NO_SDK_METERS: tuple[type[Any], ...] = (_ProxyMeterProvider, metrics.NoOpMeterProvider)
except ImportError:  # pragma: no cover - depends on the API's internals
    _NO_SDK_METERS = (metrics.NoOpMeterProvider,)


class Instruments:
    """The metric instruments pysaga records to."""

    __slots__ = (
        "compensation_duration",
        "compensations",
        "saga_duration",
        "sagas",
        "step_duration",
        "steps",
    )

    def __init__(self, meter: metrics.Meter) -> None:
        self.sagas = meter.create_counter(METRIC_SAGAS, unit="{saga}", description="Sagas ended")
        self.saga_duration = meter.create_histogram(
            METRIC_SAGA_DURATION, unit="s", description="Saga duration, start to end"
        )
        self.steps = meter.create_counter(
            METRIC_STEPS, unit="{attempt}", description="Step attempts"
        )
        self.step_duration = meter.create_histogram(
            METRIC_STEP_DURATION, unit="s", description="Step attempt duration"
        )
        self.compensations = meter.create_counter(
            METRIC_COMPENSATIONS, unit="{attempt}", description="Compensation attempts"
        )
        self.compensation_duration = meter.create_histogram(
            METRIC_COMPENSATION_DURATION, unit="s", description="Compensation attempt duration"
        )


class Telemetry:
    """Hands out the tracer and instruments, or ``None`` when no SDK is installed.

    Uses the providers it was given, or else the global ones, looked up on each use (one
    global read), so a provider set after pysaga was imported is picked up.
    """

    __slots__ = (
        "_fixed_meter_provider",
        "_fixed_tracer_provider",
        "_instruments",
        "_meter_provider",
        "_tracer",
        "_tracer_provider",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._fixed_tracer_provider = tracer_provider
        self._fixed_meter_provider = meter_provider
        self._tracer_provider: object = None
        self._tracer: trace.Tracer | None = None
        self._meter_provider: object = None
        self._instruments: Instruments | None = None

    @property
    def tracer(self) -> trace.Tracer | None:
        """The tracer, or ``None`` without an SDK."""
        provider = self._fixed_tracer_provider or _global_tracer_provider()
        if provider is not self._tracer_provider:
            self._tracer_provider = provider
            self._tracer = (
                None
                if provider is None or isinstance(provider, _NO_SDK_TRACERS)
                else cast("trace.TracerProvider", provider).get_tracer(
                    INSTRUMENTATION_NAME, __version__
                )
            )
        return self._tracer

    @property
    def instruments(self) -> Instruments | None:
        """The metric instruments, or ``None`` without an SDK."""
        provider = self._fixed_meter_provider or _global_meter_provider()
        if provider is not self._meter_provider:
            self._meter_provider = provider
            self._instruments = (
                None
                if provider is None or isinstance(provider, _NO_SDK_METERS)
                else Instruments(
                    cast("metrics.MeterProvider", provider).get_meter(
                        INSTRUMENTATION_NAME, __version__
                    )
                )
            )
        return self._instruments

    @property
    def active(self) -> bool:
        """Whether an SDK takes spans or metrics (checked once per saga run)."""
        return self.tracer is not None or self.instruments is not None

    async def trace_attempt(self, call: StepCall, proceed: Proceed) -> Any:
        """The tracing interceptor: a span and the metrics of one step or compensation
        attempt (``step <name>`` / ``compensate <name>``, a child of the saga's span)."""
        ctx = call.ctx
        instruments = self.instruments
        attributes = {
            ATTR_SAGA_ID: ctx.saga_id,
            ATTR_SAGA_NAME: ctx.saga_name,
            ATTR_STEP_NAME: ctx.step,
            ATTR_ATTEMPT: ctx.attempt,
        }
        started = time.perf_counter()
        outcome = "succeeded"
        with self.span(
            f"{'compensate' if ctx.compensating else 'step'} {ctx.step}", attributes
        ) as span:
            try:
                return await proceed(call)
            except Exception as exc:
                outcome = "failed"
                mark_error(span, exc)
                raise
            finally:
                if span is not None:
                    span.set_attribute(ATTR_OUTCOME, outcome)
                if instruments is not None:
                    labels = {
                        ATTR_SAGA_NAME: ctx.saga_name,
                        ATTR_STEP_NAME: ctx.step,
                        ATTR_OUTCOME: outcome,
                    }
                    elapsed = time.perf_counter() - started
                    if ctx.compensating:
                        instruments.compensations.add(1, labels)
                        instruments.compensation_duration.record(elapsed, labels)
                    else:
                        instruments.steps.add(1, labels)
                        instruments.step_duration.record(elapsed, labels)

    async def observe_saga(
        self,
        saga_id: str,
        name: str,
        version: int,
        created_at: float,
        drive: Callable[[], Awaitable[SagaOutcome[Any]]],
    ) -> SagaOutcome[Any]:
        """Run *drive* (one orchestrator's run of a saga) in the saga's span, and count the
        saga in the metrics once it has ended."""
        attributes = {ATTR_SAGA_ID: saga_id, ATTR_SAGA_NAME: name, ATTR_SAGA_VERSION: version}
        with self.span(f"saga {name}", attributes) as span:
            outcome = await drive()
            if span is not None:
                span.set_attribute(ATTR_SAGA_STATUS, outcome.status.value)
                if outcome.failure is not None:
                    span.set_attribute("saga.failure", str(outcome.failure))
        instruments = self.instruments
        if instruments is not None and outcome.status.is_terminal:
            labels = {ATTR_SAGA_NAME: name, ATTR_SAGA_STATUS: outcome.status.value}
            instruments.sagas.add(1, labels)
            instruments.saga_duration.record(max(0.0, _clock.now() - created_at), labels)
        return outcome

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span | None]:
        """A current span named *name*, or nothing (``None``) without an SDK.

        Exceptions are recorded on the span and re-raised.
        """
        tracer = self.tracer
        if tracer is None:
            yield None
            return
        with tracer.start_as_current_span(
            name, attributes=attributes, record_exception=True, set_status_on_exception=True
        ) as span:
            yield span


def mark_error(span: Span | None, exc: BaseException) -> None:
    """Record *exc* on *span* and set its status to error (no-op for ``None``)."""
    if span is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


telemetry = Telemetry()
"""The telemetry of orchestrators that were given no providers: the global ones."""
