"""What a ``score`` call can raise besides ValueError for a request it cannot send."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's errors; ``str(e)`` is one line that says what to do."""


class ScoreTimeout(ClientError):
    """No answer within the timeout, or the pipeline answered ``expired`` (the request's
    deadline, derived from the timeout, passed before any candidate was scored)."""

    def __init__(self, request_id: str, message: str) -> None:
        self.request_id = request_id
        super().__init__(message)


class Rejected(ClientError):
    """The pipeline refused the request; ``reason`` names the field (as in the DLQ)."""

    def __init__(self, request_id: str, reason: str) -> None:
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"request {request_id!r} rejected: {reason}")


class BrokerUnavailable(ClientError):
    """Kafka could not be reached, or refused what the client needs (topics, produce)."""


class ClientClosed(ClientError):
    """The client was closed (or not opened) when the call was made or while it waited."""
