"""Transports: ``memory://name`` for the in-process broker, anything else is a Kafka bootstrap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.transport.base import (
    TP,
    Consumer,
    Outgoing,
    Producer,
    RebalanceListener,
    Record,
    Transport,
)

if TYPE_CHECKING:
    from pipeline.kafka_clients import KafkaOptions


def open_transport(url: str, options: KafkaOptions | None = None) -> Transport:
    """``memory://name`` -> in-process broker; ``host:port[,host:port]`` -> Kafka with
    ``options`` (``pipeline.kafka_clients.kafka_options`` of the settings)."""
    if url.startswith("memory://"):
        from pipeline.transport.memory import MemoryTransport

        return MemoryTransport(url)
    from pipeline.transport.kafka import KafkaTransport

    return KafkaTransport(url.removeprefix("kafka://"), options)


__all__ = [
    "TP",
    "Consumer",
    "Outgoing",
    "Producer",
    "RebalanceListener",
    "Record",
    "Transport",
    "open_transport",
]
