"""What ``adstream model quantize`` accepts: its modes and accuracy bounds (kept apart from
:mod:`workers.scoring.quantize` so that building the command line imports no onnxruntime)."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("dynamic", "static")


@dataclass(frozen=True)
class Bounds:
    """The most an INT8 version may differ from FP32 and still be accepted.

    The defaults guard ranking (top-K overlap, AUC) and catch a broken model (|Δscore|);
    the reference model's INT8 versions differ by a p99 |Δscore| of about 0.05, so a
    stricter |Δscore| bound refuses them."""

    max_abs_delta: float = 0.25
    p99_abs_delta: float = 0.1
    min_top_k_overlap: float = 0.9
    max_auc_drop: float = 0.005
