"""``adstream kafka start|stop|status``: the local broker from the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tools.kafka.broker import start_broker, stop_broker
from tools.kafka.errors import KafkaSetupError
from tools.kafka.paths import (
    BOOTSTRAP_ENV,
    DEFAULT_BOOTSTRAP,
    KAFKA_VERSION,
    find_data_dir,
    kafka_home,
)
from tools.kafka.probes import broker_answers, describe_cluster, split_bootstrap
from tools.kafka.processes import run_sync


def _default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def _bootstrap_port(bootstrap: str) -> int:
    try:
        return split_bootstrap(bootstrap)[1]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _cmd_start(args: argparse.Namespace) -> int:
    port: int = args.port if args.port is not None else _bootstrap_port(args.bootstrap)
    data_dir: Path | None = args.data_dir
    try:
        started = time.monotonic()
        broker = start_broker(port, data_dir, timeout_s=args.timeout, heap=args.heap)
    except KafkaSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(
        f"Kafka {KAFKA_VERSION} answering at {broker.bootstrap} "
        f"(pid {broker.pid}, data dir {broker.data_dir}, {took:.1f}s)"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or find_data_dir(_bootstrap_port(args.bootstrap))
    if stop_broker(data_dir, timeout_s=args.timeout):
        print(f"stopped the Kafka broker of {data_dir}")
    else:
        print(f"no running Kafka broker for {data_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    bootstrap: str = args.bootstrap

    async def query() -> dict[str, object] | None:
        if not await broker_answers(bootstrap, timeout_s=args.timeout):
            return None
        return await describe_cluster(bootstrap, timeout_s=args.timeout)

    try:
        info = run_sync(query())
    except Exception as exc:  # reported as "not answering"
        print(f"Kafka at {bootstrap}: not answering ({exc})")
        return 1
    if info is None:
        print(f"Kafka at {bootstrap}: not answering")
        return 1
    brokers = info.get("brokers")
    topics = info.get("topics")
    broker_list = brokers if isinstance(brokers, list) else []
    topic_list = topics if isinstance(topics, list) else []
    print(f"Kafka at {bootstrap}: answering")
    print(f"cluster id: {info.get('cluster_id')}")
    print("brokers: " + ", ".join(f"{b['node_id']}@{b['host']}:{b['port']}" for b in broker_list))
    print(f"topics ({len(topic_list)}): " + (", ".join(str(t) for t in topic_list) or "-"))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser | None = None) -> None:
    """Add ``kafka start|stop|status`` to the ``adstream`` command line (they take their own
    ``--bootstrap`` and no settings, so not the ``common`` options)."""
    kafka = subparsers.add_parser(
        "kafka",
        help="run a local Apache Kafka broker (KRaft) for development and tests",
        description="Fetch (once, with Maven) and run a real single-node Kafka broker "
        f"({KAFKA_VERSION}, KRaft) on loopback. Jars are cached in {kafka_home()}.",
    )

    def kafka_help(_: argparse.Namespace) -> int:
        kafka.print_help()
        return 2

    kafka.set_defaults(func=kafka_help)
    commands = kafka.add_subparsers(title="commands", metavar="{start,stop,status}")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--bootstrap",
            default=_default_bootstrap(),
            help=f"host:port of the broker (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})",
        )
        return parser

    start = add("start", "start the local broker (or report the one already running)")
    start.add_argument("--port", type=int, help="listener port (default: the bootstrap's)")
    start.add_argument(
        "--data-dir", type=Path, help="data directory (default: <cache>/kafka-data/<port>)"
    )
    start.add_argument("--heap", default="512m", help="JVM max heap (default: 512m)")
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait (default 90)")
    start.set_defaults(func=_cmd_start)

    stop = add("stop", "stop the local broker (SIGTERM, then SIGKILL)")
    stop.add_argument(
        "--data-dir", type=Path, help="data directory (default: that of the bootstrap's port)"
    )
    stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    stop.set_defaults(func=_cmd_stop)

    status = add("status", "show whether the broker answers, its cluster id, brokers, topics")
    status.add_argument("--timeout", type=float, default=5, help="seconds to wait (default 5)")
    status.set_defaults(func=_cmd_status)
