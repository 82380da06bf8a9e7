"""``adstream status``: lag as Kafka's own tool reports it, members, and the workers' metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stack import ROLES, SLOW_SCORER, Stack, produce_requests

from loadtest.generate import generate
from pipeline.config import ConfigError
from pipeline.lag import KafkaLagReader, Member, MemoryLagReader, PartitionLag
from pipeline.transport import TP, Outgoing
from pipeline.transport.memory import MemoryBroker, MemoryTransport
from schemas.json_form import request_from_json
from tools.kafka import KAFKA_VERSION, ensure_kafka
from tools.status import (
    GroupStatus,
    Scrape,
    discovered_endpoints,
    metrics_url,
    quantile,
    read_groups,
    render,
    role_metrics,
    status_settings,
)

# ---- pieces ----------------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.15)
    assert quantile(0.99, buckets) == pytest.approx(0.38)
    assert quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 3.0}) == 0.1  # in +Inf: the last bound


def test_throughput_and_p99_come_from_the_difference_of_two_scrapes() -> None:
    before = Scrape(10.0, processed={"scorer": 100.0},
                    buckets={"scorer": {0.01: 100.0, 0.1: 100.0, float("inf"): 100.0}})
    now = Scrape(12.0, in_flight={"scorer": 7.0}, paused={"scorer": 2.0},
                 processed={"scorer": 300.0},
                 buckets={"scorer": {0.01: 100.0, 0.1: 300.0, float("inf"): 300.0}})
    m = role_metrics("scorer", now, before)
    assert m is not None
    assert (m.in_flight, m.paused, m.records_per_s) == (7, 2, 100.0)
    assert m.p99_s == pytest.approx(0.01 + 0.09 * 0.99)  # only the 200 recent records count
    assert role_metrics("scorer", now, None).records_per_s is None  # type: ignore[union-attr]
    assert role_metrics("features", now, before) is None


def test_metrics_endpoints_are_normalized_and_discovered_per_member_host() -> None:
    assert metrics_url("10.0.0.5:9100") == "http://10.0.0.5:9100/metrics"
    assert metrics_url("http://w:9100/") == "http://w:9100/metrics"
    assert metrics_url("https://w/metrics") == "https://w/metrics"
    members = [Member("m1", "c", "10.0.0.5", ()), Member("m2", "c", "10.0.0.5", ()),
               Member("m3", "c", "::1", ())]
    g = GroupStatus("p-scorer", "scorer", "Stable", members, [])
    assert discovered_endpoints([g], 9100) == ["10.0.0.5:9100", "[::1]:9100"]
    assert discovered_endpoints([g], 0) == []


def test_status_reads_its_tables_and_skips_the_roles_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[kafka]\nbootstrap = "file:1"\ngroup_prefix = "p"\n'
                   '[scorer]\nmodel = "ctr"\n[metrics]\nport = 9100\n')
    args = argparse.Namespace(config=cfg, set=["metrics.port=9200", "scorer.version=3"],
                              bootstrap=None, log_format=None, log_level=None)
    s = status_settings(args, env={"ADSTREAM_KAFKA_BOOTSTRAP": "env:2"})
    assert (s.kafka.bootstrap, s.kafka.group_prefix, s.metrics.port) == ("env:2", "p", 9200)
    args.bootstrap = "flag:3"
    assert status_settings(args, env={}).kafka.bootstrap == "flag:3"
    cfg.write_text("[kafka]\nlinger_ms = 'soon'\n")
    with pytest.raises(ConfigError, match=r"a\.toml: kafka\.linger_ms"):
        status_settings(args, env={})


def test_screen_shows_each_group_its_lag_and_owners() -> None:
    owner = Member("consumer-1-abc", "adstream", "10.0.0.7", (TP("ads.features", 0),))
    g = GroupStatus("adstream-scorer", "scorer", "Stable", [owner],
                    [PartitionLag("ads.features", 0, 40, 52, 12),
                     PartitionLag("ads.features", 1, None, 3, 3)])
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(render([g], "k:9092", {"http://x/metrics": "URLError: refused"}))
    text = console.export_text()
    assert "scorer (adstream-scorer)" in text and "lag 15" in text
    assert "adstream@10.0.0.7" in text and "URLError" in text
    assert g.to_json()["partitions"][1] == {"topic": "ads.features", "partition": 1,
                                            "committed": None, "end": 3, "lag": 3,
                                            "owner": None}


async def test_lag_counts_from_the_committed_offset_or_the_log_start() -> None:
    transport = MemoryTransport("memory://status-lag")
    try:
        await transport.create_topics(["t"], 2)
        producer = transport.producer()
        for i in range(10):
            await producer.send(Outgoing("t", b"x", partition=i % 2))
        consumer = transport.consumer(["t"], "p-features")
        await consumer.start()
        await consumer.commit({TP("t", 0): 2})
        reader = MemoryLagReader(transport)
        lags = await reader.lag("p-features")
        assert [(p.partition, p.committed, p.end, p.lag) for p in lags] == [
            (0, 2, 5, 3), (1, None, 5, 5)]
        (group,) = await read_groups(reader, "p")
        assert (group.role, group.lag, len(group.members)) == ("features", 8, 1)
        assert group.members[0].partitions == (TP("t", 0), TP("t", 1))
        await consumer.stop()
    finally:
        MemoryBroker.drop("status-lag")


class _Admin:
    """The admin calls :class:`KafkaLagReader` makes, answering with encoded responses."""

    def __init__(self, response: Any) -> None:
        self.response = response

    async def list_consumer_groups(self) -> list[tuple[str, str]]:
        return [("p-scorer", "consumer"), ("other", "consumer"), ("p-features", "consumer")]

    async def describe_consumer_groups(self, groups: list[str]) -> list[Any]:
        return [type(self.response).decode(self.response.encode())]


@pytest.mark.parametrize("version", [0, 3])
async def test_kafka_group_fields_are_read_by_name_in_every_response_version(version) -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
    from aiokafka.protocol.admin import DescribeGroupsResponse_v0, DescribeGroupsResponse_v3

    assignment = ConsumerProtocolMemberAssignment(0, [("t", [2, 0])], b"").encode()
    member = ("m-1", "scorer-1", "/10.0.0.7", b"", assignment)
    response = (DescribeGroupsResponse_v0(groups=[(0, "p-scorer", "Stable", "consumer",
                                                   "range", [member])])
                if version == 0 else
                DescribeGroupsResponse_v3(throttle_time_ms=0, groups=[(
                    0, "p-scorer", "Stable", "consumer", "range", [member], 0)]))
    reader = KafkaLagReader("127.0.0.1:1")
    reader._admin, reader._consumer = _Admin(response), object()

    assert await reader.groups("p-") == ["p-features", "p-scorer"]
    info = await reader.describe("p-scorer")
    assert info.state == "Stable"
    assert info.members == (Member("m-1", "scorer-1", "10.0.0.7", (TP("t", 0), TP("t", 2))),)


# ---- against a real broker, next to kafka-consumer-groups ---------------------------------------


def consumer_groups_tool() -> list[str]:
    """``kafka-consumer-groups`` from the project's Kafka jars (the ``kafka-tools`` jar is
    fetched next to them when an older cache lacks it)."""
    try:
        libs = ensure_kafka()
    except Exception as e:  # no jars, no comparison; say why
        pytest.skip(f"the Kafka jars are not available: {e}")
    classpath = [f"{libs}/*"]
    jar = f"kafka-tools-{KAFKA_VERSION}.jar"
    if not (libs / jar).is_file():
        tools = libs.parent / "tools"
        if not (tools / jar).is_file():
            mvn = shutil.which("mvn")
            if mvn is None:
                pytest.skip(f"{libs} has no kafka-tools jar and `mvn` is missing to fetch it")
            partial = libs.parent / f"tools.partial.{os.getpid()}"
            out = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy", f"-DoutputDirectory={partial}",
                 f"-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}"],
                capture_output=True, text=True, timeout=600, check=False, cwd=libs.parent)
            if out.returncode != 0:
                pytest.skip(f"could not fetch kafka-tools {KAFKA_VERSION}: {out.stdout[-2000:]}")
            try:
                partial.rename(tools)
            except OSError:  # another session fetched it meanwhile
                shutil.rmtree(partial, ignore_errors=True)
        classpath.append(f"{tools}/*")
    log4j = Path(__file__).resolve().parent.parent / "tools" / "kafka" / "log4j2.properties"
    return [shutil.which("java") or "java", "-Xmx256m", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", ":".join(classpath),
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"]


def parse_describe(stdout: str, groups: set[str]) -> dict[tuple[str, str, int], dict[str, str]]:
    """``--describe`` rows keyed by (group, topic, partition)."""
    rows = {}
    for line in stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] in groups and f[2].isdigit():
            rows[(f[0], f[1], int(f[2]))] = {"current": f[3], "end": f[4], "lag": f[5],
                                             "consumer": f[6] if len(f) > 6 else "-"}
    return rows


def describe_both(stack: Stack, tool: list[str], groups: list[str]
                  ) -> tuple[dict, dict, str]:
    """``adstream status --json``, its screen, and kafka-consumer-groups, run at once."""
    cmd = [sys.executable, "-m", "pipeline.cli", "status", "--config", str(stack.config),
           "--no-discover"]
    procs = [
        subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        subprocess.Popen([*cmd, "--log-level", "warning"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "160"}),
        subprocess.Popen([*tool, "--bootstrap-server", stack.bootstrap, "--describe",
                          *(a for g in groups for a in ("--group", g))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, (p.args, out, err)
    ours = json.loads(outs[0][0])
    theirs = parse_describe(outs[2][0], set(groups))
    return ours, theirs, outs[1][0].decode()


def assert_same_lag(ours: dict, theirs: dict) -> int:
    """Every partition the tool lists, with the same offsets, lag and owner; total lag."""
    mine = {(g["group"], p["topic"], p["partition"]): p for g in ours["groups"]
            for p in g["partitions"]}
    assert set(theirs) <= set(mine), sorted(set(theirs) - set(mine))
    for key, row in theirs.items():
        p = mine[key]
        if row["current"] == "-":
            assert p["committed"] is None, key
        else:
            assert (p["committed"], p["end"], p["lag"]) == (
                int(row["current"]), int(row["end"]), int(row["lag"])), (key, p, row)
        if row["consumer"] != "-":
            assert p["owner"]["member_id"] == row["consumer"], (key, p, row)
    return sum(p["lag"] for p in mine.values())


async def _groups(stack: Stack) -> list[GroupStatus]:
    reader = KafkaLagReader(stack.bootstrap)
    try:
        return await read_groups(reader, stack.prefix)
    finally:
        await reader.close()


@pytest.mark.kafka
def test_status_shows_the_lag_kafka_consumer_groups_shows_during_a_replay(
        kafka_bootstrap, model_repo, tmp_path, monkeypatch) -> None:
    tool = consumer_groups_tool()
    stack = Stack(kafka_bootstrap, model_repo, tmp_path)
    stack.create_topics()
    try:
        for role in ROLES:
            stack.start(role, wait=False, env=SLOW_SCORER if role == "scorer" else None)
        for role in ROLES:
            stack.wait_ready(role)
        _compare_during_and_after_a_replay(stack, tool)
    finally:
        for p in stack.procs.values():
            p.send_signal(signal.SIGCONT)
        stack.close()


def _compare_during_and_after_a_replay(stack: Stack, tool: list[str]) -> None:
    groups = [f"{stack.prefix}-{role}" for role in ROLES]
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now) for d in generate(300, seed=4, candidates="uniform:20,200",
                                                        timeout_ms=120_000)]

    asyncio.run(produce_requests(stack.bootstrap, stack.topics["requests"], reqs))
    deadline = time.monotonic() + 30
    while True:  # mid-replay: the scorer has committed some chunks and lags behind
        by_role = {g.role: g for g in asyncio.run(_groups(stack))}
        scorer = by_role.get("scorer")
        if scorer and any(p.committed for p in scorer.partitions) and scorer.lag > 20:
            break
        assert time.monotonic() < deadline, by_role
        time.sleep(0.1)
    for p in stack.procs.values():  # freeze offsets and commits where they are
        p.send_signal(signal.SIGSTOP)
    time.sleep(0.5)  # requests already on the wire land
    ours, theirs, screen = describe_both(stack, tool, groups)
    for p in stack.procs.values():
        p.send_signal(signal.SIGCONT)

    assert {g["group"] for g in ours["groups"]} == set(groups)
    assert {k[0] for k in theirs} == set(groups)
    assert assert_same_lag(ours, theirs) > 0
    lag = {g["role"]: g["lag"] for g in ours["groups"]}
    assert lag["scorer"] > 0
    for g in ours["groups"]:
        assert len(g["members"]) == 1 and len(g["members"][0]["partitions"]) == 4, g
        assert f"{g['role']} ({g['group']})" in screen
        assert f"lag {g['lag']}" in screen

    deadline = time.monotonic() + 60
    while any(g.lag for g in asyncio.run(_groups(stack))):  # the replay finishes
        assert time.monotonic() < deadline, "lag did not return to 0"
        time.sleep(0.2)
    ours, theirs, _ = describe_both(stack, tool, groups)
    assert assert_same_lag(ours, theirs) == 0
    assert len(theirs) == 12 and all(row["lag"] == "0" for row in theirs.values())
    assert all(stack.alive().values())
