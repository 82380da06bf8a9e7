"""Transcribe a ``scripts/gpu-check`` log into a GPU figures file for the capacity model.

``python -m capacity.gpu_log docs/gpu-check-h100.log --out docs/bench/gpu-h100.json``
keeps the model's time per batch of one backend (the benchmark table: rows, p50 and p99 ms
per call, copies included) and the first scoring-worker figure (rows/s of one process
through the in-process broker), with the log's date, GPU and host.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from capacity.figures import GPU_KIND

_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s*$")
_HEAD = re.compile(r"^== gpu-check (\S+)")
_GPU = re.compile(r"^GPU \d+: (.+?) \(UUID")
_CPUS = re.compile(r"cpus=(\d+)")
_WORKER = re.compile(r"scoring worker through the in-process broker: ([\d,]+) rows/s")
_CHUNK = re.compile(r"chunk_rows=(\d+)")


def parse(text: str, *, log: str, backend: str = "cupy-fp32") -> dict[str, Any]:
    measured = gpu = None
    cpus = worker = chunk = None
    batches = []
    last_chunk = None
    for line in text.splitlines():
        if (m := _HEAD.match(line)) and measured is None:
            measured = m.group(1)
        elif (m := _GPU.match(line)) and gpu is None:
            gpu = m.group(1)
        elif (m := _ROW.match(line)) and m.group(1) == backend:
            batches.append({"rows": int(m.group(2)), "p50_ms": float(m.group(5)),
                            "p99_ms": float(m.group(6)),
                            "rows_per_s": int(m.group(4).replace(",", ""))})
        if cpus is None and (m := _CPUS.search(line)):
            cpus = int(m.group(1))
        if line.startswith("config:") and (m := _CHUNK.search(line)):
            last_chunk = int(m.group(1))
        if worker is None and (m := _WORKER.search(line)):
            worker, chunk = int(m.group(1).replace(",", "")), last_chunk
    missing = [n for n, v in (("the '== gpu-check DATE' line", measured), ("the GPU line", gpu),
                              ("cpus=N", cpus), (f"{backend} benchmark rows", batches),
                              ("a scoring worker figure", worker)) if not v]
    if missing:
        raise ValueError(f"{log}: no {', '.join(missing)} found")
    return {"kind": GPU_KIND, "version": 1, "gpu": gpu, "host_cpus": cpus, "backend": backend,
            "source": {"log": log, "measured": measured, "machine": f"{gpu}, {cpus} cpus",
                       "command": "bash scripts/gpu-check"},
            "batches": batches, "worker": {"rows_per_s": worker, "chunk_rows": chunk}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m capacity.gpu_log", description=__doc__)
    ap.add_argument("log")
    ap.add_argument("--backend", default="cupy-fp32")
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    try:
        doc = parse(Path(args.log).read_text(), log=args.log, backend=args.backend)
    except (OSError, ValueError) as e:
        print(f"capacity.gpu_log: {e}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=1) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
