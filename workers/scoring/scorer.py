"""The scoring worker: the FeatureChunks of a fetch -> model batches -> ScoreChunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from pipeline.headers import carry, now_ms
from pipeline.actor import Result, Send
from pipeline.admin import AdminHandler
from pipeline.batcher import DynamicBatcher, Timing
from pipeline.timeslice import TimeSlice
from pipeline.tracing import BatchClock, current_batch, parent_of
from pipeline.transport.base import Outgoing, Record
from schemas.errors import SchemaError
from schemas.messages import (
    FeatureChunk,
    ScoreChunk,
    decode,
    encode,
    first_nonfinite_row,
    schema_name,
)
from workers.replies import DeadLettering
from workers.scoring.routing import ShadowSummary, Split
from workers.scoring.versions import ModelVersions
from workers.settings import Settings
from workers.spans import model_steps, open_stage, record_attributes

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

SCORE_SCHEMA = schema_name(ScoreChunk.TYPE)
log = structlog.get_logger("adstream.scorer")
_NO_IDS = np.zeros(0, np.int64)  # an expired chunk's (read-only, shared) empty columns
_NO_FLOATS = np.zeros(0, np.float32)


@dataclass(slots=True)
class Rows:
    """Model inputs of one chunk (or one fused request) to score."""

    dense: np.ndarray
    sparse: np.ndarray
    deadline_ms: int | None
    priority: int
    user_id: str | None = None


class ScoringWorker(DeadLettering):
    name = "scorer"
    ordered = True

    def __init__(self, settings: Settings, models: ModelVersions, n_dense: int,
                 n_sparse: int) -> None:
        self.settings = settings
        self.models = models
        self.n_dense = n_dense
        self.n_sparse = n_sparse
        self.expired = 0
        sc = settings.scorer
        self.split = Split(sc.ab_version, sc.ab_fraction) if sc.ab_version else None
        self.shadow = ShadowSummary(sc.shadow_version, sc.shadow_every) \
            if sc.shadow_version else None
        self.on_shadow: Callable[[np.ndarray], None] | None = None  # |Δscore| per row
        self._tg: asyncio.TaskGroup | None = None

    @property
    def batcher(self) -> DynamicBatcher:
        """The serving version's batcher."""
        return self.models.serving.batcher

    async def open(self, tg: asyncio.TaskGroup, send: Send) -> None:
        self._tg = tg
        self.models.start(tg)
        for extra in sorted(self.models.extra):  # the A/B and shadow versions
            await self.models.load(extra)
        if self.settings.scorer.poll_s > 0:
            tg.create_task(self.models.poll(self.settings.scorer.poll_s))

    async def close(self) -> None:
        if self.shadow is not None:
            log.info("shadow summary", model=self.models.name,
                     serving=self.models.serving.version, **self.shadow.report())
        self.models.close()

    def admin_routes(self) -> Mapping[str, AdminHandler]:
        """``model/versions``, ``model/load`` and ``model/unload`` (body ``{"version": N}``)."""
        return {"model/versions": self._versions, "model/load": self._load,
                "model/unload": self._unload}

    async def _versions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        m = self.models
        out: dict[str, Any] = {"model": m.name, "serving": m.serving.version,
                               "loaded": sorted(m.loaded)}
        if self.split is not None:
            out["ab"] = {"version": self.split.version, "fraction": self.split.fraction}
        if self.shadow is not None:
            out["shadow"] = self.shadow.report()
        return out

    async def _load(self, body: Mapping[str, Any]) -> dict[str, Any]:
        await self.models.load(_version(body, required=False))
        return await self._versions(body)

    async def _unload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        version = _version(body, required=True)
        assert version is not None
        await self.models.unload(version)
        return await self._versions(body)

    async def handle(self, records: Sequence[Record]) -> list[Result]:
        results: list[Result] = [[] for _ in records]
        live: list[tuple[int, FeatureChunk]] = []
        wall_ms = now_ms()
        limit = self.settings.actor.max_message_bytes
        slice_ = TimeSlice()
        for i, rec in enumerate(records):
            await slice_.check()
            try:
                chunk = decode(rec.value, FeatureChunk, max_bytes=limit)
                self._check_shapes(chunk)
            except Exception as e:  # that record's reason, for its dead letter
                results[i] = e
                continue
            if chunk.deadline_ms is not None and chunk.deadline_ms <= wall_ms:
                self.expired += 1
                results[i] = [self._output(rec, chunk, None)]
            else:
                live.append((i, chunk))
        live = self._finite(live, results)
        if live:
            parts = [Rows(c.dense, c.sparse, c.deadline_ms, c.priority, c.user_id)
                     for _, c in live]
            clock = current_batch() if self.tracer is not None else None
            parents = [parent_of(records[i].headers, 0.0) for i, _ in live] \
                if clock is not None else []
            if all(p is None for p in parents):
                (scores, versions), timings = await self.score(parts), None
            else:
                scores, versions, timings = await self.score_timed(parts)
            for (i, chunk), sc, v in zip(live, scores, versions, strict=True):
                await slice_.check()
                results[i] = [self._output(records[i], chunk, sc, v)]
            if self.tracer is not None and clock is not None and timings is not None:
                clock.end_when_sent(self._trace(self.tracer, clock, records, live, results,
                                                parents, timings))
        return results

    def _trace(self, tracer: Tracer, clock: BatchClock, records: Sequence[Record],
               live: list[tuple[int, FeatureChunk]], results: list[Result],
               parents: list[Context | None], timings: list[list[Timing]]) -> list[Span]:
        """The stage span of each traced chunk, with its queue, batch and model waits; its
        ScoreChunk's headers now name it."""
        spans = []
        for (i, chunk), parent, timing in zip(live, parents, timings, strict=True):
            if parent is None:
                continue
            out = results[i]
            assert isinstance(out, list)
            rec = records[i]
            attributes = {**record_attributes(rec, chunk.request_id), "adstream.chunk":
                          chunk.chunk, "adstream.rows": int(chunk.dense.shape[0])}
            span = open_stage(tracer, self.name, out[0].headers, parent, clock.received_ns,
                              fallback_ms=rec.timestamp_ms, attributes=attributes)
            if span is not None:
                model_steps(tracer, span, timing)
                spans.append(span)
        return spans

    async def score(self, parts: Sequence[Rows]) -> tuple[list[np.ndarray], list[int]]:
        """Scores of every part, and the model version that scored it, from as few batcher
        submissions as the row limit allows: parts are joined (highest priority first) into
        submissions of at most ``max_rows`` rows each, and the scores split back. A part
        split over submissions that met different versions (a swap) reports the highest."""
        scores, versions, _ = await self._score(parts, timed=False)
        return scores, versions

    async def score_timed(self, parts: Sequence[Rows]
                          ) -> tuple[list[np.ndarray], list[int], list[list[Timing]]]:
        """:meth:`score`, with the timing of each submission each part was scored in."""
        scores, versions, timings = await self._score(parts, timed=True)
        assert timings is not None
        return scores, versions, timings

    async def _score(self, parts: Sequence[Rows], *, timed: bool
                     ) -> tuple[list[np.ndarray], list[int], list[list[Timing]] | None]:
        arms: dict[int | None, list[int]] = {}
        for i, p in enumerate(parts):
            arm = self.split.version_for(p.user_id) if self.split else None
            arms.setdefault(arm, []).append(i)
        groups: list[list[tuple[int, int, int]]] = []
        targets: list[int | None] = []
        for arm, members in arms.items():
            for g in _group([parts[i] for i in members], self.batcher.max_rows):
                groups.append([(members[j], lo, hi) for j, lo, hi in g])
                targets.append(arm)
        wall_ms, now = now_ms(), time.monotonic()
        outs = await asyncio.gather(*(self._submit(parts, g, wall_ms, now, arm, timed)
                                      for g, arm in zip(groups, targets, strict=True)))
        pieces: list[list[np.ndarray]] = [[] for _ in parts]
        versions = [0] * len(parts)
        timings: list[list[Timing]] | None = [[] for _ in parts] if timed else None
        for g, (out, version, timing) in zip(groups, outs, strict=True):
            at = 0
            for i, lo, hi in g:
                pieces[i].append(out[at:at + hi - lo])
                versions[i] = max(versions[i], version)
                at += hi - lo
            if timings is not None and timing is not None:
                for i, _, _ in g:
                    timings[i].append(timing)
        return [p[0] if len(p) == 1 else
                np.concatenate(p) if p else np.zeros(0, np.float32) for p in pieces], versions, \
            timings

    async def _submit(self, parts: Sequence[Rows], group: list[tuple[int, int, int]],
                      wall_ms: float, now: float, arm: int | None = None, timed: bool = False
                      ) -> tuple[np.ndarray, int, Timing | None]:
        dense = [parts[i].dense[lo:hi] for i, lo, hi in group]
        sparse = [parts[i].sparse[lo:hi] for i, lo, hi in group]
        deadlines = [d for i, _, _ in group if (d := parts[i].deadline_ms) is not None]
        deadline = now + (min(deadlines) - wall_ms) / 1000 if deadlines else None
        priority, count = parts[group[0][0]].priority, len({i for i, _, _ in group})
        out, version, timing = await self.models.submit(
            dense, sparse, version=arm, timed=timed, deadline=deadline, priority=priority,
            count=count)
        if self.shadow is not None and self._tg is not None and self.shadow.take():
            self._tg.create_task(self._score_shadow(dense, sparse, out))
        return out, version, timing

    async def _score_shadow(self, dense: list[np.ndarray], sparse: list[np.ndarray],
                            primary: np.ndarray) -> None:
        """The shadow version's scores of a submission the primary answered: only their
        difference is kept. Skipped when the shadow is not loaded or its queue is full."""
        assert self.shadow is not None
        shadow = self.models.loaded.get(self.shadow.version)
        b = shadow.batcher if shadow else None
        if b is None or b.closed or b.queued_rows + len(primary) > b.max_queue_rows:
            self.shadow.skipped += 1
            return
        out, _, _ = await self.models.submit(dense, sparse, version=self.shadow.version)
        delta = np.abs(out.astype(np.float64) - primary)
        self.shadow.add(delta)
        if self.on_shadow is not None:
            self.on_shadow(delta)

    def _output(self, record: Record, chunk: FeatureChunk, scores: np.ndarray | None,
                version: int | None = None) -> Outgoing:
        if scores is None:
            status, ad_id, bid, score = "expired", _NO_IDS, _NO_FLOATS, _NO_FLOATS
        else:
            status, ad_id, bid = "ok", chunk.ad_id, chunk.bid
            score = scores.astype(np.float32, copy=False)
        out = ScoreChunk(
            request_id=chunk.request_id, chunk=chunk.chunk, n_chunks=chunk.n_chunks,
            n_candidates=chunk.n_candidates, top_k=chunk.top_k, reply_to=chunk.reply_to,
            deadline_ms=chunk.deadline_ms, status=status, ad_id=ad_id, bid=bid, score=score,
            model=self.models.name if version else None, model_version=version or None)
        key = record.key if self.settings.features.key == "user" else chunk.request_id.encode()
        return Outgoing(self.settings.topics.scores, encode(out), key=key,
                        headers=carry(record.headers, SCORE_SCHEMA))

    @staticmethod
    def _finite(live: list[tuple[int, FeatureChunk]], results: list[Result]
                ) -> list[tuple[int, FeatureChunk]]:
        """The chunks whose dense values are all finite: one pass over the whole fetch; only
        when it finds one does each chunk get its own look (to fail just that chunk)."""
        if not live or first_nonfinite_row(
                np.concatenate([c.dense for _, c in live]) if len(live) > 1
                else live[0][1].dense) is None:
            return live
        ok = []
        for i, chunk in live:
            row = first_nonfinite_row(chunk.dense)
            if row is None:
                ok.append((i, chunk))
            else:
                results[i] = SchemaError(f"dense[{row}]", "NaN or infinity is not allowed",
                                         request_id=chunk.request_id)
        return ok

    def _check_shapes(self, chunk: FeatureChunk) -> None:
        if chunk.dense.shape[1] != self.n_dense:
            raise SchemaError("dense", f"{chunk.dense.shape[1]} columns, the model takes "
                              f"{self.n_dense}", request_id=chunk.request_id)
        if chunk.sparse.shape[1] != self.n_sparse:
            raise SchemaError("sparse", f"{chunk.sparse.shape[1]} columns, the model takes "
                              f"{self.n_sparse}", request_id=chunk.request_id)
        if chunk.ad_id.shape[0] > self.batcher.max_rows:
            raise SchemaError("ad_id", f"{chunk.ad_id.shape[0]} rows exceed the batch limit "
                              f"{self.batcher.max_rows}", request_id=chunk.request_id)


def _version(body: Mapping[str, Any], *, required: bool) -> int | None:
    v = body.get("version")
    if v is None and not required:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"'version' must be a version number >= 1, got {v!r}")
    return v


def _group(parts: Sequence[Rows], max_rows: int) -> list[list[tuple[int, int, int]]]:
    """Submissions as lists of (part, first row, end row): highest priority first, at most
    ``max_rows`` rows each, one priority per submission; a part larger than ``max_rows``
    (a fused request) spans several."""
    order = sorted(range(len(parts)), key=lambda i: -parts[i].priority)
    groups: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    rows = 0
    priority = None
    for i in order:
        n = parts[i].dense.shape[0]
        if current and parts[i].priority != priority:
            groups.append(current)
            current, rows = [], 0
        priority = parts[i].priority
        lo = 0
        while lo < n:
            if rows == max_rows:
                groups.append(current)
                current, rows = [], 0
            hi = min(n, lo + max_rows - rows)
            current.append((i, lo, hi))
            rows += hi - lo
            lo = hi
    if current:
        groups.append(current)
    return groups
