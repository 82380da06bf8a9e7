"""The recording file: a MessagePack stream of a header map, then one map per captured record.

```
{"format": "adstream.recording", "version": 1, "topic": ..., "bootstrap": ..., "started_ms": ...}
{"timestamp_ms": ..., "partition": ..., "offset": ..., "key": bin|nil, "value": bin, "headers": {...}}
...
```

``timestamp_ms`` is the record's Kafka timestamp (when it was produced), which is what a
replay at ``--speed 1`` reproduces; records are written as they are read (partitions
interleaved) and put in time order when the recording is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import msgpack

from pipeline.transport.base import Record

RECORDING_FORMAT = "adstream.recording"
RECORDING_VERSION = 1


class RecordingError(ValueError):
    """A file that is not a readable recording; the message says where and why."""


class RecordingWriter:
    """Appends captured records to a recording file."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._f: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._f.write(self._pack({"format": RECORDING_FORMAT, "version": RECORDING_VERSION,
                                  **header}))
        self.count = 0

    def write(self, rec: Record, fallback_ms: int) -> None:
        ts = rec.timestamp_ms if rec.timestamp_ms > 0 else fallback_ms
        self._f.write(self._pack({
            "timestamp_ms": ts, "partition": rec.partition, "offset": rec.offset,
            "key": rec.key, "value": rec.value, "headers": rec.headers}))
        self.count += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_header(path: Path) -> dict[str, Any]:
    for _where, item in _items(path):
        return _check_header(path, item)
    raise RecordingError(f"{path}: empty")


def read_recording(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("FILE record N", {"at_ms", "timestamp_ms", "value", ...})`` per record."""
    items = _items(path)
    first = next(items, None)
    if first is None:
        raise RecordingError(f"{path}: empty")
    _check_header(path, first[1])
    for where, item in items:
        if not isinstance(item, dict) or not isinstance(item.get("value"), bytes) \
                or not isinstance(item.get("timestamp_ms"), int):
            raise RecordingError(f"{where}: not a recorded record (needs value and "
                                 "timestamp_ms); the file is damaged")
        item["at_ms"] = float(item["timestamp_ms"])
        yield where, item


def _check_header(path: Path, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or item.get("format") != RECORDING_FORMAT:
        raise RecordingError(
            f"{path}: neither JSON lines (one request per line, as written by "
            "`adstream loadtest generate`) nor a recording made by `adstream loadtest record`")
    if item.get("version") != RECORDING_VERSION:
        raise RecordingError(f"{path}: recording version {item.get('version')!r}; this "
                             f"adstream reads version {RECORDING_VERSION}")
    return item


def _items(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False,
                                    max_buffer_size=64 * 1024 * 1024)
        n = 0
        try:
            for item in unpacker:
                yield f"{path} record {n}", item
                n += 1
        except (ValueError, msgpack.UnpackException) as e:
            raise RecordingError(f"{path} record {n}: not MessagePack ({e}); expected JSON "
                                 "lines or a recording made by `adstream loadtest record`"
                                 ) from None
