"""Messages every role may send besides its main output: dead letters and status replies."""

from __future__ import annotations

import numpy as np

from pipeline import headers as H
from pipeline.transport.base import Outgoing, Record
from schemas.errors import SchemaError
from schemas.messages import DeadLetter, ScoreResult, encode, schema_name


def dead_letter(record: Record, error: Exception, stage: str, dlq_topic: str) -> Outgoing:
    """The DeadLetter for ``record``: where it came from, why, and its original bytes."""
    reason = str(error) if isinstance(error, SchemaError) else f"{type(error).__name__}: {error}"
    rid = error.request_id if isinstance(error, SchemaError) else None
    msg = DeadLetter(
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        stage=stage,
        error=reason,
        value=record.value,
        key=record.key,
        headers=record.headers,
        request_id=rid,
        ts_ms=H.now_ms(),
    )
    return Outgoing(dlq_topic, encode(msg), key=record.key,
                    headers={H.SCHEMA: schema_name(DeadLetter.TYPE).encode()})


def status_result(
    request_id: str,
    status: str,
    topic: str,
    *,
    reason: str | None = None,
    n_candidates: int = 0,
    headers: dict[str, bytes] | None = None,
) -> Outgoing:
    """A result without ads: ``rejected`` or ``expired``."""
    res = ScoreResult(request_id=request_id, status=status, n_candidates=n_candidates,
                      reason=reason, ad_id=np.zeros(0, np.int64), bid=np.zeros(0, np.float32),
                      score=np.zeros(0, np.float32))
    return Outgoing(topic, encode(res), key=request_id.encode(),
                    headers=H.carry(headers or {}, schema_name(ScoreResult.TYPE)))
