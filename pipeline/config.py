"""Configuration from a TOML file, then the environment, then flags; each later one wins.

Settings are nested dataclasses (one per TOML table). ``ADSTREAM_<TABLE>_<KEY>`` in the
environment and ``--set table.key=value`` on the command line override the file. Unknown
tables or keys and values of the wrong type are errors that name where they came from.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_type_hints

T = TypeVar("T")
ENV_PREFIX = "ADSTREAM_"


class ConfigError(ValueError):
    """A setting that is unknown or has the wrong type; the message says where it came from."""


@dataclass
class KafkaSection:
    """Broker connection and client tuning."""

    bootstrap: str = "127.0.0.1:9092"  # host:port[,host:port], or memory://NAME
    client_id: str = "adstream"  # Kafka client id of every consumer and producer
    group_prefix: str = "adstream"  # consumer groups are named PREFIX-ROLE
    linger_ms: int = 0  # producer: wait this long to fill a batch (0: send at once; batches still form while a send is in flight)
    max_batch_bytes: int = 1024 * 1024  # producer batch size (1 MB: the broker's CPU per request)
    compression: str = "none"  # none, gzip (lz4/zstd need their Python packages)
    fetch_max_bytes: int = 2 * 1024 * 1024  # consumer: largest fetch response (bounds prefetched memory)
    partition_fetch_bytes: int = 1024 * 1024  # consumer: per partition in one fetch (a larger message still comes)
    session_timeout_ms: int = 10_000  # a member silent this long leaves the group
    max_poll_interval_ms: int = 300_000  # a member that does not poll this long leaves the group

    def client_options(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "linger_ms": self.linger_ms,
            "max_batch_bytes": self.max_batch_bytes,
            "compression": None if self.compression == "none" else self.compression,
            "fetch_max_bytes": self.fetch_max_bytes,
            "partition_fetch_bytes": self.partition_fetch_bytes,
            "session_timeout_ms": self.session_timeout_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }


@dataclass
class ActorSection:
    """The actor loop: in-flight budget, commits, drain bounds."""

    max_in_flight: int = 2000  # pause partitions at this many fetched-but-unfinished records
    resume_in_flight: int = 1000  # resume below this many
    max_in_flight_bytes: int = 4 * 1024 * 1024  # ... or at this many bytes of their values (resume at half)
    commit_interval_ms: int = 200  # how often watermarks that moved are committed
    drain_timeout_s: float = 10.0  # on SIGTERM: wait this long for in-flight work, then abandon
    revoke_timeout_s: float = 5.0  # on rebalance: wait this long for revoked partitions' work
    max_message_bytes: int = 4 * 1024 * 1024  # larger input messages are dead-lettered
    delivery: str = "at_least_once"  # or exactly_once: Kafka transactions, read_committed

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "delivery": ("at_least_once", "exactly_once")}


@dataclass
class LogSection:
    format: str = "auto"  # auto (console on a terminal, else json), json, console

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"format": ("auto", "json", "console")}
    level: str = "info"  # debug, info, warning, error


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Turn a TOML or string value into ``typ``; strings come from the environment or flags."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif getattr(typ, "__origin__", None) is list:
        (item,) = typ.__args__
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _sections(cls: type[Any]) -> dict[str, type[Any]]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(settings: Any, table: str, key: str, value: Any, where: str) -> None:
    sections = _sections(type(settings))
    if table not in sections:
        raise ConfigError(f"{where}: unknown table [{table}]; known: {', '.join(sections)}")
    section = getattr(settings, table)
    fields = {k: v for k, v in get_type_hints(type(section)).items() if k != "CHOICES"}
    if key not in fields:
        raise ConfigError(f"{where}: unknown setting {table}.{key}; known in [{table}]: "
                          f"{', '.join(fields)}")
    value = _coerce(value, fields[key], where)
    choices = getattr(type(section), "CHOICES", {}).get(key)
    if choices and value not in choices:
        raise ConfigError(f"{where}: {table}.{key} must be one of {', '.join(choices)}, "
                          f"not {value!r}")
    setattr(section, key, value)


def load_config(
    cls: type[T],
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Iterable[str] = (),
    *,
    only_known_tables: bool = False,
) -> T:
    """Build ``cls`` (a dataclass of section dataclasses) from file, environment and flags.

    ``only_known_tables`` skips (instead of rejecting) tables and ``--set`` overrides that
    ``cls`` does not have: a tool that reads a subset of a shared config file uses it."""
    settings = cls()
    known = set(_sections(cls))
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for table, values in data.items():
            if only_known_tables and table not in known:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: {table!r} must be a table ([{table}])")
            for key, value in values.items():
                _apply(settings, table, key, value, f"{path}: {table}.{key}")
    env = os.environ if env is None else env
    for table, section_cls in _sections(cls).items():
        for key in get_type_hints(section_cls):
            if key == "CHOICES":
                continue
            var = f"{ENV_PREFIX}{table}_{key}".upper()
            if var in env:
                _apply(settings, table, key, env[var], f"environment {var}")
    for item in overrides:
        name, sep, value = item.partition("=")
        table, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        if only_known_tables and table not in known:
            continue
        _apply(settings, table, key, value.strip(), f"--set {item}")
    return settings


def to_toml(settings: Any) -> str:
    """``settings`` (a dataclass of section dataclasses) as a TOML file ``load_config`` reads
    back to the same values: how a tool hands its resolved settings to processes it starts."""
    lines = []
    for table, section_cls in _sections(type(settings)).items():
        lines.append(f"[{table}]")
        section = getattr(settings, table)
        for key in get_type_hints(section_cls):
            if key == "CHOICES":
                continue
            value = getattr(section, key)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = json.dumps(str(value))  # a JSON string is a valid TOML basic string
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def _comments(section_cls: type[Any]) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the section's source: its description."""
    try:
        source = inspect.getsource(section_cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for m in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.MULTILINE):
        found[m.group(1)] = m.group(2).strip()
    return found


def reference(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(setting, default, environment variable, description) for every setting."""
    rows = []
    defaults = cls()
    for table, section_cls in _sections(cls).items():
        section = getattr(defaults, table)
        notes = _comments(section_cls)
        for key in get_type_hints(section_cls):
            if key == "CHOICES":
                continue
            rows.append((f"{table}.{key}", json.dumps(getattr(section, key)),
                         f"{ENV_PREFIX}{table}_{key}".upper(), notes.get(key, "")))
    return rows


def reference_markdown(cls: type[Any]) -> str:
    lines = ["| setting | default | environment | what |", "|---|---|---|---|"]
    lines += [f"| `{name}` | `{default}` | `{env}` | {what} |"
              for name, default, env, what in reference(cls)]
    return "\n".join(lines)
