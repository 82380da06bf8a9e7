"""Tracing: W3C trace context in Kafka headers, OpenTelemetry spans with explicit times.

Off by default: without ``tracing.otlp_endpoint`` a process has no tracer (``None``) and
every stage checks that once per batch, so the off path costs a comparison. When on, a
stage makes spans only for messages whose ``traceparent`` is sampled (an entry stage
starts a trace for a request without one at ``tracing.sample_ratio``), from
clock readings it already has: the actor's when-received and when-sent of the batch
(:class:`BatchClock`, the same readings as the ``ts.<stage>.in/out`` stamps), so the
spans and the load tester's stage breakdown measure the same intervals. What the spans
are named and hold is the roles' business; this module knows no stage.
"""

from __future__ import annotations

import contextvars
import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.headers import SENT_MS, STAGE_PREFIX, TRACEPARENT, TRACESTATE
from pipeline.setting_rules import setting

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Attributes = Mapping[str, str | int | float | bool]


def _endpoint_ok(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL (the collector's OTLP/HTTP traces endpoint)"
    return None


@dataclass(frozen=True)
class TracingSection:
    """OpenTelemetry tracing: off unless an OTLP endpoint is set."""

    otlp_endpoint: str = setting("", check=_endpoint_ok, allowed_text="empty or an http(s) URL")  # OTLP/HTTP traces endpoint (http://collector:4318/v1/traces); empty = tracing off
    sample_ratio: float = setting(0.01, ge=0, le=1)  # requests without a traceparent: the fraction that start a trace (a sampled traceparent is always followed)
    service_name: str = setting("adstream", nonempty=True)  # service.name of the spans (the role is the span's adstream.stage)
    export_timeout_s: float = setting(2.0, gt=0)  # one export to the collector, retries included, gives up after this long (a stopping worker waits at most this for its last spans)


class Tracing:
    """A process's tracer and the provider that exports its spans; off: ``tracer`` is None."""

    def __init__(self, tracer: Tracer | None = None,
                 provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self._provider = provider

    @classmethod
    def from_settings(cls, section: TracingSection) -> Tracing:
        """Spans exported over OTLP/HTTP in batches (a background thread), or off."""
        if not section.otlp_endpoint:
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # sampling is decided before a span is made (stage_span), so the SDK's sampler is
        # its default, which records what it is given
        provider = TracerProvider(
            resource=Resource.create({"service.name": section.service_name}))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=section.otlp_endpoint,
                                                timeout=section.export_timeout_s)))
        return cls(provider.get_tracer("adstream"), provider)

    def close(self) -> None:
        """Export what is left and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()


# ---- the batch's clock -----------------------------------------------------------------------


@dataclass(slots=True)
class BatchClock:
    """When the actor took the batch being handled (``received_ns``, epoch ns, the reading
    behind its ``ts.<stage>.in`` stamp) and the spans to end when it stamps the outputs
    sent (the reading behind ``ts.<stage>.out``)."""

    received_ns: int
    ending: list[Span] = field(default_factory=list)

    def end_when_sent(self, spans: Sequence[Span]) -> None:
        self.ending.extend(spans)

    def sent(self, sent_ns: int) -> None:
        for span in self.ending:
            span.end(end_time=sent_ns)
        self.ending.clear()


_BATCH: contextvars.ContextVar[BatchClock | None] = contextvars.ContextVar(
    "adstream_batch_clock", default=None)


def begin_batch(received_ns: int) -> BatchClock:
    """The clock of the batch the current task hands its handler (the actor calls this)."""
    clock = BatchClock(received_ns)
    _BATCH.set(clock)
    return clock


def current_batch() -> BatchClock | None:
    """The clock of the batch being handled in this task; None outside the actor's batches."""
    return _BATCH.get()


# ---- trace context in headers ----------------------------------------------------------------


