"""CuPy backend on a real GPU: parity with onnxruntime CPU, sharing, backpressure, CUDA graphs.

The checks live in ``loadtest.gpu_selftest`` so that ``scripts/gpu-check`` runs the
same code where pytest is not installed. Without CuPy or a CUDA device every test here is
skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.scoring.backends import cuda_available
from workers.scoring.repository import ModelSpec

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _require_cuda() -> Iterator[None]:
    ok, reason = cuda_available()
    if not ok:
        pytest.skip(f"GPU tests need CuPy and a CUDA device: {reason}")
    yield


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    from loadtest.gpu_selftest import build_spec

    return build_spec(Path(tmp_path_factory.mktemp("models")))


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["plain", "graphs"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parity_with_onnxruntime_cpu(spec: ModelSpec, dtype: str, cuda_graphs: bool) -> None:
    from loadtest.gpu_selftest import check_parity

    check_parity(spec, dtype, cuda_graphs=cuda_graphs)


def test_cuda_graphs_are_captured(spec: ModelSpec) -> None:
    from loadtest.gpu_selftest import check_cuda_graphs_captured

    check_cuda_graphs_captured(spec)


def test_out_of_range_ids_are_clamped(spec: ModelSpec) -> None:
    from loadtest.gpu_selftest import check_out_of_range_ids

    check_out_of_range_ids(spec)


def test_four_instances_share_pool_and_weights(spec: ModelSpec) -> None:
    from loadtest.gpu_selftest import check_sharing

    check_sharing(spec)


def test_batch_waits_for_memory_then_succeeds(spec: ModelSpec) -> None:
    from loadtest.gpu_selftest import check_wait_then_succeed

    check_wait_then_succeed(spec)
