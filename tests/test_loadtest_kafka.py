"""The load tester against the real pipeline on a real Kafka broker."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stack import Stack

from loadtest import arrivals
from loadtest.generate import generate, write_jsonl
from loadtest.recorder import record
from loadtest.replay import Measurement, replay
from loadtest.system_under_test import TransportSystem
from loadtest.traffic import Traffic
from pipeline.config import amended
from pipeline.transport import open_transport
from workers.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, model_repo, tmp_path_factory):
    """Topics and one worker process per role, shared by the tests of this module."""
    s = Stack(kafka_bootstrap, model_repo, tmp_path_factory.mktemp("loadtest-stack"))
    s.create_topics()
    try:
        s.start_all()
        yield s
    finally:
        s.close()


def _settings(stack: Stack) -> Settings:
    return amended(Settings(), kafka={"bootstrap": stack.bootstrap}, topics=stack.topics)


def test_replay_of_generated_traffic_through_worker_processes_writes_the_report(
        stack, tmp_path):
    traffic = tmp_path / "traffic.jsonl"
    write_jsonl(traffic, generate(300, seed=12, candidates="lognormal:80,0.6", timeout_ms=5000))
    run_json, html = tmp_path / "RUN.json", tmp_path / "report.html"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "loadtest", "replay", str(traffic),
         "--config", str(stack.config), "--rate", "60", "--arrival", "poisson",
         "--duration", "4", "--warmup", "1", "--slo-p99-ms", "5000",
         "--progress", "plain", "--out", str(run_json), "--html", str(html),
         "--label", "processes=one per role"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(stack.alive().values())
    doc = json.loads(run_json.read_text())
    s = doc["summary"]
    assert s["outcomes"]["ok"] == s["measured"] > 150 and s["outcomes"]["lost"] == 0
    assert 45 < s["offered_rate"] < 75 and 45 < s["achieved_rate"] < 75
    assert doc["slo"]["met"]
    stages = {st["name"]: st for st in doc["stages"]}
    assert all(st["count"] == s["measured"] for st in stages.values())
    assert doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] <= doc["latency_ms"]["max"]
    assert doc["config"]["partitions"] == 4
    assert doc["config"]["processes"] == "one per role"
    assert "p99" in out.stdout and re.search(r"sending .*answered", out.stderr)
    page = html.read_text()
    assert page.count("<svg") >= 5  # latency, throughput, in flight, percentiles, stages
    assert f"<td>{doc['latency_ms']['p99']:.1f}</td>" in page
    for section in ("Latency over time", "Throughput over time", "Where the time goes",
                    "queue before features", "queue to aggregator", "back to client",
                    "Machine", "Software", "SLO met"):
        assert section in page, section
    assert "<script" not in page and "<link" not in page


def test_record_a_replay_from_kafka_and_replay_the_recording(stack, tmp_path):
    """generate → replay (Poisson) while recording the requests topic → replay the recording
    at speed 1: every request is answered again, the recording has the gaps the first replay
    sent with, and the second replay sends with the recorded gaps (within 1 ms at p50)."""
    settings = _settings(stack)
    path = tmp_path / "traffic.jsonl"
    write_jsonl(path, generate(100, seed=13, candidates="uniform:5,120", timeout_ms=5000))
    traffic = Traffic.load(path)
    first = arrivals.plan(traffic.at_ms, rate=60.0, arrival="poisson", requests=150, seed=2)

    async def go() -> tuple[Measurement, Traffic, Measurement]:
        transport = open_transport(settings.kafka.bootstrap)
        try:
            m1 = await _record_while(settings, transport, traffic, first,
                                     tmp_path / "rec.adrec")
            recorded = Traffic.load(tmp_path / "rec.adrec")
            m2 = await replay(_system(settings, transport, recorded),
                              arrivals.plan(recorded.at_ms, speed=1.0), timeout_s=10)
            return m1, recorded, m2
        finally:
            await transport.close()

    m1, recorded, m2 = asyncio.run(go())
    assert len(recorded) == 150
    assert (m1.status == 0).all() and (m2.status == 0).all()  # all answered ok, twice
    sent1, sent2 = np.diff(m1.sent_s) * 1000, np.diff(m2.sent_s) * 1000
    # 2 ms: record timestamps are whole milliseconds and the slower 2-core VM's timers jitter
    assert np.percentile(np.abs(np.diff(recorded.at_ms) - sent1), 50) <= 2.0
    assert np.percentile(np.abs(sent2 - np.diff(recorded.at_ms)), 50) <= 2.0


def _system(settings: Settings, transport, traffic: Traffic) -> TransportSystem:
    return TransportSystem(transport, traffic, requests_topic=settings.topics.requests,
                           results_topic=settings.topics.results, tag=f"{id(traffic):08x}"[-8:])


async def _record_while(settings: Settings, transport, traffic: Traffic,
                        schedule: arrivals.Schedule, out: Path) -> Measurement:
    started, stop = asyncio.Event(), asyncio.Event()
    recorder = asyncio.create_task(record(settings, settings.topics.requests, out,
                                          duration_s=60, max_records=len(schedule),
                                          stop=stop, started=started))
    await started.wait()
    m = await replay(_system(settings, transport, traffic), schedule, timeout_s=10)
    try:
        assert await asyncio.wait_for(recorder, 20) == len(schedule)
    finally:
        stop.set()
    return m
