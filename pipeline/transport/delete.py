"""Deleting topics, for clients that own short-lived ones (a reply topic per client).

Kept beside the transports rather than in them while they are being reworked; it belongs on
:class:`~pipeline.transport.base.Transport` as ``delete_topics`` once they settle.
"""

from __future__ import annotations

from pipeline.transport.base import Transport


async def delete_topics(transport: Transport, names: list[str]) -> None:
    """Delete ``names`` (missing ones are ignored)."""
    from pipeline.transport.memory import MemoryTransport

    if isinstance(transport, MemoryTransport):
        for name in names:
            transport.broker.topics.pop(name, None)
        return
    from aiokafka.errors import UnknownTopicOrPartitionError

    from pipeline.transport.kafka import KafkaTransport

    if not isinstance(transport, KafkaTransport):
        raise TypeError(f"cannot delete topics through {type(transport).__name__}")
    admin = await transport._admin()  # the one place that builds an admin client
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            try:
                await admin.delete_topics(doomed)
            except UnknownTopicOrPartitionError:
                pass
    finally:
        await admin.close()
