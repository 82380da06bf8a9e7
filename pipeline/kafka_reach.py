"""Whether a Kafka broker answers, and if not why, in one line.

Before a client starts, :func:`reach` opens one connection to a bootstrap broker the way
the client would (TLS, SASL login) with ``aiokafka.conn.create_conn``. A broker that is
not there yet is waited for up to ``connect_timeout_s`` with one log line every few
seconds; a cause that waiting cannot fix (a wrong password or mechanism, an untrusted
certificate, TLS against a plaintext port or the reverse) ends the wait at once. Either way
the caller gets :class:`KafkaUnavailable`, whose message names the broker and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

if TYPE_CHECKING:
    from pipeline.kafka_clients import KafkaOptions

C = TypeVar("C")
log = structlog.get_logger("adstream.kafka")
LOG_EVERY_S = 5.0
RETRY_EVERY_S = 1.0


class KafkaUnavailable(RuntimeError):
    """No broker could be used; ``str()`` is one line naming the broker and the cause."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def brokers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` -> [(host, port)] (a missing port is Kafka's 9092)."""
    out = []
    for item in bootstrap.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), "9092"
        out.append((host.strip("[]") or "127.0.0.1", int(port) if port.isdigit() else 9092))
    return out


def _text(e: BaseException) -> str:
    return str(e) or type(e).__name__


def diagnose(e: BaseException, host: str, port: int, opts: KafkaOptions,
             speaks_tls: bool | None = None, mechanisms: list[str] | None = None
             ) -> KafkaUnavailable:
    """The one-line cause of connection error ``e``; ``speaks_tls``: whether the port
    answered a TLS handshake, ``mechanisms``: the SASL mechanisms the broker enables
    (None: not asked)."""
    from aiokafka import errors

    at = f"{host}:{port}"
    sec = opts.security
    if isinstance(e, ssl.SSLCertVerificationError):
        why = e.verify_message or _text(e)
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            fix = ("connect by a name the certificate holds, or set "
                   "kafka.ssl_check_hostname=false")
        else:
            fix = "set kafka.ssl_ca_file to the CA certificate that signed it"
        return KafkaUnavailable(f"the TLS certificate of the Kafka broker at {at} is not "
                                f"trusted ({why}); {fix}", retriable=False)
    if isinstance(e, ssl.SSLError):
        return KafkaUnavailable(
            f"TLS with the Kafka broker at {at} failed ({e.reason or _text(e)}); does that "
            f"listener speak TLS? kafka.security_protocol is {sec.protocol}", retriable=False)
    if speaks_tls and not sec.tls:
        want = "SASL_SSL" if sec.sasl else "SSL or SASL_SSL"
        return KafkaUnavailable(
            f"the Kafka broker at {at} expects TLS but kafka.security_protocol is "
            f"{sec.protocol}; set it to {want}", retriable=False)
    if speaks_tls is False and sec.tls and isinstance(e, ConnectionError) and not isinstance(
            e, ConnectionRefusedError):
        return KafkaUnavailable(
            f"the Kafka broker at {at} does not speak TLS on that port but "
            f"kafka.security_protocol is {sec.protocol}; use the port of its TLS listener "
            f"(or PLAINTEXT / SASL_PLAINTEXT)", retriable=False)
    if isinstance(e, errors.UnsupportedSaslMechanismError):
        enabled = ", ".join(mechanisms) if mechanisms else "none that was told"
        return KafkaUnavailable(
            f"the Kafka broker at {at} does not enable SASL mechanism {sec.mechanism} "
            f"(it enables {enabled}); set kafka.sasl_mechanism", retriable=False)
    if isinstance(e, errors.KafkaError) and sec.sasl and (
            "auth" in type(e).__name__.lower() or "authentication" in _text(e).lower()):
        return KafkaUnavailable(
            f"the Kafka broker at {at} refused the SASL login of user {sec.username!r} with "
            f"{sec.mechanism} ({_text(e)}); check kafka.sasl_username and the password",
            retriable=False)
    if isinstance(e, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(e, ConnectionResetError):
        why = "connection reset"
    elif isinstance(e, TimeoutError):
        why = f"no answer within {opts.request_timeout_ms / 1000:g} s"
    elif isinstance(e, socket.gaierror):
        why = f"cannot resolve {host}: {e.strerror}"
    elif isinstance(e, OSError) and e.strerror:
        why = e.strerror.lower()
    else:
        why = _text(e)
    return KafkaUnavailable(f"no Kafka broker answers at {at} ({why})", retriable=True)


async def _speaks_tls(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def probe(host: str, port: int, opts: KafkaOptions) -> None:
    """Connect and log in to one broker as a client would; raise :class:`KafkaUnavailable`."""
    from aiokafka import errors
    from aiokafka.conn import create_conn

    timeout_ms = min(opts.request_timeout_ms, 10_000)
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, client_id=opts.client_id, request_timeout_ms=timeout_ms,
                        **opts.security.client_kwargs()),
            timeout_ms / 1000 + 1)
    except (OSError, TimeoutError, errors.KafkaError) as e:
        tls = None
        if isinstance(e, errors.KafkaConnectionError | TimeoutError) or (
                isinstance(e, OSError) and not isinstance(e, ConnectionRefusedError | ssl.SSLError)):
            tls = await _speaks_tls(host, port)  # a port that closed on us: TLS or not?
        mechanisms = None
        if isinstance(e, errors.UnsupportedSaslMechanismError):
            mechanisms = await _enabled_mechanisms(host, port, opts)
        raise diagnose(e, host, port, opts, tls, mechanisms) from None
    conn.close()


