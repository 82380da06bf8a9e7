"""``adstream model build|quantize|load|unload|versions``: write the reference model, an
INT8 version beside an FP32 one, and ask a running scorer to load or unload a version."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.headers import now_ms
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest
from tools.commands.request_files import read_requests
from tools.commands.group import command_group
from tools.commands.settings import settings


def cmd_model_build(args: argparse.Namespace) -> int:
    from workers.scoring.reference_model import build_reference_model

    s = settings(args)
    repo = Path(args.repo or s.scorer.model_repo)
    path = build_reference_model(repo, name=args.name, version=args.version, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {repo / args.name}/config.toml")
    return 0


def _traffic_requests(args: argparse.Namespace) -> list[ScoreRequest]:
    """Recorded requests (``--traffic FILE``) or generated ones (the demo's generator)."""
    if args.traffic:
        reqs = []
        for line, item in read_requests(args.traffic, "auto", None):
            if isinstance(item, SchemaError):
                raise SystemExit(f"adstream model quantize: {args.traffic}:{line}: {item}")
            reqs.append(item)
            if len(reqs) == args.requests:
                break
        return reqs
    from loadtest.generate import generate  # the generator the demo uses

    now = now_ms()
    return [request_from_json(d, now) for d in generate(args.requests, seed=args.seed)]


def cmd_model_quantize(args: argparse.Namespace) -> int:
    import tempfile

    from workers.roles import feature_pipeline
    from workers.scoring.quantize import (
        QuantizationRefused,
        Traffic,
        compare,
        install,
        quantize_file,
    )
    from workers.scoring.quantize_bounds import Bounds
    from workers.scoring.repository import ModelRepositoryError, load_model

    s = settings(args)
    repo = Path(args.repo or s.scorer.model_repo)
    try:
        spec = load_model(repo, args.name, args.from_version)
    except ModelRepositoryError as e:
        print(f"adstream model quantize: {e}", file=sys.stderr)
        return 2
    traffic = Traffic.from_requests(_traffic_requests(args), feature_pipeline(s, spec))
    bounds = Bounds(args.max_abs_delta, args.p99_abs_delta, args.min_top_k_overlap,
                    args.max_auc_drop)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        quantize_file(spec, candidate, args.mode, traffic)
        report = compare(spec, candidate, traffic, args.mode, seed=args.seed)
        print("\n".join(report.lines()))
        try:
            path = install(spec, candidate, report, bounds, args.version)
        except (QuantizationRefused, ModelRepositoryError) as e:
            print(f"adstream model quantize: {e}", file=sys.stderr)
            return 1
    print(f"wrote {path} (INT8, {path.stat().st_size / 1e6:.1f} MB) beside version "
          f"{spec.version}")
    return 0


def cmd_model_admin(args: argparse.Namespace) -> int:
    """``adstream model load|unload|versions``: one call to a running scorer's admin route."""
    import urllib.error
    import urllib.request

    body = {} if args.version is None else {"version": args.version}
    route = {"load": "load", "unload": "unload", "versions": "versions"}[args.model_command]
    url = f"{args.url.rstrip('/')}/admin/model/{route}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as answer:
            print(answer.read().decode().strip())
            return 0
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except (json.JSONDecodeError, AttributeError):
            reason = e.reason
        print(f"adstream model {args.model_command}: {url}: {reason}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as e:
        print(f"adstream model {args.model_command}: cannot reach {url} ({e}); is the scorer "
              "running with metrics.port set?", file=sys.stderr)
    return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    msub = command_group(sub, "model", "the model repository")
    build = msub.add_parser("build", parents=[common],
                            help="write the reference DLRM-style CTR model (ONNX)")
    build.add_argument("--repo", default=None, help="model repository (default scorer.model_repo)")
    build.add_argument("--name", default="ctr")
    build.add_argument("--version", type=int, default=1)
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=cmd_model_build)

    from workers.scoring.quantize_bounds import MODES, Bounds

    b = Bounds()
    quant = msub.add_parser(
        "quantize", parents=[common],
        help="write an INT8 version (CPU) beside an FP32 one if it scores close enough")
    quant.add_argument("--repo", default=None, help="model repository (default scorer.model_repo)")
    quant.add_argument("--name", default="ctr")
    quant.add_argument("--from-version", type=int, default=None,
                       help="the FP32 version (default: the one the version policy serves)")
    quant.add_argument("--version", type=int, default=None,
                       help="version number to write (default: the highest present + 1)")
    quant.add_argument("--mode", choices=MODES, default="dynamic",
                       help="dynamic (weights int8) or static (activations calibrated too)")
    quant.add_argument("--requests", type=int, default=1000,
                       help="requests to calibrate and compare on (default 1000)")
    quant.add_argument("--traffic", default=None, metavar="FILE",
                       help="recorded requests (.jsonl / .msgpack); default: generated")
    quant.add_argument("--seed", type=int, default=0, help="traffic and label seed")
    quant.add_argument("--max-abs-delta", type=float, default=b.max_abs_delta,
                       help=f"refuse if max |Δscore| exceeds this (default {b.max_abs_delta})")
    quant.add_argument("--p99-abs-delta", type=float, default=b.p99_abs_delta,
                       help=f"refuse if p99 |Δscore| exceeds this (default {b.p99_abs_delta})")
    quant.add_argument("--min-top-k-overlap", type=float, default=b.min_top_k_overlap,
                       help=f"refuse below this mean top-K overlap (default "
                            f"{b.min_top_k_overlap})")
    quant.add_argument("--max-auc-drop", type=float, default=b.max_auc_drop,
                       help=f"refuse if AUC drops by more (default {b.max_auc_drop})")
    quant.set_defaults(func=cmd_model_quantize)

    for verb, what in (("load", ("load, warm and serve a version (default: the highest the "
                                "policy serves) in a running scorer")),
                       ("unload", ("stop a version in a running scorer (the highest other "
                                  "loaded one serves)")),
                       ("versions", "which versions a running scorer holds and serves")):
        p = msub.add_parser(verb, help=what)
        p.add_argument("--url", required=True,
                       help="the scorer's endpoint, http://HOST:PORT (metrics.port)")
        p.add_argument("--version", type=int, required=verb == "unload", default=None)
        p.add_argument("--timeout", type=float, default=60.0)
        p.set_defaults(func=cmd_model_admin)
