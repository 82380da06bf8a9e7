"""One local single-node KRaft broker: start it (or find it running), wait until it answers,
stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.kafka.broker_config import (
    SaslSslListener,
    format_storage,
    jvm_args,
    scram_args,
    server_config,
    write_properties,
)
from tools.kafka.download import ensure_kafka
from tools.kafka.errors import KafkaSetupError
from tools.kafka.files import file_lock, file_tail, write_atomic
from tools.kafka.java import checked_java
from tools.kafka.paths import (
    KAFKA_VERSION,
    LOG_FILE,
    MAIN_CLASS,
    PROPERTIES_FILE,
    STATE_FILE,
    find_data_dir,
)
from tools.kafka.probes import broker_answers
from tools.kafka.processes import (
    CHILDREN,
    free_port,
    is_our_broker,
    kill,
    kill_group,
    pid_alive,
    port_free,
    port_open,
    read_state,
    run_sync,
    wait_exit,
)


@dataclass
class LocalBroker:
    """A local single-node KRaft broker started by :func:`start_broker`."""

    data_dir: Path
    port: int
    controller_port: int
    pid: int
    sasl_ssl_port: int | None = None  # the SaslSslListener's port, when it has one

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str | None:
        return f"127.0.0.1:{self.sasl_ssl_port}" if self.sasl_ssl_port else None


def _await_answer(broker: LocalBroker, timeout_s: float) -> bool | None:
    """Poll until ``broker`` answers (True) or its process exits (False); None when
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not pid_alive(broker.pid):
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if port_open(broker.port) and run_sync(
            broker_answers(broker.bootstrap, timeout_s=min(5.0, max(left, 0.5)))
        ):
            return True
        time.sleep(0.1)


def wait_ready(broker: LocalBroker, timeout_s: float) -> None:
    answered = _await_answer(broker, timeout_s)
    if answered:
        return
    log = broker.data_dir / LOG_FILE
    if answered is False:
        raise KafkaSetupError(
            f"the Kafka broker (pid {broker.pid}) exited during startup.\n"
            f"Last lines of {log}:\n{file_tail(log)}"
        )
    kill_group(broker.pid)
    raise KafkaSetupError(
        f"the Kafka broker at {broker.bootstrap} did not answer within {timeout_s:.0f}s and was "
        f"killed.\nLast lines of {log}:\n{file_tail(log)}"
    )


def _recorded_pid(data_dir: Path) -> tuple[dict[str, Any], int] | None:
    """``data_dir/broker.json`` and its pid, if that process is still our broker."""
    state = read_state(data_dir)
    if state is None:
        return None
    pid = int(state.get("pid", 0))
    if not is_our_broker(pid, data_dir):
        return None
    return state, pid


def _running_broker(data_dir: Path, timeout_s: float) -> LocalBroker | None:
    """The broker recorded in ``data_dir/broker.json`` if that process is still running."""
    recorded = _recorded_pid(data_dir)
    if recorded is None:
        return None
    state, pid = recorded
    broker = LocalBroker(data_dir, int(state["port"]), int(state["controller_port"]), pid,
                         state.get("sasl_ssl_port"))
    answered = _await_answer(broker, timeout_s)  # it may still be starting (another process)
    if answered is None:
        raise KafkaSetupError(
            f"a Kafka broker (pid {pid}) is running for {data_dir} but does not answer at "
            f"{broker.bootstrap}; stop it with `adstream kafka stop --data-dir {data_dir}`.\n"
            f"Last lines of its log:\n{file_tail(data_dir / LOG_FILE)}"
        )
    return broker if answered else None


def _port_or_free(wanted: int, taken: set[int]) -> int:
    """``wanted`` (a recorded or asked-for port) if it is set, not taken and free on loopback;
    otherwise a free one."""
    if wanted and wanted not in taken and port_free(wanted):
        return wanted
    return free_port(exclude=taken)


