"""A/B splits by user and a shadow version, through the fused scorer on the memory broker."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import DirectScorer, assert_same_answer

from loadtest.generate import generate
from pipeline.config import amended
from pipeline.metrics import Metrics
from pipeline.transport.memory import MemoryBroker
from schemas import ScoreRequest
from schemas.json_form import request_from_json
from schemas.messages import ScoreResult
from workers.client import ResultWaiter, send_requests
from workers.roles import FUSED, THREE_HOPS, ensure_topics, run_roles, transport_for
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import load_model
from workers.scoring.routing import Split, user_bucket
from workers.settings import Settings

_names = itertools.count()


def test_the_split_takes_the_configured_fraction_of_users_and_sticks() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    for fraction in (0.1, 0.3, 0.5):
        split = Split(2, fraction)
        share = sum(split.version_for(u) == 2 for u in users) / len(users)
        assert abs(share - fraction) <= 0.02, (fraction, share)
    split = Split(2, 0.3)
    assert all(split.version_for(u) == split.version_for(u) for u in users[:2000])
    assert [user_bucket(u) for u in users[:5]] == [user_bucket(u) for u in users[:5]]
    assert Split(2, 0.0).version_for("anyone") is None and Split(2, 1.0).version_for("x") == 2


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ab")
    build_reference_model(repo)
    build_reference_model(repo, version=2, seed=1)
    # version 1 serves: the policy names it; 2 is loaded for the split or the shadow only
    config = repo / "ctr" / "config.toml"
    config.write_text(config.read_text() + "\n[version_policy]\nspecific = [1]\n")
    return repo


async def _serve(s: Settings, reqs: list[ScoreRequest], roles: tuple[str, ...],
                 metrics: Metrics | None = None) -> tuple[dict[str, ScoreResult], list]:
    transport = transport_for(s)
    await ensure_topics(s, transport)
    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(list(roles), s, stop, transport, metrics=metrics))
    async with ResultWaiter(transport, s.topics.results) as waiter:
        futs = {r.request_id: waiter.expect(r.request_id) for r in reqs}
        await send_requests(transport.producer(), reqs, s.topics.requests)
        await asyncio.wait(futs.values(), timeout=30)
    stop.set()
    actors = await task
    return {k: f.result() for k, f in futs.items()}, actors


def _settings(repo: Path) -> tuple[Settings, str]:
    name = f"ab{next(_names)}"
    return amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                   scorer={"model_repo": str(repo)}, features={"chunk_rows": 64},
                   topics={"partitions": 2}), name


def _requests(n: int, seed: int) -> list[ScoreRequest]:
    now = int(time.time() * 1000)
    return [request_from_json(d, now) for d in
            generate(n, seed=seed, candidates="uniform:5,150", timeout_ms=30_000)]


@pytest.mark.parametrize("roles", [FUSED, THREE_HOPS], ids=["fused", "three-hops"])
async def test_split_users_are_scored_by_their_version(two_versions: Path,
                                                       roles: tuple[str, ...]) -> None:
    s, name = _settings(two_versions)
    s = amended(s, scorer={"ab_version": 2, "ab_fraction": 0.4})
    reqs = _requests(80, seed=31)
    try:
        results, _ = await _serve(s, reqs, roles)
    finally:
        MemoryBroker.drop(name)
    direct = {v: DirectScorer(load_model(two_versions, "ctr", v)) for v in (1, 2)}
    split = Split(2, 0.4)
    arms = set()
    for req in reqs:
        res = results[req.request_id]
        expected = split.version_for(req.user_id) or 1
        assert res.model_version == expected, (req.user_id, res.model_version)
        assert_same_answer(direct[expected], req, res)
        arms.add(expected)
    assert arms == {1, 2}


async def test_a_shadow_version_reports_its_difference_and_changes_no_result(
        two_versions: Path) -> None:
    reqs = _requests(60, seed=32)
    s, name = _settings(two_versions)
    s = amended(s, scorer={"shadow_version": 2, "shadow_every": 1})
    metrics = Metrics()
    try:
        results, actors = await _serve(s, reqs, FUSED, metrics)
    finally:
        MemoryBroker.drop(name)
    v1, v2 = (DirectScorer(load_model(two_versions, "ctr", v)) for v in (1, 2))
    for req in reqs:  # exactly what version 1 alone answers
        assert results[req.request_id].model_version == 1
        assert_same_answer(v1, req, results[req.request_id])
    report = actors[0].handler.scorer.shadow.report()
    rows = sum(r.n_candidates for r in reqs)
    assert report["shadowed"] == report["submissions"] > 0 and report["skipped"] == 0
    assert report["rows"] == rows
    deltas = np.concatenate([np.abs(v2.backend.score(*v2.pipeline(r)).astype(np.float64)
                                    - v1.backend.score(*v1.pipeline(r))) for r in reqs])
    assert report["max_abs_delta"] == pytest.approx(deltas.max(), abs=1e-6)
    assert report["mean_abs_delta"] == pytest.approx(deltas.mean(), rel=1e-4)
    family = next(m for m in metrics.collect() if m.name == "adstream_shadow_abs_delta")
    count = next(x.value for x in family.samples if x.name.endswith("_count"))
    assert count == rows
