"""The three roles running in this test process (on a thread of their own) against a broker."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import amended
from workers.roles import THREE_HOPS, ensure_topics, run_roles, transport_for
from workers.settings import Settings

_ids = itertools.count()


@dataclass
class Running:
    settings: Settings
    bootstrap: str


class RolesThread:
    """``run_roles`` on its own event loop thread until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="roles", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # handed to the test through .error
            self.error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        transport = transport_for(self.settings)
        await ensure_topics(self.settings, transport)
        ready = asyncio.Event()
        waiter = asyncio.ensure_future(ready.wait())
        waiter.add_done_callback(lambda _: self._ready.set())
        await run_roles(THREE_HOPS, self.settings, self._stop, transport, ready=ready)

    def start(self, timeout: float = 90) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise AssertionError(f"the roles did not start: {self.error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def kafka_settings(bootstrap: str, model_repo: Path) -> Settings:
    """Settings with topics and groups of their own on ``bootstrap``."""
    prefix = f"ip{os.getpid()}x{next(_ids)}x{int(time.time())}"
    topics = {name: f"{prefix}.{name}"
              for name in ("requests", "features", "scores", "results", "dlq", "changelog")}
    return amended(Settings(), kafka={"bootstrap": bootstrap, "group_prefix": prefix},
                   topics={**topics, "partitions": 4}, scorer={"model_repo": str(model_repo)},
                   actor={"commit_interval_ms": 100, "drain_timeout_s": 5.0},
                   log={"level": "warning"})


@pytest.fixture(scope="session")
def running_pipeline(kafka_bootstrap: str, model_repo: Path) -> Iterator[Running]:
    """Features, scorer and aggregator in this process on the session's Kafka broker."""
    settings = kafka_settings(kafka_bootstrap, model_repo)
    roles = RolesThread(settings)
    roles.start()
    try:
        yield Running(settings, kafka_bootstrap)
    finally:
        roles.stop()