def start_broker(
    port: int | None = None,
    data_dir: Path | None = None,
    *,
    timeout_s: float = 90,
    heap: str = "512m",
    extra_config: dict[str, str] | None = None,
    sasl_ssl: SaslSslListener | None = None,
) -> LocalBroker:
    """Start (or find already running) a local KRaft Kafka broker and wait until it answers.

    With ``sasl_ssl`` it also listens for SASL_SSL clients (its users are created when the
    storage is formatted, so on a first start only).

    ``port`` defaults to the port recorded in ``data_dir`` (restart) or a free loopback port;
    ``data_dir`` defaults to :func:`find_data_dir` of the port. Storage is formatted only the
    first time, so starting again with the same data directory keeps topics and messages.
    If the broker recorded in ``data_dir`` is still running and answering it is returned.
    """
    if data_dir is None:
        if port is None:
            port = free_port()
        data_dir = find_data_dir(port)
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(data_dir / ".lock"):
        running = _running_broker(data_dir, timeout_s)
        if running is not None:
            if port is not None and port != running.port:
                raise KafkaSetupError(
                    f"the broker for {data_dir} already runs on port {running.port}, not "
                    f"{port}; stop it first (`adstream kafka stop --data-dir {data_dir}`)."
                )
            return running
        state = read_state(data_dir) or {}
        if port is None:
            port = int(state.get("port", 0)) or free_port()
        if not port_free(port):
            raise KafkaSetupError(
                f"port {port} on 127.0.0.1 is already in use by another process; choose "
                f"another port or stop what listens there."
            )
        controller_port = _port_or_free(int(state.get("controller_port", 0)), {port})
        sasl_ssl_port = None
        if sasl_ssl is not None:
            sasl_ssl_port = _port_or_free(
                sasl_ssl.port or int(state.get("sasl_ssl_port") or 0), {port, controller_port})
        return launch(data_dir, port, controller_port, timeout_s, heap, extra_config,
                       sasl_ssl=sasl_ssl, sasl_ssl_port=sasl_ssl_port)


def launch(
    data_dir: Path,
    port: int,
    controller_port: int,
    timeout_s: float,
    heap: str,
    extra_config: dict[str, str] | None,
    cluster_id: str | None = None,
    wait: bool = True,
    sasl_ssl: SaslSslListener | None = None,
    sasl_ssl_port: int | None = None,
) -> LocalBroker:
    libs = ensure_kafka()
    java = checked_java()
    properties = data_dir / PROPERTIES_FILE
    config = server_config(data_dir, port, controller_port, extra_config, sasl_ssl,
                            sasl_ssl_port)
    write_properties(properties, config)
    format_storage(java, libs, properties, config, cluster_id, scram_args(sasl_ssl))

    log = data_dir / LOG_FILE
    if log.exists():
        os.replace(log, data_dir / f"{LOG_FILE}.1")
    cmd = [*jvm_args(java, heap, data_dir), "-cp", f"{libs}/*", MAIN_CLASS, str(properties)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    CHILDREN[proc.pid] = proc
    state = {
        "pid": proc.pid,
        "port": port,
        "controller_port": controller_port,
        "sasl_ssl_port": sasl_ssl_port,
        "version": KAFKA_VERSION,
        "bootstrap": f"127.0.0.1:{port}",
        "started_at": time.time(),
    }
    write_atomic(data_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")
    broker = LocalBroker(data_dir, port, controller_port, proc.pid, sasl_ssl_port)
    if wait:
        wait_ready(broker, timeout_s)
    return broker


def stop_broker(data_dir: Path, *, timeout_s: float = 30) -> bool:
    """Stop the broker recorded in ``data_dir/broker.json``: SIGTERM, then SIGKILL.

    Only a live process that looks like the Kafka JVM of this data directory is signalled.
    Returns whether a broker was stopped. The data (and ``broker.json``, whose ports a later
    start reuses) are kept.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    recorded = _recorded_pid(data_dir)
    if recorded is None:
        return False
    _, pid = recorded
    kill(pid, signal.SIGTERM)
    if not wait_exit(pid, timeout_s):
        kill_group(pid)
    return True
