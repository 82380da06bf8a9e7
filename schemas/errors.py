"""The one error type a bad message raises: it names the field and what was wrong."""

from __future__ import annotations


class SchemaError(ValueError):
    """A message that does not match its schema.

    ``field`` is a dotted path (``candidates.bid``); ``request_id`` and ``reply_to`` are
    filled in when they could be read, so the sender can still be told ``rejected``.
    """

    def __init__(
        self,
        field: str,
        problem: str,
        *,
        request_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        self.field = field
        self.problem = problem
        self.request_id = request_id
        self.reply_to = reply_to
        super().__init__(f"{field}: {problem}" if field else problem)

    @property
    def reason(self) -> str:
        return str(self)
