"""Admin routes a process serves beside /metrics: ``POST /admin/<name>`` with a JSON body.

Handlers are coroutines registered by whatever the process runs (the runtime knows no
route); the HTTP thread runs each on the event loop it was registered from and waits for
its answer. A handler's ``ValueError`` is the caller's mistake (400, its message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

AdminHandler = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


class AdminError(ValueError):
    """An admin call that cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class AdminRoutes:
    """Named admin handlers and the event loops they run on."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._routes: dict[str, tuple[AdminHandler, asyncio.AbstractEventLoop]] = {}

    def add(self, name: str, handler: AdminHandler) -> None:
        """Registers ``handler`` under ``/admin/<name>``; call from the loop it runs on."""
        self._routes[name] = (handler, asyncio.get_running_loop())

    @property
    def names(self) -> list[str]:
        return sorted(self._routes)

    def call(self, name: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Runs route ``name`` from another thread (the HTTP server's) and returns its answer."""
        if name not in self._routes:
            raise AdminError(f"no admin route {name!r}; routes: {self.names}", 404)
        handler, loop = self._routes[name]
        future = asyncio.run_coroutine_threadsafe(_run(handler, body), loop)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise AdminError(f"admin route {name!r} did not answer in {self.timeout_s:g} s",
                             504) from None
        except ValueError as e:
            raise AdminError(str(e)) from None


async def _run(handler: AdminHandler, body: Mapping[str, Any]) -> Mapping[str, Any]:
    return await handler(body)