@functools.cache
def _w3c() -> tuple[TraceContextTextMapPropagator, Getter[dict[str, bytes]],
                    Setter[dict[str, bytes]]]:
    """The W3C propagator and its getter/setter over Kafka headers (bytes values); built on
    first use, so a process that does not trace never imports OpenTelemetry."""
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    class Carrier(Getter[dict[str, bytes]], Setter[dict[str, bytes]]):
        def get(self, carrier: dict[str, bytes], key: str) -> list[str] | None:
            value = carrier.get(key)
            return None if value is None else [value.decode("latin-1")]

        def keys(self, carrier: dict[str, bytes]) -> list[str]:
            return list(carrier)

        def set(self, carrier: dict[str, bytes], key: str, value: str) -> None:
            carrier[key] = value.encode("latin-1")

    carrier = Carrier()
    return TraceContextTextMapPropagator(), carrier, carrier


_UNSAMPLED = frozenset(b"02468ace")  # last hex digit of the flags without the sampled bit


def parent_of(headers: dict[str, bytes], new_trace: float) -> Context | None:
    """What the stage span of a message with ``headers`` is a child of: the span its
    ``traceparent`` names when that is sampled, an empty context (a new trace) when it has
    none (or an invalid one) and wins the draw against ``new_trace`` (an entry stage's
    ``tracing.sample_ratio``; 0 for later stages), else None: not traced. An untraced
    message costs a header lookup (and a draw), without calling OpenTelemetry."""
    raw = headers.get(TRACEPARENT)
    if raw is not None and len(raw) == 55 and raw[-1] in _UNSAMPLED and raw[:3] == b"00-":
        return None  # not sampled upstream
    if raw is None and (new_trace <= 0.0 or random.random() >= new_trace):
        return None
    from opentelemetry import trace
    from opentelemetry.context import Context

    if raw is not None:
        prop, getter, _ = _w3c()
        ctx = prop.extract(headers, getter=getter)
        parent = trace.get_current_span(ctx).get_span_context()
        if parent.is_valid:
            return ctx if parent.trace_flags.sampled else None
        if new_trace <= 0.0 or random.random() >= new_trace:
            return None
    return Context()


def stage_span(tracer: Tracer, name: str, headers: dict[str, bytes], parent: Context, *,
               start_ns: int, attributes: Attributes | None = None,
               links: Sequence[Link] = ()) -> Span | None:
    """The span of a stage's work on a message with ``headers`` (the outgoing ones, which
    carry the input's trace context), a child of ``parent`` (:func:`parent_of`) started at
    ``start_ns``; it replaces the headers' ``traceparent`` with its own. None when the
    tracer does not record it (its sampler said no)."""
    from opentelemetry import trace

    prop, _, setter = _w3c()
    span = tracer.start_span(name, context=parent, kind=trace.SpanKind.CONSUMER,
                             attributes=attributes, links=links, start_time=start_ns)
    if not span.is_recording():
        return None  # its traceparent stays the caller's, or none
    headers.pop(TRACESTATE, None)
    prop.inject(headers, context=trace.set_span_in_context(span), setter=setter)
    return span


def child(tracer: Tracer, parent: Span, name: str, start_ns: int, end_ns: int,
          attributes: Attributes | None = None) -> None:
    """A finished span ``name`` under ``parent``, from ``start_ns`` to ``end_ns``."""
    from opentelemetry import trace

    tracer.start_span(name, context=trace.set_span_in_context(parent), attributes=attributes,
                      start_time=start_ns).end(end_time=end_ns)


def link(headers: dict[str, bytes]) -> Link | None:
    """A link to the span named by ``headers``' traceparent (another input of a fan-in)."""
    from opentelemetry import trace

    if TRACEPARENT not in headers:
        return None
    prop, getter, _ = _w3c()
    ctx = prop.extract(headers, getter=getter)
    span_ctx = trace.get_current_span(ctx).get_span_context()
    return trace.Link(span_ctx) if span_ctx.is_valid else None


def queued_ns(headers: Mapping[str, bytes], fallback_ms: int) -> int:
    """When the message started waiting for this stage (epoch ns): the latest ``ts.*.out``
    stamp or the client's ``sent_ms``, whichever is later (``fallback_ms``, the record's
    timestamp, without either); the queue-wait span starts there, as the load tester's
    queue time does."""
    latest = 0
    sent = headers.get(SENT_MS)
    if sent is not None and sent.isdigit():
        latest = int(sent)
    for k, v in headers.items():
        if k.startswith(STAGE_PREFIX) and k.endswith(".out"):
            try:
                latest = max(latest, int(v))
            except ValueError:
                continue
    return (latest or fallback_ms) * 1_000_000
