"""The spans of a request's trace: one stage span per stage, with its steps as children.

A stage span (``features``, ``scorer``, ``aggregator``, ``fused``) runs from when the
message began to wait for the stage (the previous stage's ``ts.*.out`` stamp, or the
client's ``sent_ms``) until the stage handed its outputs to the producer (its
``ts.<stage>.out``); it is a child of the upstream span named by the message's
``traceparent`` and replaces it on the outputs. Its children: ``queue wait`` (until the
stage took the message, its ``ts.<stage>.in``) and the steps: ``feature plan``, ``batch
wait`` and ``model`` (per batcher submission), ``aggregation``. Built only for sampled
messages and only when the role has a tracer: per request (per chunk in the scorer), never
per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.batcher import Timing
from pipeline.tracing import Attributes, child, queued_ns, stage_span
from pipeline.transport.base import Record

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, Tracer

QUEUE_WAIT = "queue wait"
FEATURE_PLAN = "feature plan"
BATCH_WAIT = "batch wait"
MODEL = "model"
AGGREGATION = "aggregation"


def record_attributes(record: Record, request_id: str) -> dict[str, str | int]:
    return {"adstream.request_id": request_id, "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset}


def open_stage(tracer: Tracer, stage: str, headers: dict[str, bytes], parent: Context,
               received_ns: int, *, fallback_ms: int, attributes: Attributes,
               links: Sequence[Link] = ()) -> Span | None:
    """The stage span of a traced message (``parent``: :func:`~pipeline.tracing.parent_of`
    its headers) with (outgoing) ``headers``, and its ``queue wait`` child; it writes the
    span into ``headers``' traceparent."""
    queued = min(queued_ns(headers, fallback_ms), received_ns)
    span = stage_span(tracer, stage, headers, parent, start_ns=queued,
                      attributes={"adstream.stage": stage, **attributes}, links=links)
    if span is not None:
        child(tracer, span, QUEUE_WAIT, queued, received_ns)
    return span


def model_steps(tracer: Tracer, span: Span, timings: Sequence[Timing]) -> None:
    """``batch wait`` and ``model`` of each batcher submission the part was scored in."""
    for t in timings:
        child(tracer, span, BATCH_WAIT, t.queued_ns, t.started_ns)
        child(tracer, span, MODEL, t.started_ns, t.ended_ns)
