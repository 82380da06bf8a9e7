"""The HTTP endpoint of a worker process: ``/metrics``, ``/healthz``, ``/readyz`` and the
admin routes its roles register (``POST /admin/<name>``, see :mod:`pipeline.admin`).

:func:`start_server` binds ``metrics.host:metrics.port`` and answers from a daemon thread
(a scrape never waits for the event loop); :func:`keep_fresh` runs next to the actors in
their event loop, beating the liveness heartbeat and reading each group's consumer lag from
the broker every ``metrics.lag_interval_s``. What the answers say is decided by
:class:`pipeline.metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import make_wsgi_app

from pipeline.admin import AdminError, AdminRoutes
from pipeline.config import ConfigError
from pipeline.lag import LagReader, lag_reader
from pipeline.metrics import Metrics, MetricsSection
from pipeline.transport.base import Transport

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = structlog.get_logger("adstream.endpoint")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, served from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 admin: AdminRoutes | None = None) -> None:
        self.metrics = metrics
        self.admin = admin
        self.host = host
        self.requested_port = port
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        cls = _Server6 if ":" in self.host else _Server
        try:
            self._server = make_server(self.host, self.requested_port, self._app,
                                       server_class=cls, handler_class=_QuietHandler)
        except OSError as e:
            hint = ("another process (another worker on this host?) listens there; give each "
                    "process its own port (ADSTREAM_METRICS_PORT) or 0 to turn metrics off"
                    if e.errno == errno.EADDRINUSE else "check metrics.host and metrics.port")
            raise ConfigError(f"metrics.host/metrics.port: cannot serve metrics on "
                              f"{self.host}:{self.requested_port} ({e.strerror}); {hint}"
                              ) from e
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("serving metrics", url=f"http://{self.host}:{self.port}/metrics")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            ok, body = self.metrics.health()
            return _json(start_response, ok, body)
        if path == "/readyz":
            checks = self.metrics.readiness()
            ok = all(c.ok for c in checks.values())
            return _json(start_response, ok, {"ready": ok, "checks": {
                k: {"ok": c.ok, "detail": c.detail} for k, c in checks.items()}})
        if path.startswith("/admin") and self.admin is not None:
            return self._admin(path.removeprefix("/admin").strip("/"), environ, start_response)
        if path == "/":
            return _json(start_response, True, {"endpoints": ["/metrics", "/healthz", "/readyz"]})
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; try /metrics, /healthz or /readyz\n"]


    def _admin(self, name: str, environ: WSGIEnvironment, start_response: StartResponse
               ) -> list[bytes]:
        assert self.admin is not None
        if not name:
            return _json(start_response, True, {"routes": self.admin.names})
        if environ.get("REQUEST_METHOD") != "POST":
            return _json(start_response, False, {"error": "use POST"}, "405 Method Not Allowed")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(size) if size else b"{}"
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise AdminError("the body must be a JSON object")
            return _json(start_response, True, self.admin.call(name, body))
        except json.JSONDecodeError as e:
            return _json(start_response, False, {"error": f"body is not JSON: {e}"},
                         "400 Bad Request")
        except AdminError as e:
            return _json(start_response, False, {"error": str(e)}, _STATUS[e.status])


_STATUS = {400: "400 Bad Request", 404: "404 Not Found", 504: "504 Gateway Timeout"}


def _json(start_response: StartResponse, ok: bool, body: Mapping[str, Any],
          status: str = "503 Service Unavailable") -> list[bytes]:
    data = (json.dumps(body, indent=1) + "\n").encode()
    start_response("200 OK" if ok else status,
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


# ---- running it next to the actors ---------------------------------------------------------


def start_server(metrics: Metrics, section: MetricsSection,
                 admin: AdminRoutes | None = None) -> MetricsServer:
    """Bind ``metrics.host:metrics.port`` and answer from a daemon thread (the caller stops
    it); a port that cannot be bound is a :class:`ConfigError` that says why."""
    metrics.lag_interval_s = section.lag_interval_s
    metrics.stall_after_s = section.stall_after_s
    server = MetricsServer(metrics, section.host, section.port, admin)
    server.start()
    return server


async def keep_fresh(metrics: Metrics, section: MetricsSection, transport: Transport,
                     stop: asyncio.Event, done: asyncio.Event) -> None:
    """Beat the liveness heartbeat and read consumer lag until ``done`` is set.

    ``stop`` set means the actors are draining: ``/readyz`` answers 503 from then on, while
    ``/metrics`` keeps answering until the actors finished (``done``).
    """
    reader = lag_reader(transport)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_heartbeat(metrics, stop, done))
            tg.create_task(_poll_lag(metrics, reader, section.lag_interval_s, done))
    finally:
        await _reset(reader)


async def _reset(reader: LagReader) -> None:
    """Drop the reader's connections after a failure; the next read reconnects."""
    try:
        await reader.close()
    except Exception as e:  # a half-open client may fail to close; log it
        log.debug("closing the lag reader failed", error=repr(e))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _heartbeat(metrics: Metrics, stop: asyncio.Event, done: asyncio.Event) -> None:
    while not done.is_set():
        metrics.heartbeat_at = time.monotonic()
        metrics.stopping = stop.is_set()
        await _sleep_unless(done, 0.25)


async def _poll_lag(metrics: Metrics, reader: LagReader, interval_s: float,
                    done: asyncio.Event) -> None:
    while not done.is_set():
        try:
            if not await asyncio.wait_for(metrics.read_lag(reader), max(interval_s, 5.0)):
                await _reset(reader)
        except TimeoutError:
            metrics.broker_ok_at = None
            metrics.broker_error = "no answer in time"
            await _reset(reader)
        await _sleep_unless(done, interval_s)
