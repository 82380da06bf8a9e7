"""Whether a Kafka cluster answers at a bootstrap address, and what it says about itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.kafka_clients import KafkaOptions


async def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
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
        host, port = split_bootstrap(bootstrap)
    except ValueError:
        return False
    start = time.monotonic()
    if not await _tcp_open(host, port, timeout_s):
        return False
    left = max(0.5, timeout_s - (time.monotonic() - start))
    try:
        info = await describe_cluster(bootstrap, timeout_s=left, opts=opts)
    except Exception:  # any failure means "does not answer"
        return False
    brokers = info.get("brokers")
    return isinstance(brokers, list) and len(brokers) > 0

