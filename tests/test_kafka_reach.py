"""No broker, or one that cannot be used: one line naming it and why, exit 2; a worker's
client waits for a broker with one line every few seconds; aiokafka's repeats collapsed."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
import structlog

from pipeline import kafka_reach
from pipeline.kafka_clients import KafkaOptions
from pipeline.kafka_reach import KafkaUnavailable, reach
from pipeline.log_collapse import CollapseRepeats


def _dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["topics", "create"], ["produce", "-"], ["status"]])
def test_a_command_with_no_broker_says_so_in_one_line_and_exits_2(command) -> None:
    port = _dead_port()
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *command,
                          "--bootstrap", f"127.0.0.1:{port}"], input="", capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"no Kafka broker answers at 127.0.0.1:{port} (connection refused)" in lines[0]
    assert "Traceback" not in out.stderr and "Unclosed" not in out.stderr
    assert time.monotonic() - started < 20  # one-shot commands do not wait for a broker


async def test_a_client_waits_for_the_broker_logging_every_few_seconds(monkeypatch) -> None:
    monkeypatch.setattr(kafka_reach, "LOG_EVERY_S", 0.5)
    monkeypatch.setattr(kafka_reach, "RETRY_EVERY_S", 0.1)
    port = _dead_port()
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable, match="connection refused") as info:
            await reach(f"127.0.0.1:{port}", KafkaOptions(connect_timeout_s=1.6))
        took = time.monotonic() - started
    assert info.value.retriable
    assert 1.5 <= took < 5
    waits = [e for e in logs if e["event"] == "waiting for Kafka"]
    assert 3 <= len(waits) <= 4  # at 0, 0.5, 1.0, 1.5 s: not once per attempt (16 attempts)
    assert f"127.0.0.1:{port}" in waits[0]["problem"]


async def test_every_bootstrap_broker_is_tried_before_giving_up() -> None:
    with socket.socket() as srv:  # the second broker: a port that accepts, then says nothing
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        dead = _dead_port()
        with pytest.raises(KafkaUnavailable) as info:
            await reach(f"127.0.0.1:{dead},127.0.0.1:{port}",
                        KafkaOptions(request_timeout_ms=500), wait_s=0)
        srv.settimeout(0)
        conn, _ = srv.accept()  # it was tried
        conn.close()
    assert f"no Kafka broker answers at 127.0.0.1:{dead} (connection refused)" == str(info.value)


def _record(msg: str, *args: object, name: str = "aiokafka",
            level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, "conn.py", 1, msg, args, None)


def test_repeated_connection_errors_collapse_to_one_line_per_broker_per_window() -> None:
    now = [0.0]
    f = CollapseRepeats(window_s=5.0, clock=lambda: now[0])
    passed = []
    for i in range(20_000):  # 10 s of a tight reconnect loop against two brokers
        now[0] = i * 0.0005
        for node in (1, 2):
            rec = _record("Unable connect to node with id %s: %s", node, "refused")
            if f.filter(rec):
                passed.append(rec.getMessage())
    assert len(passed) == 4  # each broker at 0 s and at 5 s
    assert passed[0] == "Unable connect to node with id 1: refused"
    assert passed[2].startswith("Unable connect to node with id 1: refused (9999 more like "
                                "this in the last 5 s)")


def test_other_records_pass_untouched() -> None:
    f = CollapseRepeats(clock=lambda: 0.0)
    assert all(f.filter(_record("x %s", 1, level=logging.INFO)) for _ in range(5))
    assert all(f.filter(_record("x %s", 1, name="adstream.actor")) for _ in range(5))
    assert f.filter(_record("Heartbeat failed %s", 1, name="aiokafka.consumer.group_coordinator"))
    assert not f.filter(_record("Heartbeat failed %s", 1,
                                name="aiokafka.consumer.group_coordinator"))


def test_logging_configuration_installs_the_filter_once() -> None:
    from pipeline.logs import configure

    configure("json", "info")
    configure("json", "info")
    handlers = logging.getLogger().handlers
    assert handlers and all(
        sum(isinstance(x, CollapseRepeats) for x in h.filters) == 1 for h in handlers)


def test_a_worker_gives_up_after_connect_timeout_in_one_line(model_repo) -> None:
    port = _dead_port()
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "fused", "--bootstrap",
         f"127.0.0.1:{port}", "--set", "kafka.connect_timeout_s=1.5", "--set",
         f"scorer.model_repo={model_repo}", "--log-format", "json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == f"adstream: no Kafka broker answers at 127.0.0.1:{port} (connection refused)"
    assert sum("waiting for Kafka" in line for line in lines) == 1  # 1.5 s: one line
    assert "Traceback" not in out.stderr and "Unclosed" not in out.stderr
