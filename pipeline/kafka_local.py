"""A real Apache Kafka broker (KRaft mode, no ZooKeeper) for development and tests.

The broker's jars are fetched once from Maven Central with ``mvn`` (using the pom packaged in
``pipeline/kafka/``) into ``cache_dir()/kafka-<version>/libs``. A broker is a single
``broker,controller`` KRaft node listening on loopback only; its data directory holds
``server.properties``, the log dirs, ``broker.log`` (the JVM's stdout/stderr) and
``broker.json`` (pid and ports), so stopping and starting it again with the same data
directory keeps topics and messages.

CLI: ``adstream kafka start|stop|status`` (see :func:`register`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipeline.kafka_clients import KafkaOptions

__all__ = [
    "KAFKA_VERSION",
    "KafkaSetupError",
    "LocalBroker",
    "LocalCluster",
    "SaslSslListener",
    "broker_answers",
    "cache_dir",
    "describe_cluster",
    "ensure_kafka",
    "find_data_dir",
    "register",
    "start_broker",
    "start_cluster",
    "stop_broker",
    "stop_cluster",
]

KAFKA_VERSION: str = "4.1.1"
"""Kafka release whose jars (``org.apache.kafka:kafka_2.13``) are fetched and run."""

MIN_JAVA_MAJOR = 17
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "ADSTREAM_KAFKA_BOOTSTRAP"
CACHE_ENV = "ADSTREAM_CACHE"
JVM_OPTS_ENV = "ADSTREAM_KAFKA_JVM_OPTS"
MESSAGE_MAX_BYTES = 8 * 1024 * 1024

_RESOURCES = Path(__file__).resolve().parent / "kafka"
_MARKER = ".complete"
_STATE_FILE = "broker.json"
_LOG_FILE = "broker.log"
_PROPERTIES_FILE = "server.properties"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_TAIL_LINES = 40

# Brokers started by this process, so that their exit is noticed (and reaped) without
# leaving zombies that would look alive to ``kill -0``.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_T = TypeVar("_T")


class KafkaSetupError(RuntimeError):
    """Fetching, formatting, starting or stopping the local Kafka broker failed."""


@dataclass(frozen=True)
class SaslSslListener:
    """A second listener speaking SASL_SSL, as managed Kafka services do.

    ``keystore_pem`` holds the broker's unencrypted PKCS#8 private key and its certificate
    chain (PEM); ``users`` (name -> password) get SCRAM credentials for each SCRAM mechanism
    when storage is formatted, and PLAIN logins when PLAIN is enabled."""

    keystore_pem: Path
    users: tuple[tuple[str, str], ...]
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
    port: int = 0  # 0: a free port (kept across restarts of the same data directory)


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


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Where jars and default broker data live: ``$ADSTREAM_CACHE`` or ``~/.cache/adstream``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "adstream"


def find_data_dir(port: int) -> Path:
    """Default data directory of the local broker listening on ``port``."""
    return cache_dir() / "kafka-data" / str(port)


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Directory holding the pom, the download log and ``libs/`` of one Kafka version."""
    return cache_dir() / f"kafka-{version}"


def _resource(name: str) -> Path:
    path = _RESOURCES / name
    if not path.is_file():
        raise KafkaSetupError(f"packaged file {path} is missing; reinstall adstream")
    return path


# --------------------------------------------------------------------------- tools


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return _tail(data, lines) or "(empty log)"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaSetupError(
            f"`java` was not found on PATH (or in $JAVA_HOME). The local Kafka broker needs "
            f"Java {MIN_JAVA_MAJOR}+: install a JDK/JRE (e.g. `apt-get install "
            f"openjdk-17-jre-headless`), or set {BOOTSTRAP_ENV} to use an existing cluster."
        )
    return found


@cache
def _java_major(java: str) -> int:
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"could not run `{java} -version`: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        return 0
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def _checked_java() -> str:
    java = _java()
    major = _java_major(java)
    if major < MIN_JAVA_MAJOR:
        raise KafkaSetupError(
            f"{java} is Java {major or '(unknown version)'}; Kafka {KAFKA_VERSION} needs Java "
            f"{MIN_JAVA_MAJOR}+. Install a newer JDK and put it first on PATH or set JAVA_HOME."
        )
    return java


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (fcntl) held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- download


