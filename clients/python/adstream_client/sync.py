"""The blocking client: an :class:`AsyncClient` on its own event-loop thread, callable from
any number of threads at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, Self, TypeVar

from adstream_client.aio import AsyncClient, Request
from adstream_client.errors import ClientClosed
from schemas.messages import ScoreResult

T = TypeVar("T")


class Client:
    """``with Client("127.0.0.1:9092") as c: result = c.score(req, timeout=2)``.

    Takes the same arguments as :class:`AsyncClient`. Every call is safe from several
    threads: they share one connection, one reply topic and one reader.
    """

    def __init__(self, bootstrap: str | None = None, **options: Any) -> None:
        self._async = AsyncClient(bootstrap, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # open and close, not the calls

    @property
    def reply_topic(self) -> str:
        return self._async.reply_topic

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="adstream-client",
                                      daemon=True)
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._async.open(), loop).result()
            except BaseException:
                _stop(loop, thread)
                raise
            self._loop, self._thread = loop, thread

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._async.close(), loop).result()
            finally:
                self._loop = self._thread = None
                _stop(loop, thread)

    def score(self, request: Request, timeout: float | None = None, *,
              trace_id: str | None = None) -> ScoreResult:
        """Like :meth:`AsyncClient.score`, blocking this thread until it answers or raises."""
        return self._call(self._async.score(request, timeout, trace_id=trace_id))

    def score_many(self, requests: Iterable[Request], timeout: float | None = None, *,
                   return_exceptions: bool = False) -> list[Any]:
        return self._call(self._async.score_many(list(requests), timeout,
                                                 return_exceptions=return_exceptions))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise ClientClosed("the client is not open: use `with Client(...)` or call open()")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
