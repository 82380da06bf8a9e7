"""Raw aiokafka client options from ``[kafka.consumer_options]`` and its two siblings.

An option is accepted when the aiokafka class's ``__init__`` takes it (read from its
signature, so a newer aiokafka's options work without a change here) and adstream does not
set it itself for a reason: the connection and security settings have their own
``kafka.*`` names, and the options that carry the delivery guarantee are not for override.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

KINDS = ("consumer", "producer", "admin")

# option -> what to use instead / why adstream sets it
RESERVED: dict[str, str] = {
    "bootstrap_servers": "use kafka.bootstrap",
    "client_id": "use kafka.client_id",
    "security_protocol": "use kafka.security_protocol",
    "sasl_mechanism": "use kafka.sasl_mechanism",
    "sasl_plain_username": "use kafka.sasl_username",
    "sasl_plain_password": "use kafka.sasl_password or kafka.sasl_password_file",
    "ssl_context": "use kafka.ssl_ca_file, ssl_cert_file, ssl_key_file, ssl_check_hostname",
    "loop": "adstream runs the clients on its own event loop",
    "group_id": "adstream names groups kafka.group_prefix-ROLE",
    "enable_auto_commit": "adstream commits its own watermarks (at-least-once)",
    "isolation_level": "set by actor.delivery",
    "transactional_id": "set by actor.delivery",
    "acks": "adstream produces with acks=all (nothing acknowledged is lost)",
    "enable_idempotence": "adstream produces idempotently (no reordering on retries)",
    "key_serializer": "adstream sends bytes",
    "value_serializer": "adstream sends bytes",
    "key_deserializer": "adstream reads bytes",
    "value_deserializer": "adstream reads bytes",
}


@cache
def accepted(kind: str) -> frozenset[str]:
    """Keyword arguments the aiokafka ``kind`` client's constructor takes."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    cls = {"consumer": AIOKafkaConsumer, "producer": AIOKafkaProducer,
           "admin": AIOKafkaAdminClient}[kind]
    params = inspect.signature(cls.__init__).parameters.values()
    return frozenset(p.name for p in params if p.name != "self"
                     and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def problem(kind: str, options: Any) -> str | None:
    """What is wrong with ``options`` for the ``kind`` client (a phrase), or None."""
    if not isinstance(options, dict):
        return "must be a table of aiokafka options"
    names = accepted(kind)
    for name, value in options.items():
        if name in RESERVED:
            return f"may not set {name} ({RESERVED[name]})"
        if name not in names:
            usable = ", ".join(sorted(names - RESERVED.keys()))
            return f"has {name!r}, which aiokafka's {kind} does not take (it takes: {usable})"
        if isinstance(value, dict):
            return f"has {name} = a table; aiokafka options are plain values"
    return None