def ensure_kafka(version: str = KAFKA_VERSION, *, timeout_s: float = 1800) -> Path:
    """Return the directory of Kafka ``version``'s jars, downloading them once with Maven.

    Idempotent and safe to call from several processes at once: the download runs under a
    file lock and a marker file is written only after it completed.
    """
    home = kafka_home(version)
    libs = home / "libs"
    marker = home / _MARKER
    pom_hash = hashlib.sha256(_resource("pom.xml").read_bytes()).hexdigest()

    def complete() -> bool:  # downloaded with the current pom (a changed pom fetches again)
        if not (marker.is_file() and libs.is_dir()):
            return False
        try:
            return bool(json.loads(marker.read_text()).get("pom_sha256") == pom_hash)
        except ValueError:
            return False

    if complete():
        return libs
    with _file_lock(home / ".lock"):
        if complete():  # another process finished meanwhile
            return libs
        _download(version, home, libs, timeout_s)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        _write_atomic(marker, json.dumps({"version": version, "jars": jars,
                                          "pom_sha256": pom_hash}, indent=1) + "\n")
    return libs


def _download(version: str, home: Path, libs: Path, timeout_s: float) -> None:
    _java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(
            "`mvn` (Apache Maven) was not found on PATH; it is needed once to fetch Kafka "
            f"{version}'s jars from Maven Central into {libs}. Install Maven (e.g. "
            f"`apt-get install maven`), or set {BOOTSTRAP_ENV} to use an existing cluster."
        )
    # mvn runs on a copy of the pom in the cache, so nothing is written next to the package.
    pom = home / "pom.xml"
    shutil.copyfile(_resource("pom.xml"), pom)
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}", f"-Dkafka.version={version}",
    ]  # fmt: skip
    advice = (
        "What to do: check that Maven Central (https://repo.maven.apache.org/maven2) is "
        "reachable, or configure a mirror/proxy in ~/.m2/settings.xml; check that Kafka "
        f"{version} exists as org.apache.kafka:kafka_2.13; or set {BOOTSTRAP_ENV} to use an "
        "existing Kafka cluster instead."
    )
    log_path = home / "mvn.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.run(
                cmd, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout_s, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise KafkaSetupError(
            f"fetching Kafka {version} with Maven timed out after {timeout_s:.0f}s.\n"
            f"Last lines of {log_path}:\n{_file_tail(log_path)}\n{advice}"
        ) from exc
    if proc.returncode != 0:
        raise KafkaSetupError(
            f"fetching Kafka {version} with Maven failed (exit {proc.returncode}): "
            f"{' '.join(cmd)}\nLast lines of {log_path}:\n{_file_tail(log_path)}\n{advice}"
        )
    if not (partial / f"kafka_2.13-{version}.jar").is_file():
        raise KafkaSetupError(
            f"Maven finished but {partial} has no kafka_2.13-{version}.jar.\n"
            f"Last lines of {log_path}:\n{_file_tail(log_path)}\n{advice}"
        )
    partial.rename(libs)


# --------------------------------------------------------------------------- processes


def _free_port(exclude: set[int] | None = None) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not exclude or port not in exclude:
            return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill -0
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        pass
    try:
        proc = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip()


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is the Kafka JVM started for ``data_dir``."""
    if pid <= 0 or not _pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    return _MAIN_CLASS in cmd and str(data_dir / _PROPERTIES_FILE) in cmd


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((data_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="kafka-local-check", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# --------------------------------------------------------------------------- broker


def _sasl_ssl_config(listener: SaslSslListener, port: int) -> dict[str, str]:
    """The broker properties of a SASL_SSL listener named SASL_SSL on ``port``."""
    prefix = "listener.name.sasl_ssl."
    config = {
        f"{prefix}sasl.enabled.mechanisms": ",".join(listener.mechanisms),
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(Path(listener.keystore_pem).resolve()),
    }
    for mech in listener.mechanisms:
        if mech.startswith("SCRAM-"):
            config[f"{prefix}{mech.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        elif mech == "PLAIN":
            users = " ".join(f'user_{u}="{pw}"' for u, pw in listener.users)
            config[f"{prefix}plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};")
    config["sasl.enabled.mechanisms"] = ",".join(listener.mechanisms)
    return config


def _scram_args(listener: SaslSslListener | None) -> list[str]:
    """``kafka-storage format`` arguments creating the listener's SCRAM users."""
    if listener is None:
        return []
    args = []
    for mech in listener.mechanisms:
        if mech.startswith("SCRAM-"):
            for user, password in listener.users:
                args += ["--add-scram", f"{mech}=[name={user},password={password}]"]
    return args


