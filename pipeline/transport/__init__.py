"""Transports: ``memory://name`` for the in-process broker, anything else is a Kafka bootstrap."""

from pipeline.transport.base import (
    TP,
    Consumer,
    Outgoing,
    Producer,
    RebalanceListener,
    Record,
    Transport,
)


def open_transport(url: str, **kafka_options: object) -> Transport:
    """``memory://name`` -> in-process broker; ``host:port[,host:port]`` -> Kafka."""
    if url.startswith("memory://"):
        from pipeline.transport.memory import MemoryTransport

        return MemoryTransport(url)
    from pipeline.transport.kafka import KafkaOptions, KafkaTransport

    return KafkaTransport(url.removeprefix("kafka://"), KafkaOptions(**kafka_options))  # type: ignore[arg-type]


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
