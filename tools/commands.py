"""``adstream`` commands for the ads roles: topics, produce, worker, run, demo, model."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from pipeline import runner
from pipeline.cli import settings_from_args
from pipeline.config import ConfigError, amended
from pipeline.headers import now_ms
from schemas.errors import SchemaError
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, ScoreResult
from workers.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_args(Settings, args)


# ---- topics ----------------------------------------------------------------------------------


def cmd_topics_create(args: argparse.Namespace) -> int:
    from workers.roles import ensure_topics, topics, transport_for

    s = _settings(args)
    if args.partitions is not None:
        s = amended(s, topics={"partitions": args.partitions})
    if args.replication is not None:
        s = amended(s, topics={"replication": args.replication})

    async def go(stop: asyncio.Event) -> list[str]:
        transport = transport_for(s, wait_for_broker=False)
        created = await ensure_topics(s, transport)
        if args.reply_topic:  # one partition: a caller's own answers, read in order
            created += await transport.create_topics(args.reply_topic, 1, s.topics.replication)
        return created

    created = runner.run(go)
    for name in (*topics(s), *args.reply_topic):
        n = 1 if name in args.reply_topic else s.topics.partitions
        state = "created" if name in created else "exists"
        print(f"{name}: {state}" + (f" ({n} partition{'s' if n > 1 else ''})"
                                    if name in created else ""))
    return 0


# ---- produce ---------------------------------------------------------------------------------


def read_requests(source: str, fmt: str, reply_to: str | None) -> Iterator[
        tuple[int, ScoreRequest | SchemaError]]:
    """Yield (line or item number, request or the error that names what was wrong);
    ``reply_to`` replaces each request's own."""
    for i, req in _read_requests(source, fmt):
        if reply_to and isinstance(req, ScoreRequest):
            req.reply_to = reply_to
        yield i, req


