"""Replay and record through the real roles on the in-process broker (no Kafka needed)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

from loadtest import arrivals
from loadtest.generate import generate, write_jsonl
from loadtest.recorder import record
from loadtest.replay import Measurement, replay
from loadtest.report import render_html
from loadtest.plans import RunOptions
from loadtest.run import describe, measure
from loadtest.system_under_test import TransportSystem
from loadtest.pipeline_target import TargetError, open_target
from loadtest.traffic import Traffic
from pipeline.config import amended
from pipeline.transport.memory import MemoryTransport
from workers.settings import Settings

_names = itertools.count()


def _settings(model_repo: Path) -> Settings:
    return amended(Settings(), kafka={"bootstrap": f"memory://loadtest-{next(_names)}"},
                   topics={"partitions": 2}, scorer={"model_repo": str(model_repo)})


@pytest.fixture
def traffic(tmp_path: Path) -> Traffic:
    path = tmp_path / "traffic.jsonl"
    write_jsonl(path, generate(60, seed=2, candidates="uniform:5,300", timeout_ms=5000))
    return Traffic.load(path)


async def test_replay_through_the_in_process_roles_reports_every_stage(model_repo, traffic):
    schedule = arrivals.plan(traffic.at_ms, rate=80.0, requests=120)
    async with open_target(_settings(model_repo), with_workers=True) as target:
        doc = await measure(target, traffic, schedule,
                            RunOptions(warmup_s=0.25, timeout_s=5.0, slo_p99_ms=5000))
        doc.update(await describe(target))
    s = doc["summary"]
    assert s["sent"] == 120 and s["outcomes"]["ok"] == s["measured"] == 100
    assert s["outcomes"]["lost"] == 0 and doc["slo"]["met"]
    assert s["candidates_scored"] == int(traffic.n_candidates[schedule.entries[20:]].sum())
    stages = {st["name"]: st for st in doc["stages"]}
    assert list(stages) == ["client send lag", "queue before features", "features",
                            "queue to scorer", "scorer", "queue to aggregator", "aggregator",
                            "back to client"]
    assert all(st["count"] == 100 for st in stages.values())
    # the stages add up to the end-to-end latency (whole-millisecond stamps: ±1 ms each)
    total = sum(st["mean"] for st in stages.values())
    assert abs(total - doc["latency_ms"]["mean"]) < 4.0
    assert doc["config"]["partitions"] == 2
    assert "onnxruntime" in doc["software"]
    html = render_html(doc)
    assert "Latency over time" in html and "queue to scorer" in html
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


async def test_memory_broker_needs_the_roles_in_process(model_repo):
    with pytest.raises(TargetError, match="--with-workers"):
        async with open_target(_settings(model_repo), with_workers=False):
            pass


async def test_recording_a_replay_and_replaying_it_keeps_the_gaps(traffic, tmp_path: Path):
    """generate → replay (Poisson) while recording → replay the recording at speed 1 while
    recording again: the gaps between requests survive each step within 1 ms at p50.
    No roles run here (nothing answers), so this process only sends and records."""
    settings = amended(Settings(), kafka={"bootstrap": f"memory://loadtest-{next(_names)}"})
    transport = MemoryTransport(settings.kafka.bootstrap)
    await transport.create_topics([settings.topics.requests, settings.topics.results], 2)
    first = arrivals.plan(traffic.at_ms, rate=150.0, arrival="poisson", requests=200, seed=5)
    m1 = await _record_while(settings, transport, traffic, first, tmp_path / "one.adrec")
    recorded = Traffic.load(tmp_path / "one.adrec")
    assert len(recorded) == 200
    second = arrivals.plan(recorded.at_ms, speed=1.0)
    m2 = await _record_while(settings, transport, recorded, second, tmp_path / "two.adrec")
    again = Traffic.load(tmp_path / "two.adrec")

    def p50_diff_ms(a_ms: np.ndarray, b_ms: np.ndarray) -> float:
        return float(np.percentile(np.abs(np.diff(a_ms) - np.diff(b_ms)), 50))

    assert p50_diff_ms(recorded.at_ms, m1.sent_s * 1000) <= 1.0  # recorded as sent
    assert p50_diff_ms(m2.sent_s * 1000, recorded.at_ms) <= 1.0  # replayed as recorded
    assert p50_diff_ms(again.at_ms, recorded.at_ms) <= 1.0


async def _record_while(settings: Settings, transport: MemoryTransport, traffic: Traffic,
                        schedule: arrivals.Schedule, out: Path) -> Measurement:
    started, stop = asyncio.Event(), asyncio.Event()
    recorder = asyncio.create_task(record(settings, settings.topics.requests, out,
                                          duration_s=None, stop=stop, started=started))
    await started.wait()
    system = TransportSystem(transport, traffic, requests_topic=settings.topics.requests,
                             results_topic=settings.topics.results, tag="0000beef")
    m = await replay(system, schedule, timeout_s=0.05)
    await asyncio.sleep(0.3)
    stop.set()
    assert await recorder == len(schedule)
    assert m.n_sent == len(schedule)
    return m
