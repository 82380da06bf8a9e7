"""adstream's message types and their versioned MessagePack wire format."""

from schemas.errors import SchemaError
from schemas.messages import (
    DeadLetter,
    FeatureChunk,
    ScoreChunk,
    ScoreRequest,
    ScoreResult,
    decode,
    encode,
    schema_name,
)

__all__ = [
    "DeadLetter",
    "FeatureChunk",
    "SchemaError",
    "ScoreChunk",
    "ScoreRequest",
    "ScoreResult",
    "decode",
    "encode",
    "schema_name",
]
