"""The ``adstream`` command line.

The runtime contributes no command: every command group comes from a package that registers
it under the ``adstream.commands`` entry point (``tools``, ``loadtest``), so the runtime never
imports the tools, the ads roles or the load tester. Here are the options every command takes
and the settings they give.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config import ConfigError, load_config
from pipeline.in_process import InProcessOnly, refuse_in_process
from pipeline.kafka_reach import KafkaUnavailable
from pipeline.logs import configure

T = TypeVar("T")


def common_options() -> argparse.ArgumentParser:
    """Options every command takes: configuration, broker and logging."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--config", type=Path, default=os.environ.get("ADSTREAM_CONFIG"),
                   help="TOML settings file (env ADSTREAM_CONFIG)")
    g.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one setting (repeatable)")
    g.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap servers or memory://NAME "
                        "(env ADSTREAM_KAFKA_BOOTSTRAP, default 127.0.0.1:9092)")
    g.add_argument("--log-format", choices=["auto", "json", "console"], default=None)
    g.add_argument("--log-level", default=None)
    return p


def settings_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Settings from --config, the environment, --set and --bootstrap; logging configured."""
    overrides = list(getattr(args, "set", []) or [])
    if getattr(args, "bootstrap", None):
        overrides.append(f"kafka.bootstrap={args.bootstrap}")
    if getattr(args, "log_format", None):
        overrides.append(f"log.format={args.log_format}")
    if getattr(args, "log_level", None):
        overrides.append(f"log.level={args.log_level}")
    settings = load_config(cls, getattr(args, "config", None), overrides=overrides)
    kafka: Any = getattr(settings, "kafka", None)
    if kafka is not None and not getattr(args, "in_process", False):
        refuse_in_process(kafka.bootstrap, command_name(args))
    log: Any = getattr(settings, "log", None)
    if log is not None:
        configure(log.format, log.level)
    return settings


def command_name(args: argparse.Namespace) -> str:
    """``adstream dlq show`` for the parsed ``args`` (as far as the parser recorded it)."""
    words = [getattr(args, k) for k in sorted(vars(args))
             if k == "command" or k.endswith("_command")]
    return " ".join(["adstream", *(str(w) for w in words if isinstance(w, str))])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adstream",
        description="Kafka-native inference serving for ads CTR models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    for ep in sorted(entry_points(group="adstream.commands"), key=lambda e: e.name):
        ep.load()(sub, common)
    return parser


def _user_error(e: BaseException) -> BaseException | None:
    """The configuration or broker problem ``e`` is (also inside a task group), or None."""
    if isinstance(e, ConfigError | KafkaUnavailable):
        return e
    if isinstance(e, BaseExceptionGroup):
        found = [_user_error(x) for x in e.exceptions]
        if found and all(found):
            return found[0]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if "config" not in vars(args):  # no settings (kafka …): check the flag here
            refuse_in_process(getattr(args, "bootstrap", None), command_name(args))
        code = args.func(args)
    except InProcessOnly as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        problem = _user_error(e)
        if problem is None:
            raise
        what = "configuration error: " if isinstance(problem, ConfigError) else ""
        print(f"adstream: {what}{problem}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
