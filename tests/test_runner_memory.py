"""The worker process's allocator settings: freed memory goes back to the OS."""

import asyncio
import ctypes

import pytest

from pipeline import runner


def test_free_pages_are_given_back_every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            calls.append(pad)
            return 1

    monkeypatch.setattr(runner, "TRIM_EVERY_S", 0.01)
    monkeypatch.setattr(runner.ctypes, "CDLL", lambda name: Libc())

    async def main() -> None:
        runner.trim_periodically(asyncio.get_running_loop())
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert len(calls) >= 5 and set(calls) == {0}


def test_without_glibc_nothing_is_scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> ctypes.CDLL:
        raise OSError(name)

    monkeypatch.setattr(runner.ctypes, "CDLL", missing)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        runner.trim_periodically(loop)
        return len(loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(main()) == 0
    assert runner.tune_malloc() is False
