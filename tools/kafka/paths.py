"""Versions, environment variables and where the local broker's jars, data and packaged
files live."""

from __future__ import annotations

import os
from pathlib import Path

from tools.kafka.errors import KafkaSetupError

KAFKA_VERSION: str = "4.1.1"
"""Kafka release whose jars (``org.apache.kafka:kafka_2.13``) are fetched and run."""

MIN_JAVA_MAJOR = 17
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "ADSTREAM_KAFKA_BOOTSTRAP"
CACHE_ENV = "ADSTREAM_CACHE"
JVM_OPTS_ENV = "ADSTREAM_KAFKA_JVM_OPTS"
MESSAGE_MAX_BYTES = 8 * 1024 * 1024

_RESOURCES = Path(__file__).resolve().parent
MARKER = ".complete"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
PROPERTIES_FILE = "server.properties"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
TAIL_LINES = 40


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


def resource(name: str) -> Path:
    path = _RESOURCES / name
    if not path.is_file():
        raise KafkaSetupError(f"packaged file {path} is missing; reinstall adstream")
    return path
