"""Clean stops, static membership ids and fencing, without a broker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import IllegalOperation, KafkaTimeoutError, ProducerFenced

from pipeline.kafka_clients import KafkaOptions
from pipeline.membership import CHILD_INDEX_ENV, group_instance_id, instance_suffix
from pipeline.stop_signals import Stop, StopSignals
from pipeline.transactions import PartitionTransactions
from pipeline.transport.base import TP, Fenced, Producer
from pipeline.transport.kafka import KafkaProducer
from pipeline.transport.memory import MemoryTransport

ROOT = Path(__file__).resolve().parent.parent


def test_repeats_of_one_stop_are_one_stop_and_a_later_signal_forces():
    now = [0.0]
    s = StopSignals(same_stop_s=1.0, clock=lambda: now[0])
    assert s.received() is Stop.CLEAN
    now[0] = 0.2
    assert s.received() is Stop.NONE  # the terminal's copy, then the supervisor's
    now[0] = 2.0
    assert s.received() is Stop.FORCE
    now[0] = 3.0
    assert s.received() is Stop.NONE


def test_only_a_supervised_child_has_a_stable_instance_id():
    assert instance_suffix(True, "", {}) is None
    assert instance_suffix(False, "h", {CHILD_INDEX_ENV: "1"}) is None
    assert instance_suffix(True, "hostA", {CHILD_INDEX_ENV: "3"}) == "hostA-3"
    assert instance_suffix(True, "", {CHILD_INDEX_ENV: "0"}).endswith("-0")
    assert group_instance_id("ads-scorer", "hostA-3") == "ads-scorer-hostA-3"
    assert group_instance_id("ads-scorer", None) is None


def test_the_kafka_consumer_joins_with_the_instance_id():
    from pipeline.transport.kafka import KafkaConsumer

    static = KafkaConsumer("b:9092", ["t"], "g", None, False,
                           KafkaOptions(instance_suffix="h-1"))
    assert static._kwargs["group_instance_id"] == "g-h-1"
    dynamic = KafkaConsumer("b:9092", ["t"], "g", None, False, KafkaOptions())
    assert dynamic._kwargs["group_instance_id"] is None


class _FencedClient:
    """What aiokafka's transactional producer does once another producer took its id."""

    async def commit_transaction(self) -> None:
        raise ProducerFenced()

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        raise IllegalOperation("Not in the middle of a transaction")

    async def abort_transaction(self) -> None:
        raise KafkaTimeoutError()

    async def send(self, *args: Any, **kw: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(ProducerFenced())
        return fut


async def test_a_fenced_producer_raises_fenced_from_every_operation():
    from pipeline.transport.base import Outgoing

    p = KafkaProducer("b:9092", KafkaOptions(), transactional_id="g.scorer.t.0")
    p._p = _FencedClient()
    with pytest.raises(Fenced, match=r"g\.scorer\.t\.0 fenced"):
        await p.commit_transaction()
    with pytest.raises(Fenced, match="Not in the middle of a transaction"):
        await p.send_offsets_to_transaction({TP("t", 0): 5}, "g")
    with pytest.raises(Fenced):
        await (await p.send(Outgoing("t", b"x")))
    with pytest.raises(KafkaTimeoutError):  # other errors stay what they are
        await p.abort_transaction()


class _TxProducer(Producer):
    stopped = False

    async def start(self) -> None: ...
    async def stop(self) -> None:
        self.stopped = True
    async def flush(self) -> None: ...
    async def begin_transaction(self) -> None: ...
    async def send(self, msg: Any) -> asyncio.Future[None]:
        raise AssertionError("a dropped producer is never sent to")


class _TxTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__("memory://fence")
        self.made: list[_TxProducer] = []

    def producer(self, transactional_id: str | None = None) -> Producer:
        self.made.append(_TxProducer())
        return self.made[-1]


async def test_a_dropped_fenced_producer_sends_nothing_more():
    transport = _TxTransport()
    tx = PartitionTransactions(transport, "g", "g.role")
    tp = TP("t", 0)
    await tx.open({tp})
    assert tx.owns(tp)
    await tx.discard(tp)
    assert not tx.owns(tp)
    with pytest.raises(Fenced):
        await tx.send(tp, [])
    await tx.commit(tp, 3)  # nothing to commit for a dropped producer: no error
    assert transport.made[0].stopped


def _spawn(code: str, tmp: Path, path: Path | None = None) -> subprocess.Popen[bytes]:
    script = tmp / "prog.py"
    script.write_text(textwrap.dedent(code))
    python_path = str(ROOT) if path is None else f"{ROOT}{os.pathsep}{path}"
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": python_path})


RUNNER = """
    import asyncio, sys
    from pipeline import runner

    async def main(stop):
        print("ready", flush=True)
        await stop.wait()
        print("draining", flush=True)
        await asyncio.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
        print("drained", flush=True)
        return 0

    sys.exit(runner.run(main))
"""


def _ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"


def test_a_stop_heard_twice_at_once_drains_and_exits_0(tmp_path):
    proc = _spawn(RUNNER, tmp_path)
    _ready(proc)
    proc.send_signal(signal.SIGINT)  # the terminal's
    proc.send_signal(signal.SIGTERM)  # and the supervisor's (or an orchestrator's)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"drained" in out and b"Traceback" not in out, out.decode()


def test_a_later_second_signal_exits_at_once_without_a_traceback(tmp_path):
    proc = _spawn(RUNNER.replace("else 0.5", "else 60"), tmp_path)
    _ready(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1 and time.monotonic() - started < 3, out.decode()
    assert b"draining" in out and b"drained" not in out
    assert b"Traceback" not in out and b"without draining" in out, out.decode()


CHILD = """
import os, signal, sys, time
heard = []
signal.signal(signal.SIGINT, lambda s, f: heard.append(s))
signal.signal(signal.SIGTERM, lambda s, f: heard.append(s))
print("child", os.environ["ADSTREAM_CHILD_INDEX"], flush=True)
while not heard:
    time.sleep(0.01)
time.sleep(0.5)  # draining: a second copy of the stop would arrive now
print("child heard", len(heard), flush=True)
"""

SUPERVISOR = """
    import sys
    from pipeline.supervisor import Supervisor
    print("ready", flush=True)
    sys.exit(Supervisor([sys.executable, "-c", CHILD], 2, stop_timeout_s=10).run())
"""


def test_supervisor_passes_one_stop_on_once_and_exits_0(tmp_path):
    proc = _spawn(SUPERVISOR.replace("CHILD", repr(CHILD)), tmp_path)
    _ready(proc)
    time.sleep(1.0)  # the children are up
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("child heard 1") == 2 and "child heard 2" not in text, text
    assert "child 0" in text and "child 1" in text


STANDBY_CHILD = """
import asyncio, os, sys, time
from pipeline import runner
from pipeline.membership import CHILD_INDEX_ENV, claim

async def main(stop):
    started = os.environ[CHILD_INDEX_ENV]
    if not await claim(stop):
        print(f"standby left {os.getpid()}", flush=True)
        return 0
    print(f"member {os.environ[CHILD_INDEX_ENV]} pid {os.getpid()} was {started} at "
          f"{time.monotonic()}", flush=True)
    await stop.wait()
    print(f"member stopped {os.environ[CHILD_INDEX_ENV]}", flush=True)
    return 0

sys.exit(runner.run(main))
"""

STANDBY_SUPERVISOR = """
    import sys
    from pipeline.supervisor import Supervisor
    print("ready", flush=True)
    sys.exit(Supervisor([sys.executable, "-c", CHILD], 2, standby=1, stop_timeout_s=10,
                        min_uptime_s=0.5).run())
"""


MEMBER = re.compile(r"member (\d+) pid (\d+) was (\S+) at ([\d.]+)")


class _Output:
    """Everything ``proc`` prints, read by a thread, so a wait has a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            with self._lock:
                self.text += line.decode(errors="replace")

    def wait_for(self, pattern: str, n: int = 1, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text)) < n:
            assert time.monotonic() < deadline, f"no {n} x {pattern!r} in:\n{self.text}"
            time.sleep(0.02)
        return self.text

    def rest(self, timeout: float = 10) -> str:
        self._thread.join(timeout)
        return self.text


FORK_CHILD = STANDBY_CHILD.replace("sys.exit(runner.run(main))", """
print(f"imported {os.getpid()}", flush=True)

def entry(argv):
    assert sys.argv[1:] == argv == ["--set", "x=1"], (sys.argv, argv)
    return runner.run(main)
""")

FORK_SUPERVISOR = """
    import sys
    from pipeline.launch import Fork
    from pipeline.supervisor import Supervisor
    if __name__ == "__main__":  # a fork imports this script again as __mp_main__
        print("ready", flush=True)
        sys.exit(Supervisor(Fork("forked_child:entry", ["--set"], preload=["forked_child"]),
                            2, standby=1, stop_timeout_s=10, min_uptime_s=0.5,
                            child_args=lambda slot: ["x=1"]).run())
"""


@pytest.mark.parametrize("launch", ["exec", "fork"])
def test_a_standby_takes_a_killed_members_index_at_once_and_is_replaced(tmp_path, launch):
    if launch == "exec":
        proc = _spawn(STANDBY_SUPERVISOR.replace("CHILD", repr(STANDBY_CHILD)), tmp_path)
    else:  # children forked from a zygote that imported their module once
        (tmp_path / "forked_child.py").write_text(FORK_CHILD)
        proc = _spawn(FORK_SUPERVISOR, tmp_path, path=tmp_path)
    _ready(proc)
    out = _Output(proc)
    members = {int(m[1]): int(m[2]) for m in MEMBER.finditer(out.wait_for(MEMBER.pattern, 2))}
    assert sorted(members) == [0, 1], out.text
    out.wait_for("standby: loaded")  # the standby is up and waiting
    killed_at = time.monotonic()
    os.kill(members[1], signal.SIGKILL)
    out.wait_for(MEMBER.pattern, 3)
    took = [m for m in MEMBER.finditer(out.text) if m[3] == "standby"]
    assert len(took) == 1 and took[0][1] == "1", out.text  # member 1's index, by the standby
    assert float(took[0][4]) - killed_at < 1.0, out.text
    out.wait_for("standby: loaded", 2)  # a new standby is up too; now stop everything
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    text = out.rest()
    assert proc.returncode == 0, text
    assert text.count("member stopped") == 2 and "standby left" in text, text
    assert "a standby takes over" in text and "Traceback" not in text, text
    if launch == "fork":  # five children (two members, three standbys), one import
        assert text.count("imported ") == 1, text

