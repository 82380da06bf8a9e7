"""Worker processes on a real Kafka broker, each test with its own topics and groups."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import ScoreResult, decode

_ids = itertools.count()
ROLES = ("features", "scorer", "aggregator")
# a scorer with a small in-flight budget and slow batches: a backlog builds up behind it
SLOW_SCORER = {"ADSTREAM_ACTOR_MAX_IN_FLIGHT": "8", "ADSTREAM_ACTOR_RESUME_IN_FLIGHT": "4",
               "ADSTREAM_SCORER_MAX_WAIT_MS": "40"}


class Stack:
    """A config file, topics, and one ``adstream worker`` process per role."""

    def __init__(self, bootstrap: str, model_repo: Path, tmp: Path, **extra: dict) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.prefix = f"t{os.getpid()}x{next(_ids)}x{int(time.time())}"
        self.topics = {name: f"{self.prefix}.{name}"
                       for name in ("requests", "features", "scores", "results", "dlq",
                                    "changelog")}  # each stack its own: ids repeat across tests
        tables: dict[str, dict] = {
            "kafka": {"bootstrap": bootstrap, "group_prefix": self.prefix},
            "topics": {**self.topics, "partitions": 4},
            "scorer": {"model_repo": str(model_repo)},
            "actor": {"drain_timeout_s": 5.0, "commit_interval_ms": 100},
            "log": {"format": "json"},
        }
        for table, values in extra.items():
            tables.setdefault(table, {}).update(values)
        lines = []
        for table, values in tables.items():
            lines.append(f"[{table}]")
            for k, v in values.items():
                value = json.dumps(v) if isinstance(v, str | bool) else repr(v)  # TOML's forms
                lines.append(f"{k} = {value}")
        self.config = tmp / "adstream.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.starts: dict[str, int] = dict.fromkeys(ROLES, 0)

    def cli(self, *args: str, timeout: float = 300, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args, "--config", str(self.config)],
            input=stdin, capture_output=True, timeout=timeout, check=False)

    def create_topics(self) -> None:
        out = self.cli("topics", "create")
        assert out.returncode == 0, out.stderr.decode()

    def start(self, role: str, wait: bool = True, processes: int | None = None,
              name: str | None = None, env: dict[str, str] | None = None,
              own_group: bool = False, standby: int = 0) -> None:
        """Start ``role`` (under a supervisor when ``processes`` is given) as ``name``;
        ``env`` adds environment variables (settings) for that process only; with
        ``own_group`` it leads its own process group (signalled as a terminal would)."""
        name = name or role
        self.starts[name] = self.starts.get(name, 0) + 1
        log = self.tmp / f"{name}.{self.starts[name]}.log"
        self.logs[name] = log
        extra = ["--processes", str(processes)] if processes else []
        extra += ["--standby", str(standby)] if standby else []
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", role, "--config", str(self.config),
             *extra],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
            env={**os.environ, **env} if env else None, start_new_session=own_group)
        if wait:
            self.wait_ready(name)

    def wait_ready(self, role: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"partitions assigned" not in self.logs[role].read_bytes():
            if self.procs[role].poll() is not None:
                raise AssertionError(f"{role} exited: {self.logs[role].read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{role} not ready: {self.logs[role].read_text()[-3000:]}")
            time.sleep(0.1)

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role, wait=False)
        for role in ROLES:
            self.wait_ready(role)

    def stop(self, role: str, timeout: float = 30) -> int:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def members(self, name: str) -> list[int]:
        """Pids of a supervisor's group members now (not its standbys), from its last
        ``members`` log line."""
        for line in reversed(self.logs[name].read_text(errors="replace").splitlines()):
            if line.startswith("{") and '"members"' in line:
                event = json.loads(line)
                if event.get("event") == "members":
                    return sorted(event["members"].values())
        raise AssertionError(f"no members line in the log of {name}")

    def tails(self, lines: int = 15) -> str:
        """The last lines of every worker's log: what a failing fault test shows."""
        out = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            proc = self.procs.get(name)
            state = "running" if proc is not None and proc.poll() is None else "not running"
            out.append(f"--- {name} ({state}):\n" + "\n".join(text))
        return "\n".join(out)

    def alive(self) -> dict[str, bool]:
        return {role: p.poll() is None for role, p in self.procs.items()}

    def close(self) -> None:
        for role in list(self.procs):
            proc = self.procs.pop(role)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def read_topic(self, topic: str, read_committed: bool = False) -> list:
        """Every record of ``topic`` from the beginning to its current end."""
        return asyncio.run(_read_topic(self.bootstrap, topic, read_committed))

    def results(self) -> list[ScoreResult]:
        return [decode(r.value, ScoreResult) for r in self.read_topic(self.topics["results"])]


async def produce_requests(bootstrap: str, topic: str, reqs: list) -> None:
    """Produce ``reqs`` as clients do (keys and headers: sent_ms, deadline, trace id)."""
    from workers.client import request_message

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    try:
        for req in reqs:
            msg = request_message(req, topic)
            await p.send(msg.topic, msg.value, key=msg.key, headers=list(msg.headers.items()))
        await p.flush()
    finally:
        await p.stop()


async def _read_topic(bootstrap: str, topic: str, read_committed: bool = False) -> list:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         isolation_level="read_committed" if read_committed
                         else "read_uncommitted")
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()
            c._client.add_topic(topic)
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out = []
        async def behind() -> bool:
            for tp in tps:
                if await c.position(tp) < end[tp]:
                    return True
            return False

        while await behind():
            batch = await c.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        await c.stop()
