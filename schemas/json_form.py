"""The JSON-lines request format of ``adstream produce`` and its conversion to ScoreRequest.

Candidates may be columnar (``{"ad_id": [...], "bid": [...]}``) or a list of objects
(``[{"ad_id": 1, "bid": 0.5}, ...]``); a column of strings is a string (categorical) column. ``timeout_ms`` sets the deadline relative to the
moment the request is produced; ``deadline_ms`` sets it absolutely (epoch ms).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.candidates import Column, json_column
from schemas.errors import SchemaError
from schemas.messages import ScoreRequest

INT_COLUMNS = frozenset({"ad_id", "advertiser_id", "campaign_id", "creative_id", "category",
                         "creative_format", "landing_domain"})


def _column(name: str, values: list[Any]) -> Column:
    if values and all(type(v) is str for v in values):
        return json_column(values, f"candidates.{name}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        bad = next(i for i, v in enumerate(values)
                   if not isinstance(v, (int, float)) or isinstance(v, bool))
        raise SchemaError(f"candidates.{name}[{bad}]",
                          f"expected a number, got {values[bad]!r}")
    if name in INT_COLUMNS or (all(isinstance(v, int) for v in values) and name != "bid"):
        if not all(isinstance(v, int) or float(v).is_integer() for v in values):
            raise SchemaError(f"candidates.{name}", "expected integers")
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=np.float32)


def _columns(cands: Any) -> dict[str, Column]:
    if isinstance(cands, list):
        if not cands:
            raise SchemaError("candidates", "a request needs at least one candidate")
        names: list[str] = []
        for i, c in enumerate(cands):
            if not isinstance(c, dict):
                raise SchemaError(f"candidates[{i}]", "expected an object")
            names.extend(k for k in c if k not in names)
        missing = [(i, k) for k in names for i, c in enumerate(cands) if k not in c]
        if missing:
            i, k = missing[0]
            raise SchemaError(f"candidates[{i}].{k}", "missing (every candidate needs the "
                                                        "same fields)")
        return {k: _column(k, [c[k] for c in cands]) for k in names}
    if isinstance(cands, dict):
        out = {}
        for k, v in cands.items():
            if not isinstance(v, list):
                raise SchemaError(f"candidates.{k}", "expected a list of values")
            out[k] = _column(k, v)
        return out
    raise SchemaError("candidates", "expected a list of objects or an object of columns")


def request_from_json(d: Any, now_ms: int) -> ScoreRequest:
    """Build (and fully validate) a ScoreRequest from one parsed JSON line."""
    if not isinstance(d, dict):
        raise SchemaError("", f"expected a JSON object, got {type(d).__name__}")
    if "candidates" not in d:
        raise SchemaError("candidates", "missing required field")
    deadline = d.get("deadline_ms")
    if deadline is None and d.get("timeout_ms") is not None:
        t = d["timeout_ms"]
        if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
            raise SchemaError("timeout_ms", f"expected a positive integer, got {t!r}")
        deadline = now_ms + t
    wire = {k: v for k, v in d.items() if k not in ("candidates", "timeout_ms")}
    wire["deadline_ms"] = deadline
    wire["candidates"] = _columns(d["candidates"])
    return ScoreRequest.from_wire(wire, json_columns=True)


def request_to_json(req: ScoreRequest) -> dict[str, Any]:
    return {
        "request_id": req.request_id,
        "user_id": req.user_id,
        "user": req.user,
        "context": req.context,
        "candidates": {k: v.tolist() for k, v in req.candidates.items()},
        "top_k": req.top_k,
        **({"reply_to": req.reply_to} if req.reply_to else {}),
        **({"deadline_ms": req.deadline_ms} if req.deadline_ms else {}),
    }
