"""The feature pipeline: a configured list of transforms that turns a request into model inputs."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.messages import ScoreRequest
from workers.features.plan import CategoricalSpec, CrossSpec, FeaturePlan, NumericSpec
from workers.features.transforms import FeatureBatch, Transform, categorical, cross, numeric

DEFAULT_SPEC = Path(__file__).with_name("default.toml")


class FeatureConfigError(ValueError):
    """A feature spec that does not fit the model; names the feature and the file."""


@dataclass
class FeaturePipeline:
    """Runs the compiled :class:`FeaturePlan`; ``transforms`` (one closure per feature) are
    the reference it must agree with (:meth:`reference`)."""

    transforms: list[Transform]
    n_sparse: int
    n_dense: int
    plan: FeaturePlan

    @classmethod
    def from_spec(
        cls,
        sparse_names: list[str],
        sparse_buckets: list[int],
        dense_names: list[str],
        spec_path: Path | None = None,
    ) -> FeaturePipeline:
        """Build the pipeline for a model's input columns from a TOML spec (default bundled)."""
        path = spec_path or DEFAULT_SPEC
        try:
            spec = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise FeatureConfigError(f"{path}: cannot read feature spec ({e})") from None
        sparse_spec: dict[str, Any] = spec.get("sparse", {})
        dense_spec: dict[str, Any] = spec.get("dense", {})
        for kind, names, table in (("sparse", sparse_names, sparse_spec),
                                   ("dense", dense_names, dense_spec)):
            missing = [n for n in names if n not in table]
            if missing:
                raise FeatureConfigError(
                    f"{path}: the model needs {kind} features {missing} that [{kind}.NAME] "
                    "tables do not define")
        cat_specs: list[CategoricalSpec] = []
        cross_specs: list[CrossSpec] = []
        for col, (name, buckets) in enumerate(zip(sparse_names, sparse_buckets, strict=True)):
            entry = sparse_spec[name]
            try:
                if "cross" in entry:
                    cross_specs.append(CrossSpec(name, tuple(str(p) for p in entry["cross"]),
                                                 col, int(buckets)))
                else:
                    cat_specs.append(CategoricalSpec(name, str(entry["source"]), col,
                                                     int(buckets)))
            except (KeyError, ValueError, TypeError) as e:
                raise FeatureConfigError(f"{path}: sparse.{name}: {e}") from None
        num_specs: list[NumericSpec] = []
        for col, name in enumerate(dense_names):
            entry = dict(dense_spec[name])
            try:
                source = str(entry.pop("source"))
                clip = entry.pop("clip", None)
                bounds = None if clip is None else (float(clip[0]), float(clip[1]))
                num_specs.append(NumericSpec(name, source, col, clip=bounds, **entry))
            except (KeyError, ValueError, TypeError) as e:
                raise FeatureConfigError(f"{path}: dense.{name}: {e}") from None
        transforms = []
        features: list[CategoricalSpec | CrossSpec | NumericSpec] = [
            *cat_specs, *cross_specs, *num_specs]  # categoricals before crosses
        for feature in features:
            try:
                transforms.append(_reference(feature))
            except (ValueError, TypeError) as e:
                kind = "dense" if isinstance(feature, NumericSpec) else "sparse"
                raise FeatureConfigError(f"{path}: {kind}.{feature.name}: {e}") from None
        try:
            plan = FeaturePlan(cat_specs, cross_specs, num_specs, len(sparse_names),
                               len(dense_names))
        except ValueError as e:
            raise FeatureConfigError(f"{path}: {e}") from None
        return cls(transforms, len(sparse_names), len(dense_names), plan)

    def __call__(self, req: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
        """``(dense float32 [n, n_dense], sparse int64 [n, n_sparse])`` for all candidates."""
        return self.plan(req)

    def batch(self, reqs: Sequence[ScoreRequest],
              joined: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The same for several requests at once, their candidates concatenated in order
        (``joined``: candidate columns already concatenated over ``reqs``, by name)."""
        return self.plan.batch(reqs, joined)

    def reference(self, req: ScoreRequest) -> tuple[np.ndarray, np.ndarray]:
        """The same, one transform at a time (what the plan is checked against)."""
        n = req.n_candidates
        user = dict(req.user)
        user.setdefault("user_id", req.user_id)
        batch = FeatureBatch(
            request_id=req.request_id,
            user=user,
            context=req.context,
            candidates=req.candidates,
            sparse=np.empty((n, self.n_sparse), dtype=np.int64),
            dense=np.empty((n, self.n_dense), dtype=np.float32),
        )
        for t in self.transforms:
            t(batch)
        return batch.dense, batch.sparse


def _reference(spec: CategoricalSpec | CrossSpec | NumericSpec) -> Transform:
    """The one-feature transform of ``spec`` (validates its source and parameters)."""
    if isinstance(spec, CrossSpec):
        return cross(spec.name, list(spec.parts), spec.column, spec.buckets)
    if isinstance(spec, CategoricalSpec):
        return categorical(spec.name, spec.source, spec.column, spec.buckets)
    return numeric(spec.name, spec.source, spec.column, transform=spec.transform,
                   mean=spec.mean, std=spec.std, clip=spec.clip, default=spec.default)
