"""``adstream status``: what every consumer group of a deployment is doing, on one screen.

For each group named ``<kafka.group_prefix>-<role>``: its state and members, the partitions
each member owns, and per partition the committed offset, the log end offset and the lag,
read from the broker the way ``kafka-consumer-groups --describe`` reads them. With the
workers' metrics endpoints (``--metrics HOST:PORT``, or found at each member's host on
``metrics.port``) it adds per role the records in flight, paused partitions, recent
throughput and p99 stage latency. ``--watch`` redraws the screen until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from pipeline import runner
from pipeline.config import KafkaSection, LogSection, load_config
from pipeline.in_process import refuse_in_process
from pipeline.kafka_clients import kafka_options
from pipeline.kafka_reach import KafkaUnavailable
from pipeline.lag import (
    GroupInfo,
    KafkaLagReader,
    LagReader,
    Member,
    PartitionLag,
    error_text,
)
from pipeline.logs import configure
from pipeline.metrics import MetricsSection

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass(frozen=True)
class StatusSettings:
    """The tables ``adstream status`` reads; the others configure the roles."""

    kafka: KafkaSection = field(default_factory=KafkaSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)


def status_settings(args: argparse.Namespace, env: dict[str, str] | None = None
                    ) -> StatusSettings:
    """[kafka], [metrics] and [log] from --config, the environment and flags, in that order.

    A config file also holds the roles' tables, which the runtime cannot check (``pipeline``
    never imports ``workers``), so those are skipped here instead of rejected.
    """
    overrides = list(getattr(args, "set", None) or [])
    for flag, name in (("bootstrap", "kafka.bootstrap"), ("log_format", "log.format"),
                       ("log_level", "log.level")):
        if getattr(args, flag, None):
            overrides.append(f"{name}={getattr(args, flag)}")
    return load_config(StatusSettings, getattr(args, "config", None), env, overrides,
                       only_known_tables=True)


# ---- what the workers' metrics endpoints say --------------------------------------------------


@dataclass
class Scrape:
    """The samples of one scrape of every endpoint, summed per actor."""

    at: float
    in_flight: dict[str, float] = field(default_factory=dict)
    paused: dict[str, float] = field(default_factory=dict)
    processed: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # endpoint -> why it did not answer


@dataclass
class RoleMetrics:
    in_flight: int
    paused: int
    records_per_s: float | None  # None until two scrapes are apart
    p99_s: float | None  # stage latency of the records done between the two scrapes


def metrics_url(endpoint: str) -> str:
    """``host:port``, ``http://host:port`` or a full URL -> the URL of ``/metrics``."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()  # type: ignore[no-any-return]


