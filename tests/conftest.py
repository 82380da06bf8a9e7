"""Shared pytest fixtures."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from inprocess import running_pipeline  # noqa: F401 - the roles in-process, one per session

from pipeline.transport import open_transport
from pipeline.transport.memory import MemoryBroker
from tools.kafka import BOOTSTRAP_ENV, SaslSslListener, start_broker, stop_broker

_memory_names = itertools.count()


@dataclass(frozen=True)
class SecureKafka:
    """The session broker's SASL_SSL listener: its address, the CA that signed its
    certificate, and a SCRAM user (SCRAM-SHA-256 and SCRAM-SHA-512)."""

    bootstrap: str
    ca_file: Path
    username: str
    password: str

    def kafka_table(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """``[kafka]`` settings for this listener, without the password."""
        return {"bootstrap": self.bootstrap, "security_protocol": "SASL_SSL",
                "sasl_mechanism": mechanism, "sasl_username": self.username,
                "ssl_ca_file": str(self.ca_file)}


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[str, SecureKafka | None]]:
    """One real Kafka broker for the whole test session: a PLAINTEXT listener and a
    SASL_SSL one (certificates made now, SCRAM user created when its storage is formatted).

    ``$ADSTREAM_KAFKA_BOOTSTRAP`` names an existing cluster instead (no SASL_SSL tests)."""
    existing = os.environ.get(BOOTSTRAP_ENV)
    if existing:
        yield existing, None
        return
    from certs import make_certs

    certs = make_certs(tmp_path_factory.mktemp("tls"))
    user, password = "adstream-test", secrets.token_urlsafe(12)
    broker = start_broker(data_dir=tmp_path_factory.mktemp("kafka"),
                          sasl_ssl=SaslSslListener(certs.keystore_pem, ((user, password),)))
    assert broker.sasl_ssl_bootstrap is not None
    try:
        yield broker.bootstrap, SecureKafka(broker.sasl_ssl_bootstrap, certs.ca_file, user,
                                            password)
    finally:
        stop_broker(broker.data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_broker: tuple[str, SecureKafka | None]) -> str:
    """Bootstrap servers (PLAINTEXT) of a real Kafka cluster for the whole test session.

    Uses ``$ADSTREAM_KAFKA_BOOTSTRAP`` when set; otherwise a local KRaft broker on a free
    loopback port in a temporary data directory, stopped at the end of the session.
    """
    return _session_broker[0]


@pytest.fixture(scope="session")
def kafka_secure(_session_broker: tuple[str, SecureKafka | None]) -> SecureKafka:
    """The session broker's SASL_SSL listener (skipped against an existing cluster)."""
    if _session_broker[1] is None:
        pytest.skip(f"{BOOTSTRAP_ENV} names an existing cluster; the SASL_SSL tests need the "
                    "local broker")
    return _session_broker[1]


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference model, built once per test session."""
    from workers.scoring.reference_model import build_reference_model

    repo = tmp_path_factory.mktemp("models")
    build_reference_model(repo)
    return repo


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that configured structlog (e.g. by running a CLI command in-process) must not
    leave it writing to a capture stream pytest has closed."""
    import structlog

    yield
    structlog.reset_defaults()


@pytest.fixture
async def transport():
    """A fresh in-process broker with topics ``in``, ``out`` and ``dlq`` (2 partitions each),
    dropped after the test."""
    name = f"memory://t{next(_memory_names)}"
    t = open_transport(name)
    await t.create_topics(["in", "out", "dlq"], 2)
    yield t
    MemoryBroker.drop(name.removeprefix("memory://"))
