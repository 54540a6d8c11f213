"""OpenTelemetry: one tracer provider per process, W3C propagation, library instrumentations.

Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-specific
variable) is set; otherwise they are still created, so trace ids reach logs and job status.
Sampling follows the standard OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG; with neither
set it is `parentbased_traceidratio` at 0.1 (the SDK's own default records everything).
OTEL_SDK_DISABLED=true turns tracing off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio, Sampler
from opentelemetry.trace import Link, SpanContext
from opentelemetry.util.types import AttributeValue

DEFAULT_SAMPLE_RATIO = 0.1
# Probes and scrapes: answered on every service every few seconds, never worth a trace.
PROBE_PATHS = ("/live", "/ready", "/health", "/metrics")
PROBE_URLS = ",".join(f"^{path}$" for path in PROBE_PATHS)
_configured = False


def _recorded_statements(base: type[Any]) -> type[Any]:
    """The asyncpg instrumentation, spanning a statement only inside a recorded span.

    A statement is a leaf: outside a recorded trace its span would be thrown away (or, with
    no parent at all, start a trace of its own), yet the stock instrumentation builds its
    attributes and a span for every statement — the most frequent span there is. Traces that
    are recorded keep every statement.
    """

    def recorded_only(method: Any) -> Any:
        async def call(self: Any, func: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if not trace.get_current_span().is_recording():
                return await func(*args, **kwargs)
            return await method(self, func, instance, args, kwargs)

        return call

    return type(
        "RecordedStatements",
        (base,),
        {
            name: recorded_only(getattr(base, name))
            for name in ("_do_execute", "_do_cursor_execute", "_do_prepared_execute")
        },
    )


def tracing_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _sampler() -> Sampler | None:
    """The default sampler when OTEL_TRACES_SAMPLER is unset; None lets the SDK read it."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(raw) if raw else DEFAULT_SAMPLE_RATIO
    except ValueError:
        raise SystemExit(f"OTEL_TRACES_SAMPLER_ARG: not a number: {raw!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise SystemExit(f"OTEL_TRACES_SAMPLER_ARG: {ratio} is not between 0 and 1")
    return ParentBasedTraceIdRatio(ratio)


def configure_telemetry(service: str) -> None:
    """Install the tracer provider and instrument aiohttp, asyncpg and aio-pika (once).

    Call it before building an aiohttp Application: the server instrumentation wraps it.
    """
    global _configured
    if _configured or tracing_disabled():
        return
    _configured = True
    # Probes and scrapes are not worth a trace each (every few seconds, on every service).
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", PROBE_URLS)
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}),
        sampler=_sampler(),
    )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)

    from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    with warnings.catch_warnings():
        # The instrumentation subclasses web.Application, which aiohttp discourages with a
        # DeprecationWarning at class creation; nothing we can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        AioHttpServerInstrumentor().instrument()
    AioPikaInstrumentor().instrument()
    _recorded_statements(AsyncPGInstrumentor)().instrument()


def untraced() -> AbstractContextManager[None]:
    """No instrumentation spans within (database statements, AMQP sends): for a background
    loop, so that polling does not start a trace of its own every second. Tasks created
    within keep it; a span started with an explicit parent (the outbox relay's publish of an
    upload's event) is outside it again."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


@dataclass(frozen=True)
class TraceRef:
    """Where the current span sits: its trace and span ids (hex) and whether it is recorded."""

    trace_id: str
    span_id: str
    sampled: bool


def current_trace() -> TraceRef | None:
    """The current span's ids, or None outside any trace (tracing disabled included)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return TraceRef(
        format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), ctx.trace_flags.sampled
    )


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a trace."""
    ref = current_trace()
    return ref.trace_id if ref else None


def span_context_of(trace_id: str | None, span_id: str | None) -> SpanContext | None:
    """A remote span's context from stored hex ids (for a link); None when they are unusable."""
    try:
        ctx = SpanContext(
            int(trace_id or "", 16),
            int(span_id or "", 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


def link_span(trace_id: str | None, span_id: str | None, why: str) -> None:
    """Link the current span to a stored span (a trace recorded earlier), when both exist."""
    span = trace.get_current_span()
    ctx = span_context_of(trace_id, span_id)
    if ctx is not None and span.is_recording():
        span.add_link(ctx, {"mammothbox.link": why})


def set_attributes(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set attributes on the current span, skipping those without a value."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


@contextmanager
def batch_span(
    tracer: trace.Tracer,
    name: str,
    served: Sequence[SpanContext],
    **attributes: AttributeValue,
) -> Iterator[trace.Span]:
    """A span for work done once for many callers (a micro-batch, a group commit).

    It links every span it serves and is the child of the first recorded one, so it is
    recorded whenever any caller's trace is, and its own children (the database statements)
    land in that trace. A batch that serves no recorded span is not recorded either (it would
    be a trace of its own, sampled apart from everything it did the work for).
    """
    valid = [c for c in served if c.is_valid]
    parent = next((c for c in valid if c.trace_flags.sampled), None)
    if parent is None:
        with trace.use_span(trace.INVALID_SPAN, end_on_exit=False) as span:
            yield span
        return
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent), otel_context.Context())
    with tracer.start_as_current_span(
        name,
        context=context,
        links=[Link(c) for c in valid],
        attributes={"batch.size": len(served), **attributes},
    ) as span:
        yield span


def current_span_context() -> SpanContext:
    """The current span's context (invalid outside a trace), to hand to a batch."""
    return trace.get_current_span().get_span_context()
