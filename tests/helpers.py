"""Shared test helpers: the direct (no pipeline) answer to a request, and result checks."""

from __future__ import annotations

import numpy as np

from schemas import ScoreRequest, ScoreResult
from workers.aggregation.ranking import rank
from workers.features.spec import FeaturePipeline
from workers.scoring.backends import create_backend
from workers.scoring.repository import ModelSpec


class DirectScorer:
    """Features + onnxruntime in-process: what the pipeline must reproduce."""

    def __init__(self, spec: ModelSpec) -> None:
        c = spec.config
        self.pipeline = FeaturePipeline.from_spec(list(c.sparse_features),
                                                  list(c.sparse_buckets), list(c.dense_features))
        self.backend = create_backend(spec, "onnxruntime")

    def top_k(self, req: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
        dense, sparse = self.pipeline(req)
        scores = self.backend.score(dense, sparse)
        top = rank(req.candidates["ad_id"], req.candidates["bid"].astype(np.float32), scores,
                   req.top_k)
        return req.candidates["ad_id"][top], scores[top]


def assert_same_answer(direct: DirectScorer, req: ScoreRequest, res: ScoreResult) -> None:
    assert res.status == "ok", (req.request_id, res.status, res.reason)
    assert res.n_scored == res.n_candidates == req.n_candidates
    ad_id, scores = direct.top_k(req)
    np.testing.assert_array_equal(res.ad_id, ad_id, err_msg=req.request_id)
    np.testing.assert_allclose(res.score, scores, atol=1e-5, rtol=0, err_msg=req.request_id)
