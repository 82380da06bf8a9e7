"""Prometheus metrics, /healthz and /readyz: in process on the in-process broker, and
scraped from worker processes on a real broker during a replay."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from stack import ROLES, SLOW_SCORER, Stack, produce_requests

from loadtest.generate import generate
from pipeline.config import ConfigError, amended
from pipeline.endpoint import MetricsServer
from pipeline.metrics import CATALOG, Metrics, sample_names
from pipeline.transport.memory import MemoryBroker
from schemas.json_form import request_from_json
from tools.status import GroupStatus, Observer, StatusSettings
from workers.client import ResultWaiter, request_message, send_requests
from workers.roles import ensure_topics, run_roles, transport_for
from workers.settings import Settings

_names = itertools.count()
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(base: str) -> Samples:
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def values(samples: Samples, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= ls]


# ---- in process, on the in-process broker ----------------------------------------------------


@pytest.fixture
def settings(model_repo):
    # a test that ran `adstream …` in process may have left structlog writing to a captured,
    # now closed, stream; the dead letter below logs a warning
    structlog.reset_defaults()
    name = f"metrics{next(_names)}"
    yield amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                  scorer={"model_repo": str(model_repo)}, topics={"partitions": 3},
                  actor={"max_in_flight": 4, "resume_in_flight": 2},  # so the budget pauses
                  metrics={"port": free_port(), "host": "127.0.0.1", "lag_interval_s": 0.1})
    MemoryBroker.drop(name)


async def test_pipeline_exports_every_metric_the_catalog_names(settings) -> None:
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now) for d in generate(40, seed=3, candidates="uniform:1,200",
                                                        timeout_ms=30_000)]
    reqs[5].deadline_ms = now - 1  # answered `expired` by the feature actor
    transport = transport_for(settings)
    await ensure_topics(settings, transport)
    stop, metrics = asyncio.Event(), Metrics()
    roles = asyncio.create_task(run_roles(ROLES, settings, stop, transport, metrics=metrics))
    base = f"http://127.0.0.1:{settings.metrics.port}"
    async with ResultWaiter(transport, settings.topics.results) as waiter:
        futs = [waiter.expect(r.request_id) for r in reqs] + [waiter.expect("bad-1")]
        producer = transport.producer()
        await send_requests(producer, reqs, settings.topics.requests)
        bad = request_from_json({"request_id": "bad-1", "user_id": "u", "reply_to": "nowhere",
                                 "candidates": {"ad_id": [1], "bid": [0.5]}}, now)
        await producer.send(request_message(bad, settings.topics.requests))  # DLQ + `rejected`
        done, _ = await asyncio.wait(futs, timeout=30)
        assert len(done) == len(futs)
    deadline = time.monotonic() + 10
    while True:  # until the last commits were made and the lag was read after them
        s = await asyncio.to_thread(scrape, base)
        lags = values(s, "adstream_consumer_lag_records")
        if len(lags) == 9 and not any(lags) and (
                total(s, "adstream_records_committed_total")
                == total(s, "adstream_records_consumed_total")):
            break
        assert time.monotonic() < deadline, lags
        await asyncio.sleep(0.1)
    ready = await asyncio.to_thread(get, f"{base}/readyz")
    alive = await asyncio.to_thread(get, f"{base}/healthz")
    stop.set()
    await roles

    exported = {name for name, _ in s}
    gpu = {n for n in sample_names() if n.startswith(("adstream_gpu_", "adstream_shadow_"))}
    assert sample_names() - gpu <= exported, sorted(sample_names() - gpu - exported)
    assert {n for n in exported if n.startswith("adstream_") and not n.endswith("_created")} \
        <= sample_names()
    n = len(reqs) + 1
    assert total(s, "adstream_records_consumed_total", actor="features") == n
    assert total(s, "adstream_records_processed_total", actor="features") == n
    assert total(s, "adstream_dead_letters_total", actor="features") == 1
    assert total(s, "adstream_rejected_total", actor="features") == 1
    assert total(s, "adstream_expired_total", actor="features") == 1
    assert total(s, "adstream_messages_produced_total", topic=settings.topics.dlq) == 1
    chunks = total(s, "adstream_messages_produced_total", actor="features",
                   topic=settings.topics.features)
    assert chunks == len(reqs) - 1  # one chunk per request, none for the expired one
    assert total(s, "adstream_records_consumed_total", actor="scorer") == chunks
    assert total(s, "adstream_messages_produced_total", actor="aggregator") == len(reqs) - 1
    assert total(s, "adstream_end_to_end_seconds_count", actor="aggregator") == len(reqs) - 1
    scored = sum(r.n_candidates for i, r in enumerate(reqs) if i != 5)
    assert total(s, "adstream_batch_rows_sum") == scored
    assert total(s, "adstream_batch_queue_seconds_count") == chunks
    assert total(s, "adstream_stage_seconds_count", actor="scorer") == chunks
    assert total(s, "adstream_pauses_total", actor="features") >= 1
    assert values(s, "adstream_assigned_partitions") == [3.0, 3.0, 3.0]
    assert values(s, "adstream_in_flight_records") == [0.0, 0.0, 0.0]
    assert total(s, "adstream_ready") == 1
    assert ready[0] == 200 and json.loads(ready[1])["ready"] is True, ready
    assert set(json.loads(ready[1])["checks"]) == {"running", "partitions", "broker", "model"}
    assert alive[0] == 200 and json.loads(alive[1])["alive"] is True
    assert metrics.stopped == set(ROLES)
    assert not metrics.readiness()["running"].ok


async def test_readyz_names_each_condition_that_is_not_met() -> None:
    metrics = Metrics()
    metrics.expect(["scorer"])
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    try:
        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/readyz")
        alive, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/healthz")
        missing, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/nope")
    finally:
        await asyncio.to_thread(server.stop)
    checks = json.loads(body)["checks"]
    assert status == 503 and alive == 200 and missing == 404
    assert not checks["running"]["ok"] and "scorer" in checks["running"]["detail"]
    assert not checks["partitions"]["ok"] and "scorer" in checks["partitions"]["detail"]
    assert not checks["broker"]["ok"] and "not asked yet" in checks["broker"]["detail"]


async def test_healthz_fails_once_the_event_loop_stops_beating() -> None:
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    try:
        metrics.heartbeat_at = time.monotonic() - metrics.stall_after_s - 1
        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/healthz")
    finally:
        await asyncio.to_thread(server.stop)
    assert status == 503 and json.loads(body)["alive"] is False


def test_a_busy_port_is_an_error_that_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(Metrics(), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ConfigError, match=r"in use.*ADSTREAM_METRICS_PORT"):
            server.start()


def test_every_catalog_metric_is_registered_or_collected() -> None:
    metrics = Metrics()
    registered = {m.name for m in metrics.registry.collect() if m.name.startswith("adstream")}
    assert registered <= set(CATALOG)
    assert "process_resident_memory_bytes" in {
        s.name for m in metrics.registry.collect() for s in m.samples}
    assert all(kind in ("counter", "gauge", "histogram") for kind, _ in CATALOG.values())
    assert all(name.startswith("adstream_") for name in CATALOG)
    assert all(n.endswith("_seconds") for n, (k, _) in CATALOG.items()
               if k == "histogram" and "rows" not in n
               and not n.endswith("_abs_delta"))  # a score difference has no unit


# ---- worker processes on a real broker --------------------------------------------------------


class Scraper(threading.Thread):
    """Scrapes each role's endpoint every ``every`` seconds until stopped."""

    def __init__(self, urls: dict[str, str], every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.urls, self.every = urls, every
        self.seen: list[dict[str, Samples]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.seen.append({role: scrape(url) for role, url in self.urls.items()})
            self.halt.wait(self.every)


@pytest.mark.kafka
def test_scraped_metrics_rise_during_a_replay_and_lag_returns_to_zero(
        kafka_bootstrap, model_repo, tmp_path, monkeypatch) -> None:
    stack = Stack(kafka_bootstrap, model_repo, tmp_path,
                  metrics={"host": "127.0.0.1", "lag_interval_s": 0.2})
    stack.create_topics()
    urls = {}
    try:
        for role in ROLES:
            port = free_port()
            urls[role] = f"http://127.0.0.1:{port}"
            env = {"ADSTREAM_METRICS_PORT": str(port)}
            stack.start(role, wait=False, env={**env, **SLOW_SCORER} if role == "scorer" else env)
        for role in ROLES:
            stack.wait_ready(role)
        _replay_and_check(stack, urls)
    finally:
        stack.close()


def _replay_and_check(stack: Stack, urls: dict[str, str]) -> None:
    n = 400
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now) for d in generate(n, seed=9, candidates="uniform:20,200",
                                                        timeout_ms=120_000)]
    scraper = Scraper(urls)
    scraper.start()

    time.sleep(0.5)
    asyncio.run(produce_requests(stack.bootstrap, stack.topics["requests"], reqs))
    during = asyncio.run(_status(stack, list(urls.values())))  # the scorer is still busy
    deadline = time.monotonic() + 60
    while True:  # answered, committed, and the lag read after the last commit
        last = scraper.seen[-1]
        answered = total(last["aggregator"], "adstream_messages_produced_total",
                         topic=stack.topics["results"])
        lags = [v for role in ROLES for v in values(last[role], "adstream_consumer_lag_records")]
        if answered >= n and len(lags) == 12 and not any(lags):
            break
        assert time.monotonic() < deadline, (answered, lags)
        time.sleep(0.2)
    scraper.halt.set()
    scraper.join()
    seen = scraper.seen
    first, end = seen[0], seen[-1]

    for role in ROLES:
        consumed = [total(s[role], "adstream_records_consumed_total") for s in seen]
        assert consumed == sorted(consumed), f"{role}: a counter went down"
        assert consumed[0] == 0 and consumed[-1] > 0, role
        assert total(end[role], "adstream_records_processed_total") == consumed[-1]
        assert total(end[role], "adstream_records_committed_total") == consumed[-1]
        assert total(end[role], "adstream_stage_seconds_count") == consumed[-1]
        assert values(end[role], "adstream_in_flight_records") == [0.0]
        assert values(first[role], "adstream_assigned_partitions") == [4.0]
        assert get(f"{urls[role]}/readyz")[0] == 200
        assert get(f"{urls[role]}/healthz")[0] == 200
    assert total(end["features"], "adstream_records_consumed_total") == n
    assert total(end["aggregator"], "adstream_end_to_end_seconds_count") == n
    scored = sum(r.n_candidates for r in reqs)
    assert total(end["scorer"], "adstream_batch_rows_sum") == scored
    # the scorer's backlog: lag, pauses and in-flight records were visible while it lasted
    scorer_consumed = [total(s["scorer"], "adstream_records_consumed_total") for s in seen]
    chunks = scorer_consumed[-1]
    assert any(0 < c < chunks for c in scorer_consumed), "no scrape saw the scorer mid-way"
    assert max(sum(values(s["scorer"], "adstream_consumer_lag_records")) for s in seen) > 0
    assert max(total(s["scorer"], "adstream_in_flight_records") for s in seen) > 0
    assert total(end["scorer"], "adstream_pauses_total") >= 1
    # `adstream status` reads the same endpoints: throughput and p99 per role
    scorer = during["scorer"].metrics
    assert scorer is not None and scorer.records_per_s and scorer.records_per_s > 0, during
    assert scorer.p99_s is not None and 0 < scorer.p99_s < 30
    assert during["scorer"].lag > 0


async def _status(stack: Stack, endpoints: list[str]) -> dict[str, GroupStatus]:
    """What `adstream status` computes: two observations, half a second apart."""
    s = amended(StatusSettings(), kafka={"bootstrap": stack.bootstrap,
                                         "group_prefix": stack.prefix})
    observer = Observer(s, endpoints, discover=False)
    try:
        await observer.observe()
        await asyncio.sleep(0.5)
        groups, errors = await observer.observe()
    finally:
        await observer.close()
    assert not errors
    return {g.role: g for g in groups}


def test_every_metric_is_documented_in_the_operations_guide() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(adstream_[a-z_]+)`", guide))
    exported = {n for n in sample_names() if not n.endswith(("_bucket", "_sum", "_count"))}
    exported |= {n for n, (kind, _) in CATALOG.items() if kind == "histogram"}
    assert exported == documented, (sorted(exported - documented), sorted(documented - exported))
