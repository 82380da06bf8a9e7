"""The one place that builds aiokafka clients' arguments from adstream's settings.

Every Kafka connection the project makes (workers, CLI commands, lag reading, the load
tester, the local broker's checks) takes its keyword arguments from here: bootstrap and
client id, TLS and SASL (``pipeline.kafka_security``), adstream's own choices for the role
of the client, then the pass-through table of raw options for that kind of client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import KafkaSection
from pipeline.kafka_security import KafkaSecurity, security_from
from pipeline.membership import instance_suffix


@dataclass(frozen=True)
class KafkaOptions:
    """Client settings the runtime exposes in its configuration."""

    client_id: str = "adstream"
    linger_ms: int = 0
    max_batch_bytes: int = 1024 * 1024
    max_request_bytes: int = 8 * 1024 * 1024
    compression: str | None = None
    request_timeout_ms: int = 30_000
    delivery_timeout_ms: int = 120_000  # producers: aiokafka's request_timeout_ms bounds delivery
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    fetch_max_bytes: int = 2 * 1024 * 1024
    partition_fetch_bytes: int = 1024 * 1024
    isolation_level: str = "read_uncommitted"
    connect_timeout_s: float = 0.0  # how long starting a client waits for a broker
    instance_suffix: str | None = None  # static membership: this suffix, or else ...
    static_membership: bool = False  # ... the supervised child's, read when a consumer starts
    instance_prefix: str = ""  # (a standby learns its index only when it takes over)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    consumer_options: Mapping[str, Any] = field(default_factory=dict)
    producer_options: Mapping[str, Any] = field(default_factory=dict)
    admin_options: Mapping[str, Any] = field(default_factory=dict)


def kafka_options(section: KafkaSection, *, wait_for_broker: bool = True) -> KafkaOptions:
    """``[kafka]`` as client options; ``wait_for_broker=False`` for one-shot commands, which
    report a missing broker at once instead of waiting ``kafka.connect_timeout_s``."""
    return KafkaOptions(
        client_id=section.client_id,
        linger_ms=section.linger_ms,
        max_batch_bytes=section.max_batch_bytes,
        compression=None if section.compression == "none" else section.compression,
        fetch_max_bytes=section.fetch_max_bytes,
        partition_fetch_bytes=section.partition_fetch_bytes,
        session_timeout_ms=section.session_timeout_ms,
        delivery_timeout_ms=section.delivery_timeout_ms,
        max_poll_interval_ms=section.max_poll_interval_ms,
        connect_timeout_s=section.connect_timeout_s if wait_for_broker else 0.0,
        static_membership=section.static_membership,
        instance_prefix=section.instance_prefix,
        security=security_from(section),
        consumer_options=dict(section.consumer_options),
        producer_options=dict(section.producer_options),
        admin_options=dict(section.admin_options),
    )


def member_suffix(opts: KafkaOptions) -> str | None:
    """The group instance id suffix of this process's consumers now (None: dynamic)."""
    return opts.instance_suffix or instance_suffix(opts.static_membership, opts.instance_prefix)


def _common(bootstrap: str, opts: KafkaOptions, client_id: str | None) -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap, "client_id": client_id or opts.client_id,
            "request_timeout_ms": opts.request_timeout_ms, **opts.security.client_kwargs()}


def consumer_kwargs(bootstrap: str, opts: KafkaOptions, client_id: str | None = None,
                    **own: Any) -> dict[str, Any]:
    """Arguments of an ``AIOKafkaConsumer``: ``own`` are the caller's (group, offsets)."""
    return {**_common(bootstrap, opts, client_id), **own, **opts.consumer_options}


def producer_kwargs(bootstrap: str, opts: KafkaOptions, client_id: str | None = None,
                    **own: Any) -> dict[str, Any]:
    # aiokafka's producer expires a batch that waited request_timeout_ms for its
    # acknowledgement (retries included): Kafka's delivery.timeout.ms
    return {**_common(bootstrap, opts, client_id),
            "request_timeout_ms": opts.delivery_timeout_ms, **own, **opts.producer_options}


def admin_kwargs(bootstrap: str, opts: KafkaOptions, client_id: str | None = None,
                 **own: Any) -> dict[str, Any]:
    return {**_common(bootstrap, opts, client_id), **own, **opts.admin_options}
