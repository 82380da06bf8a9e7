"""adstream's Python client: ``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio).

Each client instance gets its own reply topic, so it reads only its own answers.
"""

from adstream_client.aio import AsyncClient
from adstream_client.errors import (
    BrokerUnavailable,
    ClientClosed,
    ClientError,
    Rejected,
    ScoreTimeout,
)
from adstream_client.sync import Client
from schemas.messages import ScoreRequest, ScoreResult
from schemas.strings import StringColumn, category_ids

__all__ = [
    "AsyncClient",
    "BrokerUnavailable",
    "Client",
    "ClientClosed",
    "ClientError",
    "Rejected",
    "ScoreRequest",
    "ScoreResult",
    "ScoreTimeout",
    "StringColumn",
    "category_ids",
]
