"""What one broker runs with: its server properties, SASL_SSL listener, storage format and
JVM arguments."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools.kafka.errors import KafkaSetupError
from tools.kafka.files import tail, write_atomic
from tools.kafka.paths import JVM_OPTS_ENV, MESSAGE_MAX_BYTES, STORAGE_TOOL, resource


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


def scram_args(listener: SaslSslListener | None) -> list[str]:
    """``kafka-storage format`` arguments creating the listener's SCRAM users."""
    if listener is None:
        return []
    args = []
    for mech in listener.mechanisms:
        if mech.startswith("SCRAM-"):
            for user, password in listener.users:
                args += ["--add-scram", f"{mech}=[name={user},password={password}]"]
    return args


def server_config(
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


def write_properties(path: Path, config: dict[str, str]) -> None:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n")

    lines = ["# Written by tools/kafka/broker_config.py; rewritten on every start."]
    lines += [f"{key}={esc(value)}" for key, value in config.items()]
    write_atomic(path, "\n".join(lines) + "\n")


def new_cluster_id() -> str:
    """A random base64url UUID that does not start with '-' (the storage tool would read it
    as an option; Kafka's own Uuid.randomUuid avoids those for the same reason)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def format_storage(
    java: str, libs: Path, properties: Path, config: dict[str, str], cluster_id: str | None = None,
    extra_args: list[str] | None = None,
) -> None:
    log_dirs = [d for d in config["log.dirs"].split(",") if d]
    meta_dirs = [*log_dirs, config.get("metadata.log.dir", "")]
    if all((Path(d) / "meta.properties").is_file() for d in meta_dirs if d):
        return  # formatted before: keep the data
    cmd = [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={resource('log4j2.properties')}",
        "-cp", f"{libs}/*", STORAGE_TOOL, "format", "--ignore-formatted",
        "-t", cluster_id or new_cluster_id(), "-c", str(properties), *(extra_args or []),
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
            f"{tail(proc.stdout + proc.stderr)}"
        )


def jvm_args(java: str, heap: str, data_dir: Path) -> list[str]:
    extra = os.environ.get(JVM_OPTS_ENV, "").split()
    # Parallel young collections pause ~5 ms where serial ones took ~16 ms (measured at
    # 400 requests/s on 2 cores: p99 end to end 44 vs 52 ms); ADSTREAM_KAFKA_JVM_OPTS may
    # choose another collector
    gc = [] if any(re.fullmatch(r"-XX:\+Use\w+GC", a) for a in extra) else ["-XX:+UseParallelGC"]
    args = [
        java, f"-Xmx{heap}", *gc, "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true", f"-Dkafka.logs.dir={data_dir}",
        f"-Dlog4j2.configurationFile={resource('log4j2.properties')}",
    ]  # fmt: skip
    return args + extra