async def scrape(endpoints: list[str], timeout_s: float = 2.0) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    out = Scrape(time.monotonic())
    texts = await asyncio.gather(*(asyncio.to_thread(_fetch, metrics_url(e), timeout_s)
                                   for e in endpoints), return_exceptions=True)
    for endpoint, text in zip(endpoints, texts, strict=True):
        if isinstance(text, BaseException):
            out.errors[endpoint] = error_text(text)
            continue
        try:
            samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
        except ValueError as e:
            out.errors[endpoint] = f"not Prometheus text: {e}"
            continue
        for s in samples:
            actor = s.labels.get("actor")
            if actor is None:
                continue
            target = {"adstream_in_flight_records": out.in_flight,
                      "adstream_paused_partitions": out.paused,
                      "adstream_records_processed_total": out.processed}.get(s.name)
            if target is not None:
                target[actor] = target.get(actor, 0.0) + s.value
            elif s.name == "adstream_stage_seconds_bucket":
                le = float(s.labels["le"])
                b = out.buckets.setdefault(actor, {})
                b[le] = b.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` over cumulative bucket counts ``{upper bound: count}``."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return lower
            width = buckets[le] - below
            return lower + (le - lower) * ((rank - below) / width if width else 1.0)
        lower, below = le, buckets[le]
    return lower


def role_metrics(actor: str, now: Scrape, before: Scrape | None) -> RoleMetrics | None:
    if actor not in now.in_flight and actor not in now.processed:
        return None
    rate = p99 = None
    if before is not None and now.at > before.at:
        rate = max(0.0, now.processed.get(actor, 0.0) - before.processed.get(actor, 0.0)) / (
            now.at - before.at)
        old = before.buckets.get(actor, {})
        p99 = quantile(0.99, {le: max(0.0, n - old.get(le, 0.0))
                              for le, n in now.buckets.get(actor, {}).items()})
    return RoleMetrics(int(now.in_flight.get(actor, 0)), int(now.paused.get(actor, 0)), rate, p99)


# ---- what the broker says ---------------------------------------------------------------------


@dataclass
class GroupStatus:
    group: str
    role: str
    state: str
    members: list[Member]
    partitions: list[PartitionLag]
    metrics: RoleMetrics | None = None

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def owner(self, p: PartitionLag) -> Member | None:
        return GroupInfo(self.group, self.state, tuple(self.members)).owner(p.tp)

    def to_json(self) -> dict[str, Any]:
        def member(m: Member | None) -> dict[str, str] | None:
            return None if m is None else {"member_id": m.member_id, "client_id": m.client_id,
                                           "host": m.host}

        return {
            "group": self.group, "role": self.role, "state": self.state, "lag": self.lag,
            "members": [{"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                         "partitions": [str(tp) for tp in m.partitions]} for m in self.members],
            "partitions": [{"topic": p.topic, "partition": p.partition,
                            "committed": p.committed, "end": p.end, "lag": p.lag,
                            "owner": member(self.owner(p))} for p in self.partitions],
            "metrics": None if self.metrics is None else dataclasses.asdict(self.metrics),
        }


async def read_groups(reader: LagReader, prefix: str) -> list[GroupStatus]:
    """Every group named ``<prefix>-<role>`` with its members and per-partition lag."""
    out = []
    for group in await reader.groups(f"{prefix}-"):
        info = await reader.describe(group)
        lags = await reader.lag(group)
        out.append(GroupStatus(group, group.removeprefix(f"{prefix}-"), info.state,
                               list(info.members), lags))
    return out


def discovered_endpoints(groups: list[GroupStatus], port: int) -> list[str]:
    """Each member's host on ``metrics.port`` (one worker per host, as in containers)."""
    if port <= 0:
        return []
    hosts = sorted({m.host for g in groups for m in g.members if m.host})
    return [f"{h if ':' not in h else f'[{h}]'}:{port}" for h in hosts]


# ---- the screen -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(groups: list[GroupStatus], bootstrap: str, errors: dict[str, str]) -> RenderableType:
    """One panel per role: summary line, members, and the partitions with their lag."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = [Text(f"Kafka {bootstrap} - {time.strftime('%H:%M:%S')}",
                                        style="bold")]
    for g in groups:
        summary = f"{g.state}, {len(g.members)} member(s), lag {g.lag}"
        if g.metrics is not None:
            m = g.metrics
            rate = "-" if m.records_per_s is None else f"{m.records_per_s:.1f}/s"
            summary += (f", in flight {m.in_flight}, paused {m.paused}, {rate}, "
                        f"p99 {_ms(m.p99_s)}")
        members = Table(box=None, show_edge=False, pad_edge=False)
        for col in ("member", "client@host", "partitions"):
            members.add_column(col)
        for mb in g.members:
            members.add_row(mb.member_id[-12:], f"{mb.client_id}@{mb.host}",
                            ", ".join(str(tp) for tp in mb.partitions) or "-")
        table = Table(box=None, show_edge=False, pad_edge=False)
        for col in ("topic", "partition", "committed", "end", "lag", "owner"):
            table.add_column(col, justify="right" if col in ("partition", "committed", "end",
                                                              "lag") else "left")
        for p in g.partitions:
            owner = g.owner(p)
            table.add_row(p.topic, str(p.partition), "-" if p.committed is None
                          else str(p.committed), str(p.end), str(p.lag),
                          "-" if owner is None else f"{owner.client_id}@{owner.host}")
        parts.append(Panel(Group(Text(summary), members, Text(""), table),
                           title=f"{g.role} ({g.group})", title_align="left"))
    if not groups:
        parts.append(Text("no consumer groups with this prefix", style="yellow"))
    for endpoint, why in sorted(errors.items()):
        parts.append(Text(f"metrics {endpoint}: {why}", style="red"))
    return Group(*parts)


# ---- the command ------------------------------------------------------------------------------


class Observer:
    """Reads the groups and, when there are endpoints, the workers' metrics."""

    def __init__(self, settings: StatusSettings, endpoints: list[str], discover: bool) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.discover = discover
        self.reader = KafkaLagReader(settings.kafka.bootstrap,
                                     kafka_options(settings.kafka, wait_for_broker=False),
                                     request_timeout_ms=10_000)
        self._last: Scrape | None = None
        self.scraped = False  # whether the last observation read any metrics endpoint

    def _urls(self, groups: list[GroupStatus]) -> list[str]:
        found = discovered_endpoints(groups, self.settings.metrics.port) if self.discover else []
        return list(dict.fromkeys([*self.endpoints, *found]))

    async def observe(self) -> tuple[list[GroupStatus], dict[str, str]]:
        groups = await read_groups(self.reader, self.settings.kafka.group_prefix)
        urls = self._urls(groups)
        self.scraped = bool(urls)
        if not urls:
            return groups, {}
        now = await scrape(urls)
        for g in groups:
            g.metrics = role_metrics(g.role, now, self._last)
        self._last = now
        return groups, now.errors

    async def close(self) -> None:
        await self.reader.close()


def cmd_status(args: argparse.Namespace) -> int:
    s = status_settings(args)
    configure(s.log.format, s.log.level)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures are reported below
    refuse_in_process(s.kafka.bootstrap, "adstream status")
    observer = Observer(s, list(args.metrics or []), discover=not args.no_discover)

    async def once() -> tuple[list[GroupStatus], dict[str, str]]:
        groups, errors = await observer.observe()
        if groups and observer.scraped:  # a second scrape gives throughput and p99
            await asyncio.sleep(args.interval)
            groups, errors = await observer.observe()
        return groups, errors

    async def go(stop: asyncio.Event) -> int:
        from rich.console import Console

        try:
            if args.watch:
                await _watch(observer, s.kafka.bootstrap, args.interval, stop)
                return 0
            groups, errors = await asyncio.wait_for(once(), args.timeout)
        except KafkaUnavailable as e:
            print(f"adstream status: {e}", file=sys.stderr)
            return 2
        except (TimeoutError, KafkaError) as e:
            print(f"adstream status: {_kafka_problem(s.kafka.bootstrap, e)}", file=sys.stderr)
            return 2
        finally:
            await observer.close()
        if args.json:
            print(json.dumps({"bootstrap": s.kafka.bootstrap,
                              "groups": [g.to_json() for g in groups],
                              "metrics_errors": errors}, indent=1))
        else:
            Console().print(render(groups, s.kafka.bootstrap, errors))
        if not groups:
            print(f"adstream status: no consumer groups named {s.kafka.group_prefix}-<role> at "
                  f"{s.kafka.bootstrap}; are the workers running (kafka.group_prefix)?",
                  file=sys.stderr)
            return 1
        return 0

    return runner.run(go)


def _kafka_problem(bootstrap: str, e: BaseException) -> str:
    what = "no answer in time" if isinstance(e, TimeoutError) else error_text(e)
    return (f"cannot read consumer groups from Kafka at {bootstrap} ({what}); "
            "check --bootstrap / ADSTREAM_KAFKA_BOOTSTRAP")


async def _watch(observer: Observer, bootstrap: str, interval_s: float,
                 stop: asyncio.Event) -> None:
    """Redraw until ``stop``; a broker that stops answering is shown, then retried."""
    from rich.live import Live
    from rich.text import Text

    with Live(auto_refresh=False) as live:
        while not stop.is_set():
            try:
                groups, errors = await asyncio.wait_for(observer.observe(), 30)
                live.update(render(groups, bootstrap, errors), refresh=True)
            except KafkaUnavailable as e:
                await observer.close()
                live.update(Text(str(e), style="red"), refresh=True)
            except (TimeoutError, KafkaError) as e:
                await observer.close()  # reconnect on the next round
                live.update(Text(_kafka_problem(bootstrap, e), style="red"), refresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="consumer groups: members, partitions, lag; workers' in-flight, "
                            "throughput and p99")
    p.add_argument("--metrics", action="append", metavar="HOST:PORT",
                   help="a worker's metrics endpoint (repeatable); members' hosts on "
                        "metrics.port are tried too")
    p.add_argument("--no-discover", action="store_true",
                   help="only the --metrics endpoints, not the members' hosts")
    p.add_argument("--watch", action="store_true", help="redraw every --interval seconds")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between refreshes, and between the two scrapes that give "
                        "throughput and p99 (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="give up after this many seconds without an answer (default 30)")
    p.set_defaults(func=cmd_status)
