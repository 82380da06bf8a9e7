"""A ScoreRequest as a Kafka record: key, value and headers exactly as the contract says."""

from __future__ import annotations

from pipeline.headers import make as make_headers
from pipeline.transport.base import Outgoing
from schemas.messages import ScoreRequest, encode, schema_name

REQUEST_SCHEMA = schema_name(ScoreRequest.TYPE)


def request_message(req: ScoreRequest, topic: str, trace_id: str | None = None) -> Outgoing:
    """Keyed by user id (one user's requests stay in order); headers ``schema``, ``sent_ms``,
    ``deadline_ms`` (the body's, when it has one) and ``trace_id`` (default: the request id)."""
    headers = make_headers(REQUEST_SCHEMA, deadline_ms=req.deadline_ms,
                     trace_id=trace_id or req.request_id)
    return Outgoing(topic, encode(req), key=req.user_id.encode(), headers=headers)