def _server_config(
    data_dir: Path, port: int, controller_port: int, extra_config: dict[str, str] | None,
    sasl_ssl: SaslSslListener | None = None, sasl_ssl_port: int | None = None,
) -> dict[str, str]:
    config = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        # Static single-voter quorum: storage is formatted without --standalone and the
        # controller port may change between restarts.
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MESSAGE_MAX_BYTES),
        "replica.fetch.max.bytes": str(MESSAGE_MAX_BYTES),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
    }
    if sasl_ssl is not None and sasl_ssl_port:
        config["listeners"] += f",SASL_SSL://127.0.0.1:{sasl_ssl_port}"
        config["advertised.listeners"] += f",SASL_SSL://127.0.0.1:{sasl_ssl_port}"
        config["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
        config.update(_sasl_ssl_config(sasl_ssl, sasl_ssl_port))
    config.update(extra_config or {})
    return config


def _write_properties(path: Path, config: dict[str, str]) -> None:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n")

    lines = ["# Written by pipeline/kafka_local.py; rewritten on every start."]
    lines += [f"{key}={esc(value)}" for key, value in config.items()]
    _write_atomic(path, "\n".join(lines) + "\n")


def _new_cluster_id() -> str:
    """A random base64url UUID that does not start with '-' (the storage tool would read it
    as an option; Kafka's own Uuid.randomUuid avoids those for the same reason)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _format_storage(
    java: str, libs: Path, properties: Path, config: dict[str, str], cluster_id: str | None = None,
    extra_args: list[str] | None = None,
) -> None:
    log_dirs = [d for d in config["log.dirs"].split(",") if d]
    meta_dirs = [*log_dirs, config.get("metadata.log.dir", "")]
    if all((Path(d) / "meta.properties").is_file() for d in meta_dirs if d):
        return  # formatted before: keep the data
    cmd = [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
        "-cp", f"{libs}/*", _STORAGE_TOOL, "format", "--ignore-formatted",
        "-t", cluster_id or _new_cluster_id(), "-c", str(properties), *(extra_args or []),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise KafkaSetupError("formatting Kafka storage timed out after 120s") from exc
    if proc.returncode != 0:
        raise KafkaSetupError(
            f"formatting Kafka storage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )


def _jvm_args(java: str, heap: str, data_dir: Path) -> list[str]:
    extra = os.environ.get(JVM_OPTS_ENV, "").split()
    # Parallel young collections pause ~5 ms where serial ones took ~16 ms (measured at
    # 400 requests/s on 2 cores: p99 end to end 44 vs 52 ms); ADSTREAM_KAFKA_JVM_OPTS may
    # choose another collector
    gc = [] if any(re.fullmatch(r"-XX:\+Use\w+GC", a) for a in extra) else ["-XX:+UseParallelGC"]
    args = [
        java, f"-Xmx{heap}", *gc, "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true", f"-Dkafka.logs.dir={data_dir}",
        f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
    ]  # fmt: skip
    return args + extra


def _wait_ready(broker: LocalBroker, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    log = broker.data_dir / _LOG_FILE
    while True:
        if not _pid_alive(broker.pid):
            raise KafkaSetupError(
                f"the Kafka broker (pid {broker.pid}) exited during startup.\n"
                f"Last lines of {log}:\n{_file_tail(log)}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if _port_open(broker.port) and _run_sync(
            broker_answers(broker.bootstrap, timeout_s=min(5.0, max(left, 0.5)))
        ):
            return
        time.sleep(0.1)
    _kill_group(broker.pid)
    raise KafkaSetupError(
        f"the Kafka broker at {broker.bootstrap} did not answer within {timeout_s:.0f}s and was "
        f"killed.\nLast lines of {log}:\n{_file_tail(log)}"
    )


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _kill(pid, signal.SIGKILL)
    _wait_exit(pid, 10)


def _running_broker(data_dir: Path, timeout_s: float) -> LocalBroker | None:
    """The broker recorded in ``data_dir/broker.json`` if that process is still running."""
    state = _read_state(data_dir)
    if state is None:
        return None
    pid = int(state.get("pid", 0))
    if not _is_our_broker(pid, data_dir):
        return None
    broker = LocalBroker(data_dir, int(state["port"]), int(state["controller_port"]), pid,
                         state.get("sasl_ssl_port"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # it may still be starting (another process)
        if _run_sync(broker_answers(broker.bootstrap, timeout_s=5)):
            return broker
        if not _pid_alive(pid):
            return None
        time.sleep(0.2)
    raise KafkaSetupError(
        f"a Kafka broker (pid {pid}) is running for {data_dir} but does not answer at "
        f"{broker.bootstrap}; stop it with `adstream kafka stop --data-dir {data_dir}`.\n"
        f"Last lines of its log:\n{_file_tail(data_dir / _LOG_FILE)}"
    )


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
            port = _free_port()
        data_dir = find_data_dir(port)
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / ".lock"):
        running = _running_broker(data_dir, timeout_s)
        if running is not None:
            if port is not None and port != running.port:
                raise KafkaSetupError(
                    f"the broker for {data_dir} already runs on port {running.port}, not "
                    f"{port}; stop it first (`adstream kafka stop --data-dir {data_dir}`)."
                )
            return running
        state = _read_state(data_dir) or {}
        if port is None:
            port = int(state.get("port", 0)) or _free_port()
        if not _port_free(port):
            raise KafkaSetupError(
                f"port {port} on 127.0.0.1 is already in use by another process; choose "
                f"another port or stop what listens there."
            )
        controller_port = int(state.get("controller_port", 0))
        if not controller_port or controller_port == port or not _port_free(controller_port):
            controller_port = _free_port(exclude={port})
        sasl_ssl_port = None
        if sasl_ssl is not None:
            taken = {port, controller_port}
            sasl_ssl_port = sasl_ssl.port or int(state.get("sasl_ssl_port") or 0)
            if not sasl_ssl_port or sasl_ssl_port in taken or not _port_free(sasl_ssl_port):
                sasl_ssl_port = _free_port(exclude=taken)
        return _launch(data_dir, port, controller_port, timeout_s, heap, extra_config,
                       sasl_ssl=sasl_ssl, sasl_ssl_port=sasl_ssl_port)


def _launch(
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
    java = _checked_java()
    properties = data_dir / _PROPERTIES_FILE
    config = _server_config(data_dir, port, controller_port, extra_config, sasl_ssl,
                            sasl_ssl_port)
    _write_properties(properties, config)
    _format_storage(java, libs, properties, config, cluster_id, _scram_args(sasl_ssl))

    log = data_dir / _LOG_FILE
    if log.exists():
        os.replace(log, data_dir / f"{_LOG_FILE}.1")
    cmd = [*_jvm_args(java, heap, data_dir), "-cp", f"{libs}/*", _MAIN_CLASS, str(properties)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _CHILDREN[proc.pid] = proc
    state = {
        "pid": proc.pid,
        "port": port,
        "controller_port": controller_port,
        "sasl_ssl_port": sasl_ssl_port,
        "version": KAFKA_VERSION,
        "bootstrap": f"127.0.0.1:{port}",
        "started_at": time.time(),
    }
    _write_atomic(data_dir / _STATE_FILE, json.dumps(state, indent=1) + "\n")
    broker = LocalBroker(data_dir, port, controller_port, proc.pid, sasl_ssl_port)
    if wait:
        _wait_ready(broker, timeout_s)
    return broker


@dataclass
class LocalCluster:
    """Several KRaft nodes (each broker and controller) on loopback, one data dir each."""

    brokers: list[LocalBroker]
    ports: list[int]
    controller_ports: list[int]
    cluster_id: str

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)


def _cluster_config(node: int, cluster: LocalCluster, extra: dict[str, str] | None
                    ) -> dict[str, str]:
    n = len(cluster.ports)
    config = {
        "node.id": str(node + 1),
        "controller.quorum.voters": ",".join(
            f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(cluster.controller_ports)),
        "default.replication.factor": str(n),
        "min.insync.replicas": str(max(1, n - 1)),
        "offsets.topic.replication.factor": str(n),
        "transaction.state.log.replication.factor": str(n),
        "transaction.state.log.min.isr": str(max(1, n - 1)),
        "share.coordinator.state.topic.replication.factor": str(n),
        "share.coordinator.state.topic.min.isr": str(max(1, n - 1)),
    }
    config.update(extra or {})
    return config


def start_cluster(
    base_dir: Path, nodes: int = 3, *, timeout_s: float = 120, heap: str = "384m",
    extra_config: dict[str, str] | None = None,
) -> LocalCluster:
    """Start a ``nodes``-node KRaft cluster (replication factor ``nodes``,
    ``min.insync.replicas = nodes - 1``) with data under ``base_dir/node-<i>``."""
    base_dir = Path(base_dir).expanduser().resolve()
    taken: set[int] = set()
    ports, cports = [], []
    for _ in range(nodes):
        ports.append(_free_port(exclude=taken))
        taken.add(ports[-1])
        cports.append(_free_port(exclude=taken))
        taken.add(cports[-1])
    cluster = LocalCluster([], ports, cports, _new_cluster_id())
    for i in range(nodes):
        data_dir = base_dir / f"node-{i}"
        data_dir.mkdir(parents=True, exist_ok=True)
        cluster.brokers.append(_launch(data_dir, ports[i], cports[i], timeout_s, heap,
                                       _cluster_config(i, cluster, extra_config),
                                       cluster.cluster_id, wait=False))
    for b in cluster.brokers:
        _wait_ready(b, timeout_s)
    return cluster


def restart_node(cluster: LocalCluster, node: int, *, timeout_s: float = 120,
                 heap: str = "384m") -> LocalBroker:
    """Start node ``node`` of ``cluster`` again (same ports, same data)."""
    old = cluster.brokers[node]
    broker = _launch(old.data_dir, old.port, old.controller_port, timeout_s, heap,
                     _cluster_config(node, cluster, None), cluster.cluster_id)
    cluster.brokers[node] = broker
    return broker


def stop_cluster(cluster: LocalCluster, *, timeout_s: float = 30) -> None:
    for b in cluster.brokers:
        stop_broker(b.data_dir, timeout_s=timeout_s)


def stop_broker(data_dir: Path, *, timeout_s: float = 30) -> bool:
    """Stop the broker recorded in ``data_dir/broker.json``: SIGTERM, then SIGKILL.

    Only a live process that looks like the Kafka JVM of this data directory is signalled.
    Returns whether a broker was stopped. The data (and ``broker.json``, whose ports a later
    start reuses) are kept.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    state = _read_state(data_dir)
    if state is None:
        return False
    pid = int(state.get("pid", 0))
    if not _is_our_broker(pid, data_dir):
        return False
    _kill(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout_s):
        _kill_group(pid)
    return True


# --------------------------------------------------------------------------- admin


async def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",", maxsplit=1)[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bootstrap {bootstrap!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


async def describe_cluster(bootstrap: str, timeout_s: float = 10,
                           opts: KafkaOptions | None = None) -> dict[str, object]:
    """Cluster id, controller id, brokers and topic names of the cluster at ``bootstrap``
    (connected with ``opts``' security; default plaintext)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from pipeline.kafka_clients import KafkaOptions, admin_kwargs

    async def query() -> dict[str, object]:
        admin = AIOKafkaAdminClient(**admin_kwargs(
            bootstrap, opts or KafkaOptions(), "adstream-kafka-local",
            request_timeout_ms=max(1000, int(timeout_s * 1000))))
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            topics = await admin.list_topics()
        finally:
            await admin.close()
        brokers = [
            {"node_id": b["node_id"], "host": b["host"], "port": b["port"]}
            for b in cluster.get("brokers", [])
        ]
        return {
            "cluster_id": cluster.get("cluster_id"),
            "controller_id": cluster.get("controller_id"),
            "brokers": brokers,
            "topics": sorted(topics),
        }

    return await asyncio.wait_for(query(), timeout_s)


async def broker_answers(bootstrap: str, timeout_s: float = 5,
                         opts: KafkaOptions | None = None) -> bool:
    """Whether a Kafka cluster answers at ``bootstrap`` (with ``opts``' security) and has at
    least one live broker."""
    try:
        host, port = _split_bootstrap(bootstrap)
    except ValueError:
        return False
    start = time.monotonic()
    if not await _tcp_open(host, port, timeout_s):
        return False
    left = max(0.5, timeout_s - (time.monotonic() - start))
    try:
        info = await describe_cluster(bootstrap, timeout_s=left, opts=opts)
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False
    brokers = info.get("brokers")
    return isinstance(brokers, list) and len(brokers) > 0


# --------------------------------------------------------------------------- CLI


def _default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def _bootstrap_port(bootstrap: str) -> int:
    try:
        return _split_bootstrap(bootstrap)[1]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _cmd_start(args: argparse.Namespace) -> int:
    port: int = args.port if args.port is not None else _bootstrap_port(args.bootstrap)
    data_dir: Path | None = args.data_dir
    try:
        started = time.monotonic()
        broker = start_broker(port, data_dir, timeout_s=args.timeout, heap=args.heap)
    except KafkaSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(
        f"Kafka {KAFKA_VERSION} answering at {broker.bootstrap} "
        f"(pid {broker.pid}, data dir {broker.data_dir}, {took:.1f}s)"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or find_data_dir(_bootstrap_port(args.bootstrap))
    if stop_broker(data_dir, timeout_s=args.timeout):
        print(f"stopped the Kafka broker of {data_dir}")
    else:
        print(f"no running Kafka broker for {data_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    bootstrap: str = args.bootstrap

    async def query() -> dict[str, object] | None:
        if not await broker_answers(bootstrap, timeout_s=args.timeout):
            return None
        return await describe_cluster(bootstrap, timeout_s=args.timeout)

    try:
        info = _run_sync(query())
    except Exception as exc:  # noqa: BLE001 - reported as "not answering"
        print(f"Kafka at {bootstrap}: not answering ({exc})")
        return 1
    if info is None:
        print(f"Kafka at {bootstrap}: not answering")
        return 1
    brokers = info.get("brokers")
    topics = info.get("topics")
    broker_list = brokers if isinstance(brokers, list) else []
    topic_list = topics if isinstance(topics, list) else []
    print(f"Kafka at {bootstrap}: answering")
    print(f"cluster id: {info.get('cluster_id')}")
    print("brokers: " + ", ".join(f"{b['node_id']}@{b['host']}:{b['port']}" for b in broker_list))
    print(f"topics ({len(topic_list)}): " + (", ".join(str(t) for t in topic_list) or "-"))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kafka start|stop|status`` to the ``adstream`` command line."""
    kafka = subparsers.add_parser(
        "kafka",
        help="run a local Apache Kafka broker (KRaft) for development and tests",
        description="Fetch (once, with Maven) and run a real single-node Kafka broker "
        f"({KAFKA_VERSION}, KRaft) on loopback. Jars are cached in {kafka_home()}.",
    )

    def kafka_help(_: argparse.Namespace) -> int:
        kafka.print_help()
        return 2

    kafka.set_defaults(func=kafka_help)
    commands = kafka.add_subparsers(title="commands", metavar="{start,stop,status}")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--bootstrap",
            default=_default_bootstrap(),
            help=f"host:port of the broker (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})",
        )
        return parser

    start = add("start", "start the local broker (or report the one already running)")
    start.add_argument("--port", type=int, help="listener port (default: the bootstrap's)")
    start.add_argument(
        "--data-dir", type=Path, help="data directory (default: <cache>/kafka-data/<port>)"
    )
    start.add_argument("--heap", default="512m", help="JVM max heap (default: 512m)")
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait (default 90)")
    start.set_defaults(func=_cmd_start)

    stop = add("stop", "stop the local broker (SIGTERM, then SIGKILL)")
    stop.add_argument(
        "--data-dir", type=Path, help="data directory (default: that of the bootstrap's port)"
    )
    stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    stop.set_defaults(func=_cmd_stop)

    status = add("status", "show whether the broker answers, its cluster id, brokers, topics")
    status.add_argument("--timeout", type=float, default=5, help="seconds to wait (default 5)")
    status.set_defaults(func=_cmd_status)
