import asyncio
import threading
import time

import numpy as np
import pytest

from pipeline.batcher import DynamicBatcher


def _rowsum(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=1)


async def _with(batcher: DynamicBatcher, coro):
    task = asyncio.create_task(batcher.run())
    try:
        return await coro
    finally:
        batcher.close()
        await task


async def test_rows_of_many_submissions_form_one_batch_and_come_back_in_place() -> None:
    b = DynamicBatcher([_rowsum], max_rows=1000, max_wait_ms=20)
    res = await _with(b, asyncio.gather(*[b.submit(np.full((10, 2), i)) for i in range(30)]))
    assert [r.tolist() for r in res] == [[2 * i] * 10 for i in range(30)]
    assert b.stats.batches == 1 and b.stats.sizes == [300]


async def test_a_submission_is_never_split_and_batches_respect_max_rows() -> None:
    b = DynamicBatcher([_rowsum], max_rows=100, max_wait_ms=5)
    res = await _with(b, asyncio.gather(*[b.submit(np.ones((30, 1)) * i) for i in range(10)]))
    assert all(len(r) == 30 and (r == i).all() for i, r in enumerate(res))
    assert max(b.stats.sizes) <= 100 and all(s % 30 == 0 for s in b.stats.sizes)
    with pytest.raises(ValueError, match="exceed max_rows"):
        await b.submit(np.ones((101, 1)))


async def test_a_near_deadline_flushes_before_max_wait() -> None:
    b = DynamicBatcher([_rowsum], max_rows=1000, max_wait_ms=2000, deadline_margin_ms=5)
    start = time.monotonic()
    await _with(b, b.submit(np.ones((1, 1)), deadline=time.monotonic() + 0.05))
    assert time.monotonic() - start < 1.0


async def test_batches_grow_while_every_instance_is_busy() -> None:
    gate = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return x.sum(axis=1)

    b = DynamicBatcher([slow], max_rows=10_000, max_wait_ms=0)

    async def go():
        first = asyncio.create_task(b.submit(np.ones((1, 1))))
        await asyncio.sleep(0.05)  # the only instance is now busy with the first row
        rest = [asyncio.create_task(b.submit(np.ones((1, 1)))) for _ in range(50)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)

    await _with(b, go())
    assert b.stats.sizes == [1, 50]


async def test_several_instances_run_concurrently() -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    def model(x: np.ndarray) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return x[:, 0]

    b = DynamicBatcher([model] * 3, max_rows=1, max_wait_ms=0)
    await _with(b, asyncio.gather(*[b.submit(np.ones((1, 1))) for _ in range(6)]))
    assert peak == 3


async def test_a_failing_model_fails_only_its_batch() -> None:
    calls = 0

    def flaky(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model exploded")
        return x[:, 0]

    b = DynamicBatcher([flaky], max_rows=1, max_wait_ms=0)

    async def go():
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit(np.ones((1, 1)))
        return await b.submit(np.full((1, 1), 4.0))

    assert (await _with(b, go())).tolist() == [4.0]


async def test_the_queue_is_bounded_in_rows() -> None:
    gate = threading.Event()
    b = DynamicBatcher([lambda x: (gate.wait(5), x[:, 0])[1]], max_rows=10, max_wait_ms=0,
                       max_queue_rows=20)

    async def go():
        tasks = [asyncio.create_task(b.submit(np.ones((10, 1)))) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert b.queued_rows <= 20
        gate.set()
        await asyncio.gather(*tasks)

    await _with(b, go())


async def test_higher_priority_waits_less_under_overload() -> None:
    gate = threading.Event()
    order: list[float] = []

    def model(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        order.extend(x[:, 0].tolist())
        return x[:, 0]

    b = DynamicBatcher([model], max_rows=2, max_wait_ms=0)

    async def go():
        busy = asyncio.create_task(b.submit(np.full((1, 1), -1.0)))
        await asyncio.sleep(0.05)  # the only instance is busy: the rest queue up
        low = [asyncio.create_task(b.submit(np.full((1, 1), float(i)))) for i in range(4)]
        await asyncio.sleep(0.01)
        high = [asyncio.create_task(b.submit(np.full((1, 1), 10.0 + i), priority=5))
                for i in range(2)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(busy, *low, *high)

    await _with(b, go())
    assert order == [-1.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]