async def _enabled_mechanisms(host: str, port: int, opts: KafkaOptions) -> list[str] | None:
    """The SASL mechanisms the broker enables, from a SaslHandshake without logging in."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.admin import SaslHandShakeRequest

    sec = opts.security
    try:
        conn = await asyncio.wait_for(create_conn(
            host, port, client_id=opts.client_id, ssl_context=sec.ssl_context,
            security_protocol="SSL" if sec.tls else "PLAINTEXT"), 10)
    except Exception:  # only a hint for the message
        return None
    try:
        response = await asyncio.wait_for(conn.send(SaslHandShakeRequest(sec.mechanism)), 10)
        return [str(m) for m in response.enabled_mechanisms]
    except Exception:  # only a hint for the message
        return None
    finally:
        conn.close()


async def reach(bootstrap: str, opts: KafkaOptions, wait_s: float | None = None,
                what: str = "Kafka client") -> None:
    """Return once a broker of ``bootstrap`` answers; wait ``wait_s`` (default
    ``opts.connect_timeout_s``) for one, logging every few seconds, then raise the cause."""
    wait_s = opts.connect_timeout_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    next_log = time.monotonic()
    while True:
        problem: KafkaUnavailable | None = None
        for host, port in brokers(bootstrap):
            try:
                await probe(host, port, opts)
                return
            except KafkaUnavailable as e:
                if not e.retriable:
                    raise
                problem = problem or e
        assert problem is not None
        now = time.monotonic()
        if now >= deadline:
            raise problem
        if now >= next_log:
            log.warning("waiting for Kafka", client=what, problem=str(problem),
                        gives_up_in_s=round(deadline - now))
            next_log = now + LOG_EVERY_S
        await asyncio.sleep(min(RETRY_EVERY_S, max(0.0, deadline - now)))


async def started(make: Callable[[], C], bootstrap: str, opts: KafkaOptions,
                  what: str = "Kafka client") -> C:
    """Wait for a broker (:func:`reach`), then build the client with ``make()`` and start
    it. The client exists only once a broker answered, and one that failed to start is
    closed, so neither leaves an "Unclosed AIOKafka…" warning; the failure is one line."""
    from aiokafka import errors

    await reach(bootstrap, opts, what=what)
    client = make()
    try:
        await client.start()  # type: ignore[attr-defined]
    except (OSError, TimeoutError, errors.KafkaError) as e:
        await _close(client)
        host, port = brokers(bootstrap)[0]
        raise diagnose(e, host, port, opts) from None
    except BaseException:
        await _close(client)
        raise
    return client


async def _close(client: Any) -> None:
    close = getattr(client, "stop", None) or client.close
    with contextlib.suppress(Exception):
        await close()
