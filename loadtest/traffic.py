"""Traffic to replay: requests read from a file and encoded once, before the run.

Two files are accepted: the JSON lines of ``adstream loadtest generate`` (or any file in the
``adstream produce`` format; ``at_ms`` gives each request's arrival offset) and the
recordings of ``adstream loadtest record``. Each request is encoded once with a fixed-width
placeholder where its ``request_id`` goes, so sending it costs one byte concatenation: every
replayed request gets a request id unique to the run (the aggregator drops repeated ids as
duplicates, so a file could not be replayed twice otherwise). Deadlines go in the
``deadline_ms`` header at send time, relative to the request's intended send time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.recording_file import RecordingError, read_recording
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, decode, encode

ID_LEN = 20  # run tag (8 hex digits) + "-" + 11-digit request index
PLACEHOLDER = "<request-id-slot-00>"
_SLOT = bytes([0xA0 | ID_LEN]) + PLACEHOLDER.encode()  # the msgpack fixstr as it is encoded
assert len(PLACEHOLDER) == ID_LEN


class TrafficError(ValueError):
    """A traffic file that cannot be replayed; the message names the file and the place."""


def request_id(tag: str, index: int) -> str:
    """The run-unique, fixed-width request id of the ``index``-th replayed request."""
    return f"{tag}-{index:011d}"


@dataclass
class Traffic:
    """Requests ready to send: ``heads[j] + request_id + tails[j]`` is request ``j``'s body."""

    source: str
    at_ms: np.ndarray  # arrival offsets (ms, float64, ascending; NaN where the file has none)
    keys: list[bytes]
    heads: list[bytes]
    tails: list[bytes]
    timeout_ms: np.ndarray  # per-request deadline relative to its send time (0 = none)
    n_candidates: np.ndarray
    kind: str = "jsonl"
    skipped: list[str] = field(default_factory=list)  # unreadable recorded records

    def __len__(self) -> int:
        return len(self.heads)

    def body(self, entry: int, rid: bytes) -> bytes:
        return self.heads[entry] + rid + self.tails[entry]

    @property
    def has_arrival_times(self) -> bool:
        return len(self) > 0 and not bool(np.isnan(self.at_ms).any())

    @classmethod
    def load(cls, path: Path) -> Traffic:
        """Read a JSON-lines request file or a recording; raise TrafficError naming the line
        (or record) and the field when something is wrong."""
        try:
            with open(path, "rb") as f:
                first = f.read(1)
        except OSError as e:
            raise TrafficError(f"{path}: cannot read ({e.strerror})") from None
        if not first:
            raise TrafficError(f"{path}: the file is empty")
        builder = _Builder(str(path))
        if first in b"{ \t\r\n":
            builder.kind = "jsonl"
            for where, d in _json_lines(path):
                builder.add_json(where, d)
        else:
            builder.kind = "recording"
            try:
                for where, rec in read_recording(path):
                    builder.add_recorded(where, rec)
            except RecordingError as e:
                raise TrafficError(str(e)) from None
        return builder.finish()


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{i}", json.loads(line)
            except json.JSONDecodeError as e:
                raise TrafficError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno}); "
                                   "expected one request per line, or a recording made by "
                                   "`adstream loadtest record`") from None


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.kind = "jsonl"
        self.at_ms: list[float] = []
        self.keys: list[bytes] = []
        self.heads: list[bytes] = []
        self.tails: list[bytes] = []
        self.timeout_ms: list[int] = []
        self.n_candidates: list[int] = []
        self.skipped: list[str] = []

    def add_json(self, where: str, d: Any) -> None:
        if not isinstance(d, dict):
            raise TrafficError(f"{where}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        at = d.pop("at_ms", None)
        if at is not None and (not isinstance(at, (int, float)) or isinstance(at, bool)
                               or not np.isfinite(at) or at < 0):
            raise TrafficError(f"{where}: at_ms: expected a number ≥ 0, got {at!r}")
        timeout = d.pop("timeout_ms", None)
        d.pop("deadline_ms", None)  # an absolute deadline means nothing in another run
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                    or timeout <= 0):
            raise TrafficError(f"{where}: timeout_ms: expected a positive integer, "
                               f"got {timeout!r}")
        d.setdefault("request_id", PLACEHOLDER)
        try:
            req = request_from_json(d, 0)
        except SchemaError as e:
            raise TrafficError(f"{where}: {e}") from None
        self._add(where, req, float("nan") if at is None else float(at), timeout or 0)

    def add_recorded(self, where: str, rec: dict[str, Any]) -> None:
        try:
            req = decode(rec["value"], ScoreRequest)
        except SchemaError as e:
            self.skipped.append(f"{where}: {e}")  # it went to the DLQ when it was recorded
            return
        sent = rec["timestamp_ms"]
        timeout = req.deadline_ms - sent if req.deadline_ms and sent else 0
        self._add(where, req, rec["at_ms"], max(0, int(timeout)))

    def _add(self, where: str, req: ScoreRequest, at_ms: float, timeout_ms: int) -> None:
        req.request_id = PLACEHOLDER
        req.deadline_ms = None
        body = encode(req)
        at = body.find(_SLOT)
        if at < 0 or body.find(_SLOT, at + 1) >= 0:
            raise TrafficError(f"{where}: cannot place the request id in the encoded request")
        at += 1  # after the fixstr header byte
        self.heads.append(body[:at])
        self.tails.append(body[at + ID_LEN:])
        self.keys.append(req.user_id.encode())
        self.at_ms.append(at_ms)
        self.timeout_ms.append(timeout_ms)
        self.n_candidates.append(req.n_candidates)

    def finish(self) -> Traffic:
        if not self.heads:
            extra = f" ({len(self.skipped)} unreadable records)" if self.skipped else ""
            raise TrafficError(f"{self.source}: no requests to replay{extra}")
        at = np.asarray(self.at_ms, np.float64)
        order = np.argsort(at, kind="stable") if not np.isnan(at).any() else np.arange(len(at))
        if not np.isnan(at).any():
            at = at[order] - at[order[0]]
        pick = order.tolist()
        return Traffic(
            source=self.source, at_ms=at, keys=[self.keys[j] for j in pick],
            heads=[self.heads[j] for j in pick], tails=[self.tails[j] for j in pick],
            timeout_ms=np.asarray(self.timeout_ms, np.int64)[order],
            n_candidates=np.asarray(self.n_candidates, np.int64)[order],
            kind=self.kind, skipped=self.skipped)

