"""Hot swap: a version added to the repository is loaded, warmed and swapped in while
traffic flows; removing it rolls back; every result names the version that scored it."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import DirectScorer, assert_same_answer
from inprocess import kafka_settings

from loadtest.generate import generate
from pipeline.config import amended
from pipeline.metrics import Metrics
from pipeline.transport.memory import MemoryBroker
from schemas import ScoreRequest
from schemas.json_form import request_from_json
from schemas.messages import ScoreResult
from workers.client import ResultWaiter, send_requests
from workers.roles import THREE_HOPS, ensure_topics, run_roles, scoring_version, transport_for
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import load_model
from workers.scoring.versions import ModelVersions
from workers.settings import Settings

_names = itertools.count()


@dataclass
class Sent:
    req: ScoreRequest
    at: float
    phase: str
    future: asyncio.Future[ScoreResult]
    done_at: float = 0.0


@dataclass
class Replay:
    sent: list[Sent] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def latencies(self, lo: float, hi: float) -> np.ndarray:
        return np.array([s.done_at - s.at for s in self.sent if lo <= s.at < hi])


async def _replay(settings: Settings, repo: Path, rate: float, timeout_ms: int,
                  seconds: tuple[float, float, float]) -> Replay:
    """Open loop at ``rate`` requests/s: v1 alone for seconds[0], then version 2 is written
    into the repository, then after seconds[1] removed again, then seconds[2] more."""
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop = asyncio.Event()
    ready = asyncio.Event()
    roles = asyncio.create_task(run_roles(THREE_HOPS, settings, stop, transport, ready=ready))
    await asyncio.wait_for(ready.wait(), 60)
    producer = transport.producer()
    await producer.start()
    total = sum(seconds)
    n = int(rate * total)
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now) for d in
            generate(n, seed=21, candidates="uniform:10,60", timeout_ms=timeout_ms)]
    async with ResultWaiter(transport, settings.topics.results) as waiter:  # warm up
        warmups = [request_from_json(d, now) for d in
                   generate(10, seed=22, candidates="uniform:10,60", timeout_ms=30_000)]
        futures = [waiter.expect(r.request_id) for r in warmups]
        await send_requests(producer, warmups, settings.topics.requests)
        await asyncio.wait(futures, timeout=30)
    out = Replay()
    phase = "v1"
    staged = repo.parent / "staged-v2"  # version 2, copied beside the repository beforehand
    build_reference_model(staged, version=2, seed=1)
    staged = staged / "ctr" / "2"

    def finished(s: Sent) -> None:
        s.done_at = time.monotonic()

    async def change_repository(at: float) -> None:
        nonlocal phase
        await asyncio.sleep(at + seconds[0] - time.monotonic())
        out.marks["added"] = time.monotonic()
        # the version arrives whole, as an operator's `mv` of a copied directory: building
        # it here would hold this process's GIL (onnx's checker and serializer), where the
        # roles under test run, and measure the test's own stall as the swap's
        staged.rename(repo / "ctr" / "2")
        phase = "v2"
        await asyncio.sleep(at + seconds[0] + seconds[1] - time.monotonic())
        out.marks["removed"] = time.monotonic()
        await asyncio.to_thread(shutil.rmtree, repo / "ctr" / "2")
        phase = "back"

    async with ResultWaiter(transport, settings.topics.results) as waiter, \
            asyncio.TaskGroup() as tg:
        start = time.monotonic()
        tg.create_task(change_repository(start))
        for i, req in enumerate(reqs):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            req.deadline_ms = int(time.time() * 1000) + timeout_ms
            s = Sent(req, time.monotonic(), phase, waiter.expect(req.request_id))
            s.future.add_done_callback(lambda _, s=s: finished(s))
            out.sent.append(s)
            # open loop: the next request does not wait for this one's acknowledgement
            tg.create_task(send_requests(producer, [req], settings.topics.requests))
        await asyncio.wait([s.future for s in out.sent], timeout=30)
    await producer.stop()
    stop.set()
    await roles
    return out


def _check_labels(replay: Replay, repo_v1: Path, repo_v2: Path) -> None:
    """ok, labelled; v1 for what was answered before version 2 was written and for what
    was sent after the rollback settled, v2 in between once it served; scores equal the
    labelled version's."""
    direct = {1: DirectScorer(load_model(repo_v1, "ctr", 1)),
              2: DirectScorer(load_model(repo_v2, "ctr", 2))}
    first_v2 = min(s.at for s in replay.sent if s.future.result().model_version == 2)
    t0 = replay.sent[0].at
    for s in replay.sent:
        res = s.future.result()
        assert res.model == "ctr", res
        if s.done_at < replay.marks["added"]:
            assert res.model_version == 1, (s.req.request_id, res.model_version, s.at - t0,
                                            s.done_at - t0, replay.marks["added"] - t0)
        elif s.phase == "v2" and first_v2 + 1.0 < s.at < replay.marks["removed"]:
            assert res.model_version == 2, (s.req.request_id, res.model_version)
        elif s.phase == "back" and s.at > replay.marks["removed"] + 1.5:
            assert res.model_version == 1, (s.req.request_id, res.model_version)
        assert_same_answer(direct[res.model_version or 0], s.req, res)


