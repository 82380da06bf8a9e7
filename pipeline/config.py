"""Configuration from a TOML file, then the environment, then flags; each later one wins.

Settings are nested dataclasses (one per TOML table). ``ADSTREAM_<TABLE>_<KEY>`` in the
environment and ``--set table.key=value`` on the command line override the file. Unknown
tables or keys, values of the wrong type and values outside what a setting allows (its
:class:`~pipeline.setting_rules.Rule`) are errors that name where they came from. Loaded
settings are frozen: code that needs other values makes a copy (:func:`amended`).
A table-valued setting (``[kafka.consumer_options]``) takes ``--set
kafka.consumer_options.KEY=VALUE`` and a JSON object in the environment.
"""

from __future__ import annotations

import dataclasses
import inspect
import contextlib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from pipeline.setting_rules import rule_of, setting

T = TypeVar("T")
ENV_PREFIX = "ADSTREAM_"
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A setting that is unknown or has the wrong type; the message says where it came from."""


def _codec_installed(name: str) -> str | None:
    from aiokafka import codec

    installed = {"none": True, "gzip": codec.has_gzip(), "snappy": codec.has_snappy(),
                 "lz4": codec.has_lz4(), "zstd": codec.has_zstd()}
    if installed.get(name, True):
        return None
    usable = ", ".join(n for n, ok in installed.items() if ok)
    return (f"needs the Python package of the {name} codec, which is not installed "
            f"(installed here: {usable})")


def _bootstrap_ok(value: str) -> str | None:
    if value.startswith("memory://"):
        return None
    for item in value.removeprefix("kafka://").split(","):
        host, sep, port = item.strip().rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            return f"must be host:port[,host:port] or memory://NAME ({item.strip()!r} is not)"
    return None


def _client_options(kind: str) -> Any:
    def check(value: Any) -> str | None:
        from pipeline.kafka_passthrough import problem

        return problem(kind, value)

    return check


@dataclass(frozen=True)
class KafkaSection:
    """Broker connection, security and client tuning (names follow Kafka's client config)."""

    bootstrap: str = setting("127.0.0.1:9092", nonempty=True, check=_bootstrap_ok, allowed_text="host:port list")  # host:port[,host:port], or memory://NAME
    client_id: str = setting("adstream", nonempty=True)  # Kafka client id of every consumer and producer
    group_prefix: str = setting("adstream", nonempty=True)  # consumer groups are named PREFIX-ROLE
    linger_ms: int = setting(0, ge=0)  # producer: wait this long to fill a batch (0: send at once; batches still form while a send is in flight)
    max_batch_bytes: int = setting(1024 * 1024, ge=1)  # producer batch size (1 MB: the broker's CPU per request)
    compression: str = setting("none", choices=COMPRESSIONS, check=_codec_installed)  # producer codec; snappy, lz4 and zstd need their Python packages
    fetch_max_bytes: int = setting(2 * 1024 * 1024, ge=1)  # consumer: largest fetch response (bounds prefetched memory)
    partition_fetch_bytes: int = setting(1024 * 1024, ge=1)  # consumer: per partition in one fetch (a larger message still comes)
    delivery_timeout_ms: int = setting(120_000, ge=1000)  # producer: how long a message may wait for Kafka's acknowledgement, retries included (delivery.timeout.ms), so a broker restart is ridden out; past it the worker stops without committing what was not acknowledged
    session_timeout_ms: int = setting(10_000, ge=1000, le=3_600_000)  # a member silent this long leaves the group
    static_membership: bool = False  # supervised children (--processes N) join as stable group instances GROUP-HOST-INDEX (kafka.instance_prefix replaces HOST): a restarted child takes its partitions back without a rebalance; off by default: two supervisors of one role with the same HOST would fence each other
    instance_prefix: str = ""  # the HOST part of those instance ids; empty = this host's name (set one per supervisor when several supervise one role on a host)
    max_poll_interval_ms: int = setting(300_000, ge=1000)  # a member that does not poll this long leaves the group
    connect_timeout_s: float = setting(60.0, ge=0)  # a worker waits this long for a broker to answer at start (one-shot commands do not wait)
    security_protocol: str = setting("PLAINTEXT", choices=SECURITY_PROTOCOLS)  # security.protocol: TLS (SSL) and/or SASL login
    sasl_mechanism: str = setting("PLAIN", choices=SASL_MECHANISMS)  # sasl.mechanism (with SASL_PLAINTEXT or SASL_SSL)
    sasl_username: str = ""  # SASL user name
    sasl_password: str = setting("", secret=True)  # SASL password (prefer the environment or sasl_password_file)
    sasl_password_file: str = ""  # file whose first line is the SASL password (e.g. a mounted secret)
    ssl_ca_file: str = ""  # PEM CA certificate(s) that signed the brokers' certificates; empty = the system's
    ssl_cert_file: str = ""  # PEM client certificate, for brokers that require TLS client authentication
    ssl_key_file: str = ""  # PEM private key of ssl_cert_file
    ssl_key_password: str = setting("", secret=True)  # password of an encrypted ssl_key_file
    ssl_check_hostname: bool = True  # the broker's certificate must name the host connected to (ssl.endpoint.identification.algorithm=https)
    consumer_options: dict[str, Any] = setting({}, check=_client_options("consumer"), allowed_text="AIOKafkaConsumer arguments")  # raw aiokafka consumer options ([kafka.consumer_options])
    producer_options: dict[str, Any] = setting({}, check=_client_options("producer"), allowed_text="AIOKafkaProducer arguments")  # raw aiokafka producer options ([kafka.producer_options])
    admin_options: dict[str, Any] = setting({}, check=_client_options("admin"), allowed_text="AIOKafkaAdminClient arguments")  # raw aiokafka admin client options ([kafka.admin_options])

    def check(self) -> str | None:
        """What is wrong across settings (a SASL protocol without a user), or None."""
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_username:
                return (f"kafka.security_protocol={self.security_protocol} needs "
                        "kafka.sasl_username")
            if not (self.sasl_password or self.sasl_password_file):
                return (f"kafka.security_protocol={self.security_protocol} needs "
                        "kafka.sasl_password or kafka.sasl_password_file")
        if self.sasl_password and self.sasl_password_file:
            return "kafka.sasl_password and kafka.sasl_password_file are both set; keep one"
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            return "kafka.ssl_cert_file and kafka.ssl_key_file go together; set both or neither"
        for key in ("sasl_password_file", "ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                return f"kafka.{key}: {path}: no such file"
        return None


@dataclass(frozen=True)
class ActorSection:
    """The actor loop: in-flight budget, commits, drain bounds."""

    max_in_flight: int = setting(2000, ge=1)  # pause partitions at this many fetched-but-unfinished records
    resume_in_flight: int = setting(1000, ge=0)  # resume below this many
    max_in_flight_bytes: int = setting(4 * 1024 * 1024, ge=1)  # ... or at this many bytes of their values (resume at half)
    commit_interval_ms: int = setting(200, ge=1)  # how often watermarks that moved are committed
    drain_timeout_s: float = setting(10.0, ge=0)  # on SIGTERM: wait this long for in-flight work, then abandon
    revoke_timeout_s: float = setting(5.0, ge=0)  # on rebalance: wait this long for revoked partitions' work
    max_message_bytes: int = setting(4 * 1024 * 1024, ge=1)  # larger input messages are dead-lettered
    delivery: str = setting("at_least_once", choices=("at_least_once", "exactly_once"))  # exactly_once: Kafka transactions, read_committed

    def check(self) -> str | None:
        if self.resume_in_flight >= self.max_in_flight:
            return (f"actor.resume_in_flight ({self.resume_in_flight}) must be below "
                    f"actor.max_in_flight ({self.max_in_flight})")
        return None


@dataclass(frozen=True)
class LogSection:
    format: str = setting("auto", choices=("auto", "json", "console"))  # auto: console on a terminal, else json
    level: str = setting("info", choices=LOG_LEVELS)  # the lowest level written


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
    elif getattr(typ, "__origin__", None) is dict:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # not JSON: refused below as not a table
                value = json.loads(value)
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: expected a table (in the environment: a JSON object), "
                          f"got {value!r}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _scalar(text: str) -> Any:
    """A ``--set`` value inside a table: a TOML literal (``5``, ``true``) or else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _sections(cls: type[Any]) -> dict[str, type[Any]]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _fields(section_cls: type[Any]) -> dict[str, Any]:
    """Setting name -> type, in declaration order."""
    hints = get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(chosen: dict[str, dict[str, Any]], defaults: Any, table: str, key: str, value: Any,
           where: str) -> None:
    """Check ``table.key = value`` and note it in ``chosen`` (table -> key -> value)."""
    sections = _sections(type(defaults))
    if table not in sections:
        raise ConfigError(f"{where}: unknown table [{table}]; known: {', '.join(sections)}")
    section = getattr(defaults, table)
    fields = _fields(type(section))
    key, dot, entry = key.partition(".")
    if key not in fields:
        raise ConfigError(f"{where}: unknown setting {table}.{key}; known in [{table}]: "
                          f"{', '.join(fields)}")
    if dot:
        if getattr(fields[key], "__origin__", None) is not dict:
            raise ConfigError(f"{where}: {table}.{key} is not a table; "
                              f"use {table}.{key}=VALUE")
        so_far = chosen.get(table, {}).get(key, getattr(section, key))
        value = {**so_far, entry: _scalar(value) if isinstance(value, str) else value}
    else:
        value = _coerce(value, fields[key], where)
    problem = rule_of(type(section), key).problem(value)
    if problem:
        raise ConfigError(f"{where}: {table}.{key} {problem}, not {_shown(value)}")
    chosen.setdefault(table, {})[key] = value


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


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
    ``cls`` does not have: a tool that reads a subset of a shared config file uses it.
    Each section's ``check()`` (rules across its settings) runs once all are applied.
    The settings come back frozen (see :func:`amended`)."""
    defaults: Any = cls()
    chosen: dict[str, dict[str, Any]] = {}  # table -> key -> value, as they are applied
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
                _apply(chosen, defaults, table, key, value, f"{path}: {table}.{key}")
    env = os.environ if env is None else env
    for table, section_cls in _sections(cls).items():
        for key in _fields(section_cls):
            var = f"{ENV_PREFIX}{table}_{key}".upper()
            if var in env:
                _apply(chosen, defaults, table, key, env[var], f"environment {var}")
    for item in overrides:
        name, sep, value = item.partition("=")
        table, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        if only_known_tables and table not in known:
            continue
        _apply(chosen, defaults, table, key, value.strip(), f"--set {item}")
    settings: T = amended(defaults, **chosen)
    for table in _sections(cls):
        check = getattr(getattr(settings, table), "check", None)
        problem = check() if callable(check) else None
        if problem:
            raise ConfigError(f"settings: {problem}")
    return settings


def amended(settings: T, /, **tables: Mapping[str, Any]) -> T:
    """A copy of the (frozen) ``settings`` with some values of some tables replaced:
    ``amended(s, kafka={"bootstrap": "memory://x"}, topics={"partitions": 2})``."""
    current: Any = settings
    changed = {table: dataclasses.replace(getattr(current, table), **values)
               for table, values in tables.items()}
    copy: T = dataclasses.replace(current, **changed)
    return copy


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def to_toml(settings: Any, *, masked: bool = False) -> str:
    """``settings`` (a dataclass of section dataclasses) as a TOML file ``load_config`` reads
    back to the same values: how a tool hands its resolved settings to processes it starts.
    ``masked`` shows each secret that is set as ``"***"`` (what ``adstream config`` prints)."""
    lines = []
    for table, section_cls in _sections(type(settings)).items():
        lines.append(f"[{table}]")
        section = getattr(settings, table)
        for key in _fields(section_cls):
            value = getattr(section, key)
            if masked and value and rule_of(section_cls, key).secret:
                value = "***"
            lines.append(f"{key} = {_toml_value(value)}")
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


def reference(cls: type[Any]) -> list[tuple[str, str, str, str, str]]:
    """(setting, default, environment variable, allowed values, description) of each."""
    rows = []
    defaults = cls()
    for table, section_cls in _sections(cls).items():
        section = getattr(defaults, table)
        notes = _comments(section_cls)
        for key in _fields(section_cls):
            rows.append((f"{table}.{key}", json.dumps(getattr(section, key)),
                         f"{ENV_PREFIX}{table}_{key}".upper(),
                         rule_of(section_cls, key).describe(), notes.get(key, "")))
    return rows


def reference_markdown(cls: type[Any]) -> str:
    lines = ["| setting | default | environment | allowed | what |", "|---|---|---|---|---|"]
    lines += [f"| `{name}` | `{default}` | `{env}` | {allowed} | {what} |"
              for name, default, env, allowed, what in reference(cls)]
    return "\n".join(lines)
