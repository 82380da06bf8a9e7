"""The Kafka headers every adstream message carries: schema, deadline, trace context, send time."""

from __future__ import annotations

import time

SCHEMA = "schema"
DEADLINE_MS = "deadline_ms"
TRACE_ID = "trace_id"
# W3C trace context (https://www.w3.org/TR/trace-context/): carried to every derived message;
# a stage that traces replaces traceparent with its own span (pipeline/tracing.py)
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SENT_MS = "sent_ms"
# where the request was read (``ads.requests[3]@17``): set by the first stage, carried on
ORIGIN = "origin"
# the body's media type (absent: MessagePack) and the one the answer should have; the
# request's ``accept`` travels with its derived messages to the stage that answers
CONTENT_TYPE = "content-type"
ACCEPT = "accept"


def now_ms() -> int:
    return int(time.time() * 1000)


def make(
    schema: str,
    *,
    deadline_ms: int | None = None,
    trace_id: str | None = None,
    sent_ms: int | None = None,
) -> dict[str, bytes]:
    h = {SCHEMA: schema.encode(), SENT_MS: str(now_ms() if sent_ms is None else sent_ms).encode()}
    if deadline_ms is not None:
        h[DEADLINE_MS] = str(deadline_ms).encode()
    if trace_id:
        h[TRACE_ID] = trace_id.encode()
    return h


def int_header(headers: dict[str, bytes], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


STAGE_PREFIX = "ts."


def stage_in(stage: str) -> str:
    return f"{STAGE_PREFIX}{stage}.in"


def stage_out(stage: str) -> str:
    return f"{STAGE_PREFIX}{stage}.out"


def stage_stamps(stage: str, received_ms: int) -> dict[str, bytes]:
    """When ``stage`` took the input and when it produced the output (epoch ms); the
    load tester turns these into the per-stage and per-queue latency breakdown."""
    return {stage_in(stage): str(received_ms).encode(), stage_out(stage): str(now_ms()).encode()}


def stage_times(headers: dict[str, bytes]) -> dict[str, int]:
    """``{"features.in": ms, "features.out": ms, ...}`` from a message's headers."""
    out = {}
    for k, v in headers.items():
        if k.startswith(STAGE_PREFIX):
            try:
                out[k[len(STAGE_PREFIX):]] = int(v)
            except ValueError:
                continue
    return out


_CARRIED = frozenset({DEADLINE_MS, TRACE_ID, TRACEPARENT, TRACESTATE, SENT_MS, ORIGIN, ACCEPT})


def carry(headers: dict[str, bytes], schema: str) -> dict[str, bytes]:
    """Headers for a message derived from one with ``headers``: same deadline, trace id and
    context, origin, accept and stage timestamps (not the content-type: each message sets
    its own)."""
    out = {k: v for k, v in headers.items()
           if k in _CARRIED or k.startswith(STAGE_PREFIX)}
    out[SCHEMA] = schema.encode()
    return out
