"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from inprocess import running_pipeline  # noqa: F401 - the roles in-process, one per session

from pipeline.kafka_local import BOOTSTRAP_ENV, start_broker, stop_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka cluster for the whole test session.

    Uses ``$ADSTREAM_KAFKA_BOOTSTRAP`` when set; otherwise starts a local KRaft broker on a
    free loopback port in a temporary data directory and stops it at the end of the session.
    """
    existing = os.environ.get(BOOTSTRAP_ENV)
    if existing:
        yield existing
        return
    broker = start_broker(data_dir=tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.bootstrap
    finally:
        stop_broker(broker.data_dir)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference model, built once per test session."""
    from workers.model_build import build_reference_model

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
