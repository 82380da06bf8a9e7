"""Messages every role may send besides its main output: dead letters and status replies,
and the dead-letter method the roles' handlers share."""

from __future__ import annotations

import numpy as np

from pipeline.headers import ACCEPT, CONTENT_TYPE, SCHEMA, carry, now_ms
from pipeline.actor import Handler
from pipeline.transport.base import Outgoing, Record
from schemas.encoding import JSON, wants_json
from schemas.errors import SchemaError
from schemas.messages import DeadLetter, ScoreResult, encode, encode_json, schema_name
from workers.settings import Settings

RESULT_SCHEMA = schema_name(ScoreResult.TYPE).encode()


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
        ts_ms=now_ms(),
    )
    return Outgoing(dlq_topic, encode(msg), key=record.key,
                    headers={SCHEMA: schema_name(DeadLetter.TYPE).encode()})


class DeadLettering(Handler):
    """A role's handler whose dead letters go to ``topics.dlq`` under the role's name."""

    settings: Settings

    def dead_letter(self, record: Record, error: Exception) -> list[Outgoing]:
        return [dead_letter(record, error, self.name, self.settings.topics.dlq)]


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
    return result_message(res, topic, carry(headers or {}, RESULT_SCHEMA.decode()))


def result_message(result: ScoreResult, topic: str, headers: dict[str, bytes]) -> Outgoing:
    """The one way a result is sent: MessagePack, or JSON (with ``content-type:
    application/json``) when the request's ``accept`` header asked for it."""
    headers = dict(headers)
    headers[SCHEMA] = RESULT_SCHEMA
    if wants_json(headers.get(ACCEPT)):
        headers[CONTENT_TYPE] = JSON.encode()
        body = encode_json(result)
    else:
        headers.pop(CONTENT_TYPE, None)
        body = encode(result)
    return Outgoing(topic, body, key=result.request_id.encode(), headers=headers)
