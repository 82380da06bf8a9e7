"""How a message body is encoded: MessagePack (the default) or JSON, chosen by a header.

A request whose Kafka header ``content-type`` is ``application/json`` is read as JSON (the
same fields; a column is a JSON array of numbers or strings); absent, ``application/msgpack``
or ``application/x-msgpack`` mean MessagePack, anything else is refused. A request whose
``accept`` header is ``application/json`` is answered in JSON (the result then carries
``content-type: application/json``). Header values are compared without case and parameters
(``application/json; charset=utf-8`` is JSON).
"""

from __future__ import annotations

from pipeline.headers import ACCEPT, CONTENT_TYPE
from schemas.errors import SchemaError

__all__ = ["ACCEPT", "CONTENT_TYPE", "JSON", "MSGPACK", "is_json", "wants_json"]
JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_NAMES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})


def _media_type(value: bytes | str) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return text.split(";", 1)[0].strip().lower()


def is_json(content_type: bytes | str | None) -> bool:
    """True for a JSON body, False for MessagePack; a SchemaError for another type."""
    if content_type is None:
        return False
    media = _media_type(content_type)
    if media == JSON:
        return True
    if media in _MSGPACK_NAMES or not media:
        return False
    raise SchemaError(CONTENT_TYPE, f"{media!r} is not supported; send {MSGPACK} (or no "
                                    f"content-type header) or {JSON}")


def wants_json(accept: bytes | str | None) -> bool:
    """Whether an ``accept`` header asks for a JSON answer."""
    return accept is not None and _media_type(accept) == JSON
