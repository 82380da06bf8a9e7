"""The one error of the local broker tool: a step of fetching, formatting, starting or
stopping it failed (the message says which and what to do)."""

from __future__ import annotations


class KafkaSetupError(RuntimeError):
    """Fetching, formatting, starting or stopping the local Kafka broker failed."""