@pytest.fixture
def swap_repos(tmp_path: Path) -> tuple[Path, Path]:
    """The served repository (version 1) and a copy of what version 2 will be."""
    repo, ref = tmp_path / "served", tmp_path / "ref"
    build_reference_model(repo)
    build_reference_model(ref, version=2, seed=1)
    return repo, ref


async def test_versions_swap_in_and_roll_back_on_the_memory_broker(
        swap_repos: tuple[Path, Path]) -> None:
    repo, ref = swap_repos
    name = f"swap{next(_names)}"
    s = amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                scorer={"model_repo": str(repo), "poll_s": 0.2}, features={"chunk_rows": 32},
                topics={"partitions": 2})
    try:
        replay = await _replay(s, repo, rate=40, timeout_ms=5000, seconds=(1.5, 3.0, 2.5))
    finally:
        MemoryBroker.drop(name)
    assert all(x.future.done() for x in replay.sent)
    assert {x.future.result().status for x in replay.sent} == {"ok"}
    assert {x.future.result().model_version for x in replay.sent} == {1, 2}
    _check_labels(replay, repo, ref)


async def test_load_unload_and_policies(swap_repos: tuple[Path, Path]) -> None:
    repo, _ = swap_repos
    s = amended(Settings(), scorer={"model_repo": str(repo)})
    spec = load_model(repo, "ctr")
    metrics = Metrics()
    models = ModelVersions(repo, spec, lambda sp: scoring_version(s, sp, metrics))
    dense = np.zeros((4, 13), np.float32)
    sparse = np.zeros((4, 26), np.int64)
    async with asyncio.TaskGroup() as tg:
        models.start(tg)
        assert (await models.submit(dense, sparse))[1] == 1
        build_reference_model(repo, version=2, seed=1)
        build_reference_model(repo, version=3, seed=2)
        (repo / "ctr" / "config.toml").write_text(
            (repo / "ctr" / "config.toml").read_text() + "\n[version_policy]\nlatest = 2\n")
        assert await models.reconcile()
        assert sorted(models.loaded) == [2, 3] and models.serving.version == 3
        out3, v, _ = await models.submit(dense, sparse)
        out2, v2, _ = await models.submit(dense, sparse, version=2)  # an explicit version
        assert (v, v2) == (3, 2) and not np.array_equal(out2, out3)
        batches = next(m for m in metrics.collect() if m.name == "adstream_batch_rows")
        assert {x.labels["version"] for x in batches.samples
                if x.name.endswith("_count") and x.value > 0} == {"1", "2", "3"}
        await models.unload(3)
        assert models.serving.version == 2
        with pytest.raises(ValueError, match="only one loaded"):
            await models.unload(2)
        await models.load(1)
        assert sorted(models.loaded) == [1, 2] and models.serving.version == 2
        text = (repo / "ctr" / "config.toml").read_text().replace("latest = 2", "specific = [1]")
        (repo / "ctr" / "config.toml").write_text(text)
        assert await models.reconcile()
        assert sorted(models.loaded) == [1] and models.serving.version == 1
        models.close()


