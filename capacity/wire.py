"""Bytes per request on each topic, from the real encoders (``schemas/``) at C candidates.

The value bytes of every record a request causes, encoded the way the stages encode them:
the request (the load generator's candidate columns), its FeatureChunks and ScoreChunks (one
per ``chunk_rows`` candidates) and its result (top K). Kafka adds per-record and per-batch
overhead (about 70 bytes a record, headers included, for small batches); it is added as a
stated assumption, not measured.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.json_form import request_from_json
from schemas.messages import FeatureChunk, ScoreChunk, ScoreResult, encode

RECORD_OVERHEAD_BYTES = 70  # assumed: record header, the stage stamps in headers, batch share
DENSE, SPARSE = 13, 26  # the reference model's inputs (workers/scoring/reference_model.py)


def _request_bytes(candidates: int) -> int:
    from loadtest.generate import generate

    (d,) = generate(1, seed=0, candidates=f"fixed:{candidates}")
    return len(encode(request_from_json(d, now_ms=0)))


def _chunk_header(n: int, chunk: int, n_chunks: int, total: int) -> dict[str, object]:
    return {"request_id": "req-0-00000000", "chunk": chunk, "n_chunks": n_chunks,
            "n_candidates": total, "top_k": 10, "reply_to": None,
            "deadline_ms": 1_767_225_600_000}


def topic_bytes(candidates: int, chunk_rows: int, top_k: int = 10) -> dict[str, int]:
    """Bytes per request on ``requests``, ``features``, ``scores`` and ``results``."""
    n_chunks = math.ceil(candidates / chunk_rows)
    sizes = [min(chunk_rows, candidates - i * chunk_rows) for i in range(n_chunks)]
    features = scores = 0
    for i, n in enumerate(sizes):
        h = _chunk_header(n, i, n_chunks, candidates)
        features += len(encode(FeatureChunk(
            **h, ad_id=np.arange(n, dtype=np.int64), bid=np.ones(n, np.float32),  # type: ignore[arg-type]
            dense=np.zeros((n, DENSE), np.float32), sparse=np.zeros((n, SPARSE), np.int64))))
        scores += len(encode(ScoreChunk(
            **h, ad_id=np.arange(n, dtype=np.int64), bid=np.ones(n, np.float32),  # type: ignore[arg-type]
            score=np.zeros(n, np.float32))))
    k = min(top_k, candidates)
    result = len(encode(ScoreResult("req-0-00000000", "ok", ad_id=np.arange(k, dtype=np.int64),
                                    bid=np.ones(k, np.float32), score=np.zeros(k, np.float32),
                                    n_candidates=candidates, n_scored=candidates)))
    over = RECORD_OVERHEAD_BYTES
    return {"requests": _request_bytes(candidates) + over,
            "features": features + over * n_chunks, "scores": scores + over * n_chunks,
            "results": result + over}
