"""The loaded versions of one model in a scorer, and which one serves: hot swap.

A version is loaded (validated against its graph, its backends built) and warmed at the
model's preferred batch sizes in a worker thread, its batcher started, and only then does
it take new submissions; the version it replaces finishes what it had queued and closes.
Every submission goes whole to one version's batcher, so a swap falls between batches.
Which versions are loaded follows the model's version policy (``latest``, ``latest N``,
``specific``), re-read from the repository on each :meth:`reconcile`; the highest loaded
version serves, so removing a version directory rolls back to the one below it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from pipeline.batcher import BatcherClosed, DynamicBatcher, Timing
from workers.scoring.repository import ModelRepositoryError, ModelSpec, load_model, served_versions

log = structlog.get_logger("adstream.models")

BuildBatcher = Callable[[ModelSpec], tuple[DynamicBatcher, list[Callable[..., np.ndarray]]]]
"""Builds one version's batcher and the score functions of its instances (for warm-up)."""


@dataclass
class Loaded:
    spec: ModelSpec
    batcher: DynamicBatcher
    task: asyncio.Task[None] | None = None
    submissions: int = field(default=0)

    @property
    def version(self) -> int:
        return self.spec.version


def warm(spec: ModelSpec, instances: list[Callable[..., np.ndarray]]) -> None:
    """One all-zero batch per preferred batch size on every instance (first-run costs:
    allocations, kernel selection, CUDA graph capture) before the version takes traffic."""
    c = spec.config
    for rows in c.preferred_batch_rows or (min(256, c.max_batch_rows),):
        dense = np.zeros((rows, len(c.dense_features)), np.float32)
        sparse = np.zeros((rows, len(c.sparse_features)), np.int64)
        for score in instances:
            score(dense, sparse)


class ModelVersions:
    """The versions of one model a scorer holds; :attr:`serving` takes new submissions."""

    def __init__(self, repo: Path, initial: ModelSpec, build: BuildBatcher,
                 pinned: int | None = None, extra: frozenset[int] = frozenset()) -> None:
        self.repo, self.name, self.pinned = Path(repo), initial.name, pinned
        self.extra = extra  # loaded for A/B or shadow traffic, never the serving version
        self._build = build
        batcher, _ = build(initial)
        self.loaded: dict[int, Loaded] = {initial.version: Loaded(initial, batcher)}
        self.serving = self.loaded[initial.version]
        self._tg: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self.swaps = 0

    @property
    def features(self) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
        c = self.serving.spec.config
        return c.sparse_features, c.sparse_buckets, c.dense_features

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        for v in self.loaded.values():
            if v.task is None:
                v.task = tg.create_task(v.batcher.run())

    def close(self) -> None:
        self._stopped.set()
        for v in self.loaded.values():
            v.batcher.close()

    async def submit(self, *arrays: np.ndarray | list[np.ndarray], version: int | None = None,
                     timed: bool = False, **kw: object
                     ) -> tuple[np.ndarray, int, Timing | None]:
        """Scores one submission on ``version`` (default: the serving one); returns the
        scores, the version that produced them and, when ``timed``, where the submission's
        time went (for tracing spans)."""
        while True:
            target = self.loaded.get(version) if version is not None else self.serving
            if target is None:
                target = self.serving  # that version was unloaded meanwhile
            try:
                if timed:
                    out, timing = await target.batcher.submit_timed(
                        *arrays, **kw)  # type: ignore[arg-type]
                    return out, target.version, timing
                out = await target.batcher.submit(*arrays, **kw)  # type: ignore[arg-type]
            except BatcherClosed:
                if target is self.serving:
                    raise  # the scorer itself is closing
                continue  # swapped out before it took the submission: the new one will
            return out, target.version, None

    async def load(self, version: int | None = None) -> Loaded:
        """Loads, validates and warms ``version`` (default: the highest the policy serves)
        and starts its batcher; the serving version is then the highest loaded one."""
        async with self._lock:
            return await self._load(version)

    async def _load(self, version: int | None) -> Loaded:
        if version in self.loaded:
            return self.loaded[version]
        spec = await asyncio.to_thread(load_model, self.repo, self.name, version)
        if (spec.config.sparse_features, spec.config.sparse_buckets,
                spec.config.dense_features) != self.features:
            raise ModelRepositoryError(
                f"{spec.path}: version {spec.version} takes other feature columns than the "
                f"serving version {self.serving.version}; a change of features needs a restart "
                "of the feature actors and scorers")
        batcher, instances = await asyncio.to_thread(self._build, spec)
        await asyncio.to_thread(warm, spec, instances)
        loaded = Loaded(spec, batcher)
        if self._tg is not None:
            loaded.task = self._tg.create_task(batcher.run())
        self.loaded[spec.version] = loaded
        self._choose()
        log.info("model version loaded", model=self.name, version=spec.version,
                 serving=self.serving.version)
        return loaded

    async def unload(self, version: int) -> None:
        """Stops ``version`` (it finishes what it queued); refuses the last loaded one."""
        async with self._lock:
            self._unload(version)

    def _unload(self, version: int) -> None:
        if version not in self.loaded:
            raise ModelRepositoryError(
                f"{self.name}: version {version} is not loaded (loaded: {sorted(self.loaded)})")
        if len(self.loaded) == 1:
            raise ModelRepositoryError(
                f"{self.name}: version {version} is the only one loaded; load another first")
        gone = self.loaded.pop(version)
        self._choose()
        gone.batcher.close()
        log.info("model version unloaded", model=self.name, version=version,
                 serving=self.serving.version)

    def _choose(self) -> None:
        best = self.loaded.get(self.pinned) if self.pinned else None
        candidates = set(self.loaded) - self.extra or set(self.loaded)
        best = best or self.loaded[max(candidates)]
        if best is not self.serving:
            self.swaps += 1
            self.serving = best

    async def reconcile(self) -> bool:
        """Loads what the version policy serves from the repository and unloads the rest
        (loads first, so a version that goes away hands over to a warm one). Returns whether
        anything changed; a version that fails to load is logged and left out."""
        async with self._lock:
            try:
                wanted = set(served_versions(self.repo, self.name))
            except ModelRepositoryError as e:
                log.warning("model repository unreadable; keeping the loaded versions",
                            error=str(e))
                return False
            if self.pinned:
                wanted = {self.pinned} & (wanted | set(self.loaded))
            wanted |= self.extra & set(self.loaded)
            changed = False
            for v in sorted(wanted - set(self.loaded)):
                try:
                    await self._load(v)
                    changed = True
                except (ModelRepositoryError, ValueError, OSError) as e:
                    log.warning("model version not loaded", model=self.name, version=v,
                                error=str(e))
            for v in sorted(set(self.loaded) - wanted):
                if len(self.loaded) > 1:
                    self._unload(v)
                    changed = True
            return changed

    async def poll(self, interval_s: float) -> None:
        """:meth:`reconcile` every ``interval_s`` until :meth:`close`."""
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), interval_s)
            except TimeoutError:
                await self.reconcile()
