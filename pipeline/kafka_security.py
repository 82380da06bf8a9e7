"""TLS and SASL for every Kafka client: settings -> aiokafka's security arguments.

Built once from ``[kafka]`` (the password read from its file here, the TLS context made
with ``aiokafka.helpers.create_ssl_context``) and shared by consumers, producers and admin
clients. The password never appears in a repr, a log line or ``adstream config``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import ConfigError

if TYPE_CHECKING:
    from pipeline.config import KafkaSection


class SecurityError(ConfigError):
    """TLS material that cannot be used; the message names the setting and the file."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def client_kwargs(self) -> dict[str, Any]:
        """The arguments every aiokafka client (and ``aiokafka.conn.create_conn``) takes."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl:
            kwargs.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password)
        return kwargs

    def describe(self) -> str:
        """For messages: ``SASL_SSL, SCRAM-SHA-512 as user 'alice'`` (never the password)."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol}, {self.mechanism} as user {self.username!r}"


def read_password_file(path: str) -> str:
    """The first line of ``path`` (a mounted secret usually ends with a newline)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SecurityError(f"kafka.sasl_password_file: {path}: {e.strerror or e}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise SecurityError(f"kafka.sasl_password_file: {path}: the file is empty")
    return lines[0]


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "",
                key_password: str = "", check_hostname: bool = True) -> ssl.SSLContext:
    """A client TLS context: verifies the broker against ``ca_file`` (else the system's
    CAs), presents ``cert_file``/``key_file`` when given."""
    from aiokafka.helpers import create_ssl_context

    try:
        ctx: ssl.SSLContext = create_ssl_context(cafile=ca_file or None, certfile=cert_file or None,
                                 keyfile=key_file or None, password=key_password or None)
    except FileNotFoundError as e:
        raise SecurityError(f"TLS file {e.filename}: no such file") from None
    except ssl.SSLError as e:
        which = "kafka.ssl_ca_file" if "verify" in str(e).lower() or not cert_file else \
            "kafka.ssl_cert_file / kafka.ssl_key_file"
        raise SecurityError(f"{which}: cannot load the TLS material ({e.reason or e})") from None
    if ca_file == "" and not ctx.get_ca_certs():
        ctx.load_default_certs()
    ctx.check_hostname = check_hostname
    return ctx


def security_from(section: KafkaSection) -> KafkaSecurity:
    """The security of ``section`` (settings already checked by ``load_config``)."""
    password = section.sasl_password
    if section.sasl_password_file:
        password = read_password_file(section.sasl_password_file)
    context = None
    if section.security_protocol in ("SSL", "SASL_SSL"):
        context = tls_context(section.ssl_ca_file, section.ssl_cert_file, section.ssl_key_file,
                              section.ssl_key_password, section.ssl_check_hostname)
    return KafkaSecurity(section.security_protocol, section.sasl_mechanism,
                         section.sasl_username, password, context)
