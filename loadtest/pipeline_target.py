"""The pipeline a load test talks to: a transport (Kafka or ``memory://``) and, with
``with_workers``, the three roles running in this process on that same transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.transport.base import Transport
from workers.settings import Settings

READY_TIMEOUT_S = 120.0


class TargetError(RuntimeError):
    """The pipeline cannot be reached or set up; the message says what to do."""


@dataclass
class Target:
    settings: Settings
    transport: Transport
    with_workers: bool

    @property
    def requests_topic(self) -> str:
        return self.settings.topics.requests

    @property
    def results_topic(self) -> str:
        return self.settings.topics.results


@contextlib.asynccontextmanager
async def open_target(settings: Settings, *, with_workers: bool,
                      stop: asyncio.Event | None = None) -> AsyncIterator[Target]:
    """Connect to the pipeline (starting its roles here when asked) for the block's time."""
    from workers.roles import THREE_HOPS, ensure_topics, run_roles, transport_for

    url = settings.kafka.bootstrap
    if url.startswith("memory://") and not with_workers:
        raise TargetError(f"{url} is an in-process broker: nothing else can serve it, so add "
                          "--with-workers to run the three roles in this process")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # reconnect chatter at start-up
    if not url.startswith("memory://"):
        from pipeline.kafka_clients import kafka_options
        from pipeline.kafka_reach import KafkaUnavailable, reach

        try:
            await reach(url, kafka_options(settings.kafka, wait_for_broker=False))
        except KafkaUnavailable as e:
            raise TargetError(f"{e}; start one (`adstream kafka start`) or give "
                              "--bootstrap HOST:PORT") from None
    transport = transport_for(settings)
    roles: asyncio.Task[object] | None = None
    roles_stop = asyncio.Event()
    try:
        if with_workers:
            ensure_model(settings)
            await ensure_topics(settings, transport)
            ready = asyncio.Event()
            roles = asyncio.create_task(
                run_roles(THREE_HOPS, settings, roles_stop, transport, ready))
            await _wait_ready(ready, roles, stop)
        else:
            for topic in (settings.topics.requests, settings.topics.results):
                if await transport.partitions(topic) == 0:
                    raise TargetError(f"topic {topic!r} does not exist at {url}; run "
                                      "`adstream topics create` and start the workers, or "
                                      "add --with-workers")
        yield Target(settings, transport, with_workers)
    finally:
        roles_stop.set()
        if roles is not None:
            await roles
        await transport.close()


async def _wait_ready(ready: asyncio.Event, roles: asyncio.Task[object],
                      stop: asyncio.Event | None) -> None:
    waits = [asyncio.ensure_future(ready.wait()), roles]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    done, _ = await asyncio.wait(waits, timeout=READY_TIMEOUT_S,
                                 return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        if w is not roles and not w.done():
            w.cancel()
    if roles in done:
        roles.result()  # raises what stopped the roles
        raise TargetError("the in-process roles stopped before they were ready")
    if not ready.is_set():
        raise TargetError("interrupted" if stop is not None and stop.is_set() else
                          f"the in-process roles were not assigned their partitions within "
                          f"{READY_TIMEOUT_S:.0f} s")


def ensure_model(settings: Settings) -> None:
    repo = Path(settings.scorer.model_repo)
    if not (repo / settings.scorer.model / "config.toml").exists():
        from workers.scoring.reference_model import build_reference_model

        path = build_reference_model(repo, name=settings.scorer.model)
        print(f"built the reference model: {path}", file=sys.stderr)