def _read_requests(source: str, fmt: str) -> Iterator[tuple[int, ScoreRequest | SchemaError]]:
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    try:
        if fmt == "auto":
            fmt = "msgpack" if source.endswith((".msgpack", ".mpk")) else "jsonl"
        if fmt == "msgpack":
            for i, item in enumerate(msgpack.Unpacker(stream, raw=False), 1):
                try:
                    if not isinstance(item, dict):
                        raise SchemaError("", "expected a map")
                    req = ScoreRequest.from_wire(item)
                except SchemaError as e:
                    yield i, e
                    continue
                yield i, req
            return
        for i, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                data: Any = json.loads(line)
                req = request_from_json(data, now_ms())
            except json.JSONDecodeError as e:
                yield i, SchemaError("", f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            except SchemaError as e:
                yield i, e
                continue
            yield i, req
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def cmd_produce(args: argparse.Namespace) -> int:
    from workers.client import ResultWaiter, request_message
    from workers.roles import transport_for

    s = _settings(args)
    topic = args.topic or s.topics.requests
    results_topic = args.reply_to or s.topics.results

    async def go(stop: asyncio.Event) -> int:
        transport = transport_for(s, wait_for_broker=False)
        if await transport.partitions(topic) == 0:
            print(f"adstream produce: topic {topic!r} does not exist at {s.kafka.bootstrap}; "
                  "run `adstream topics create` first", file=sys.stderr)
            return 2
        bad = sent = 0
        waiter = ResultWaiter(transport, results_topic,
                              read_committed=s.actor.delivery == "exactly_once")
        producer = transport.producer()
        await producer.start()
        futures: list[asyncio.Future[ScoreResult]] = []
        try:
            if args.wait:
                await waiter.__aenter__()
            acks = []
            for where, item in read_requests(args.file, args.format, args.reply_to):
                if isinstance(item, SchemaError):
                    bad += 1
                    print(f"adstream produce: {args.file}:{where}: {item}", file=sys.stderr)
                    continue
                if args.wait:
                    futures.append(waiter.expect(item.request_id))
                acks.append(await producer.send(request_message(item, topic)))
                sent += 1
            await asyncio.gather(*acks)
            print(f"produced {sent} request(s) to {topic}"
                  + (f"; {bad} invalid line(s) skipped" if bad else ""), file=sys.stderr)
            lost = 0
            if args.wait and futures:
                done, pending = await asyncio.wait(futures, timeout=args.timeout)
                for fut in futures:
                    if fut in done:
                        print(json.dumps(fut.result().to_json()), flush=True)
                lost = len(pending)
                if lost:
                    print(f"adstream produce: no result for {lost} request(s) within "
                          f"{args.timeout}s", file=sys.stderr)
            return 1 if (bad or lost) else 0
        finally:
            await producer.stop()
            if args.wait:
                await waiter.__aexit__(None, None, None)

    return runner.run(go)


# ---- workers ---------------------------------------------------------------------------------


def _run_roles(args: argparse.Namespace, roles: list[str]) -> int:
    from workers.roles import run_roles

    s = _settings(args)

    async def go(stop: asyncio.Event) -> int:
        await run_roles(roles, s, stop)
        return 0

    return runner.run(go)


def cmd_worker(args: argparse.Namespace) -> int:
    if args.standby and args.processes is None:
        raise ConfigError("--standby needs --processes: standbys are a supervisor's")
    if args.processes is None:
        return _run_roles(args, [args.role])
    from pipeline.supervisor import Supervisor

    s = _settings(args)  # validates the configuration once, before any child starts
    if args.standby and not s.kafka.static_membership:
        raise ConfigError("--standby needs kafka.static_membership = true: a standby takes "
                          "a dead member's partitions over by joining as its instance")
    child = [sys.executable, "-m", "pipeline.cli", *_without_processes(sys.argv[1:])]
    port = s.metrics.port

    def child_args(index: int) -> list[str]:
        # each child serves its metrics on its own port: port, port + 1, ...
        return ["--set", f"metrics.port={port + index}"] if port else []

    return Supervisor(child, args.processes, standby=args.standby,
                      stop_timeout_s=s.actor.drain_timeout_s + 10, child_args=child_args).run()


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def _without_processes(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--processes", "--standby"):
            skip = True
        elif not a.startswith(("--processes=", "--standby=")):
            out.append(a)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from workers.roles import topology

    return _run_roles(args, list(topology(args.fused).roles))


# ---- model -----------------------------------------------------------------------------------


def cmd_model_build(args: argparse.Namespace) -> int:
    from workers.scoring.reference_model import build_reference_model

    s = _settings(args)
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

    s = _settings(args)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from tools.demo import run_demo

    if args.log_level is None:
        args.log_level = "warning"  # the demo's own summary is what a newcomer reads
    s = _settings(args)
    return run_demo(s, broker=args.broker, requests=args.requests, seed=args.seed,
                    rate=args.rate)


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import reference_markdown, to_toml

    s = _settings(args)
    if args.reference:
        print(reference_markdown(Settings))
        return 0
    print(to_toml(s, masked=True))  # secrets that are set show as "***"
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    topics = sub.add_parser("topics", help="manage adstream's Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")
    create = tsub.add_parser("create", parents=[common],
                             help="create the six topics (idempotent)")
    create.add_argument("--partitions", type=int, default=None,
                        help="partitions per topic (default: topics.partitions, 8)")
    create.add_argument("--replication", type=int, default=None)
    create.add_argument("--reply-topic", action="append", default=[], metavar="NAME",
                        help="also create NAME with one partition, for a caller's reply_to "
                             "(repeatable)")
    create.set_defaults(func=cmd_topics_create)

    produce = sub.add_parser("produce", parents=[common],
                             help="send requests (JSON lines or MessagePack) to ads.requests")
    produce.add_argument("file", help="a .jsonl / .msgpack file, or - for standard input")
    produce.add_argument("--format", choices=["auto", "jsonl", "msgpack"], default="auto")
    produce.add_argument("--wait", action="store_true",
                         help="wait for each request's result and print it as a JSON line")
    produce.add_argument("--timeout", type=float, default=30.0,
                         help="seconds to wait for results with --wait (default 30)")
    produce.add_argument("--topic", default=None, help="request topic (default topics.requests)")
    produce.add_argument("--reply-to", default=None,
                         help="topic for the results (must exist; default topics.results)")
    produce.set_defaults(func=cmd_produce)

    worker = sub.add_parser("worker", parents=[common], help="run one role")
    worker.add_argument("role", choices=["features", "scorer", "aggregator", "fused"],
                        help="fused = features and scorer in one process, no Kafka hop between")
    worker.add_argument("--processes", type=_at_least(1), default=None, metavar="N",
                        help="run N group members under a supervisor that restarts crashed "
                             "ones and forwards SIGTERM")
    worker.add_argument("--standby", type=_at_least(0), default=0, metavar="K",
                        help="with --processes and kafka.static_membership: keep K more "
                             "children loaded but out of the group; one takes a dead "
                             "member's place (and partitions) at once")
    worker.set_defaults(func=cmd_worker)

    run = sub.add_parser("run", parents=[common], help="run all three roles in this process")
    run.add_argument("--fused", action="store_true",
                     help="features and scorer fused (no ads.features hop) + aggregator")
    run.set_defaults(func=cmd_run, in_process=True)

    demo = sub.add_parser("demo", parents=[common],
                          help="start what is missing, score generated requests, summarize")
    demo.add_argument("--broker", choices=["kafka", "memory"], default="kafka",
                      help="kafka (default; started if none answers) or the in-process broker")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rate", type=float, default=200.0, help="requests per second")
    demo.set_defaults(func=cmd_demo, in_process=True)

    model = sub.add_parser("model", help="the model repository")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
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

    config = sub.add_parser("config", parents=[common],
                            help="print the effective settings (or --reference: every setting)")
    config.add_argument("--reference", action="store_true",
                        help="a Markdown table of every setting, default and env variable")
    config.set_defaults(func=cmd_config)
