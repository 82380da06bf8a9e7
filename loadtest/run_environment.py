"""The machine, the pipeline's configuration and the software versions a run happened on,
so that two reports can be compared (or found not comparable)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.settings import Settings

PACKAGES = ("adstream", "aiokafka", "numpy", "onnxruntime", "msgpack", "hdrhistogram",
            "uvloop", "cupy-cuda12x")


def machine() -> dict[str, Any]:
    out: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        out["cpus_usable"] = len(os.sched_getaffinity(0))
    mem = _meminfo_gib()
    if mem is not None:
        out["memory_gib"] = mem
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def software() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit()
    if commit:
        out["adstream commit"] = commit
    return out


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + (" (modified)" if dirty else "")


def pipeline_config(settings: Settings, *, with_workers: bool,
                    partitions: int | None = None) -> dict[str, Any]:
    """What shapes the numbers: broker, partitions, processes per role, batching, backend.

    Batching and backend are this process's view of the settings (and the model's
    ``config.toml``); with workers elsewhere, pass them the same ``--config``.
    """
    s = settings
    cfg: dict[str, Any] = {
        "broker": s.kafka.bootstrap,
        "requests topic": s.topics.requests,
        "results topic": s.topics.results,
        "partitions": partitions if partitions is not None else s.topics.partitions,
        "processes per role": ("1 each, in this process (--with-workers)" if with_workers
                               else "external workers (describe them with --label)"),
        "actor.max_in_flight": s.actor.max_in_flight,
        "features.chunk_rows": s.features.chunk_rows,
    }
    model = _model_config(s)
    sc = s.scorer
    cfg["scorer.model"] = f"{sc.model} (repository {sc.model_repo})"
    cfg["scorer.backend"] = sc.backend or (model.get("backend") if model else None)
    cfg["scorer.max_batch_rows"] = sc.max_batch_rows or (model.get("max_batch_rows")
                                                         if model else None)
    cfg["scorer.max_wait_ms"] = sc.max_wait_ms if sc.max_wait_ms >= 0 else (
        model.get("max_wait_ms") if model else None)
    cfg["scorer.instances"] = sc.instances or (model.get("instances") if model else None)
    return cfg


def _model_config(s: Settings) -> dict[str, Any] | None:
    try:
        from workers.scoring.repository import load_model

        spec = load_model(Path(s.scorer.model_repo), s.scorer.model, s.scorer.version or None)
    except Exception:  # the model may live only where the workers run
        return None
    c = spec.config
    return {"backend": c.backend, "max_batch_rows": c.max_batch_rows,
            "max_wait_ms": c.max_wait_ms, "instances": c.instance_count,
            "version": spec.version}