@pytest.mark.timeout(240)
async def test_hot_swap_on_kafka_keeps_every_request_ok_within_its_deadline(
        kafka_bootstrap: str, swap_repos: tuple[Path, Path]) -> None:
    repo, ref = swap_repos
    s = amended(kafka_settings(kafka_bootstrap, repo), scorer={"poll_s": 0.25},
                features={"chunk_rows": 32})
    timeout_ms = 4000
    replay = await _replay(s, repo, rate=40, timeout_ms=timeout_ms, seconds=(4.0, 3.0, 3.0))
    late = [x for x in replay.sent if not x.future.done()
            or x.done_at - x.at > timeout_ms / 1000 or x.future.result().status != "ok"]
    assert not late, [(x.req.request_id, x.future.done() and x.future.result().status)
                      for x in late][:5]
    _check_labels(replay, repo, ref)
    added, removed = replay.marks["added"], replay.marks["removed"]
    start = replay.sent[0].at
    before = replay.latencies(start + 1.0, added)  # the first second warms the pipeline up
    during = np.concatenate([replay.latencies(added, added + 2.0),
                             replay.latencies(removed, removed + 2.0)])
    p99_before, p99_during = np.quantile(before, 0.99), np.quantile(during, 0.99)
    # 2x, or 100 ms more where the tail before was short: on the 2-core VM a p99 of ~120
    # samples moves by tens of ms by itself (one CI run: 50 -> 109 ms), while a swap that
    # blocked the loop (a load or warm-up on it) costs hundreds of ms to seconds
    assert p99_during <= max(2 * p99_before, p99_before + 0.1), (p99_before, p99_during)


async def test_model_load_and_unload_commands_drive_a_running_scorer(
        swap_repos: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import re
    import socket

    from pipeline.cli import main

    repo, _ = swap_repos
    build_reference_model(repo, version=2, seed=1)
    name = f"admin{next(_names)}"
    (repo / "ctr" / "config.toml").write_text(
        (repo / "ctr" / "config.toml").read_text() + "\n[version_policy]\nspecific = [1]\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                scorer={"model_repo": str(repo)}, metrics={"port": port, "host": "127.0.0.1"})
    url = f"http://127.0.0.1:{port}"
    transport = transport_for(s)
    await ensure_topics(s, transport)
    stop, ready = asyncio.Event(), asyncio.Event()
    roles = asyncio.create_task(run_roles(["scorer"], s, stop, transport, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)

        async def command(*argv: str) -> tuple[int, dict[str, object] | str]:
            code = await asyncio.to_thread(main, ["model", *argv, "--url", url])
            out, err = capsys.readouterr()  # (the roles' own log lines go to stdout too)
            answer = re.search(r"^\{.*^\}", out, re.DOTALL | re.MULTILINE)
            return code, json.loads(answer.group(0)) if code == 0 and answer else err.strip()

        assert await command("versions") == (0, {"model": "ctr", "serving": 1, "loaded": [1]})
        assert await command("load", "--version", "2") == \
            (0, {"model": "ctr", "serving": 2, "loaded": [1, 2]})
        assert await command("unload", "--version", "2") == \
            (0, {"model": "ctr", "serving": 1, "loaded": [1]})
        code, err = await command("unload", "--version", "1")
        assert code == 1 and "is the only one loaded" in str(err) and "\n" not in str(err)
        code, err = await command("load", "--version", "7")
        assert code == 1 and "model version 7 is missing" in str(err)
    finally:
        stop.set()
        await roles
        MemoryBroker.drop(name)
