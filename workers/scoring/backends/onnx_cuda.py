"""onnxruntime on the GPU: the CUDA execution provider with IOBinding on CuPy buffers.

NOT EXERCISED: no machine with ``onnxruntime-gpu`` was available while this was written
(the GPU machine had the CPU build of onnxruntime), so this path has run only up to the
point where it reports the CUDA provider missing. It is offered as ``backend =
"onnxruntime-cuda"`` and refuses to start, with the reason, where the provider is absent.

Design: each instance owns a CuPy stream and passes it to onnxruntime as
``user_compute_stream``, so the host-to-device copies, the model and the device-to-host
copy are ordered on one stream; the stream is synchronized before ``run_with_iobinding``
reads the inputs and before the scores are read back (onnxruntime does not wait for work
queued by others on a user stream: microsoft/onnxruntime#26609). Inputs and outputs are
allocated from the process's shared CuPy pool; sessions share one onnxruntime CUDA arena
registered once per process (``create_and_register_allocator_v2`` +
``session.use_env_allocators``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnxruntime as ort

from workers.scoring.backends.base import BackendUnavailableError, check_batch
from workers.scoring.backends.onnx_cpu import session_options
from workers.scoring.inputs import InputBinding
from workers.scoring.repository import ModelSpec

PROVIDER = "CUDAExecutionProvider"
_arena_lock = threading.Lock()
_arena_registered = False


def cuda_provider_available() -> tuple[bool, str]:
    providers = ort.get_available_providers()
    if PROVIDER not in providers:
        return False, (f"this onnxruntime ({ort.__version__}) has no {PROVIDER} (it offers "
                       f"{', '.join(providers)}); install onnxruntime-gpu in place of "
                       "onnxruntime")
    return True, ""


def _register_shared_arena(device_id: int) -> bool:
    """One CUDA arena for every session of the process, when this onnxruntime supports it."""
    global _arena_registered
    with _arena_lock:
        if _arena_registered:
            return True
        register = getattr(ort, "create_and_register_allocator_v2", None)
        if register is None:
            return False
        mem = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, device_id,
                                ort.OrtMemType.DEFAULT)
        arena = ort.OrtArenaCfg({"arena_extend_strategy": 1})  # kSameAsRequested
        register(PROVIDER, mem, {"device_id": str(device_id)}, arena)
        _arena_registered = True
        return True


class OnnxCudaBackend:
    """Scores on the GPU through onnxruntime's CUDA provider (one session per instance)."""

    name = "onnxruntime-cuda"

    def __init__(self, spec: ModelSpec, *, device_id: int = 0) -> None:
        ok, reason = cuda_provider_available()
        if not ok:
            raise BackendUnavailableError(f"backend 'onnxruntime-cuda': {reason}")
        import cupy

        from workers.scoring.backends.cupy_pool import configure_pools

        configure_pools()
        self._cupy = cupy
        self.spec = spec
        self.device_id = device_id
        self.stream = cupy.cuda.Stream(non_blocking=True)
        options = session_options(1)
        if _register_shared_arena(device_id):
            options.add_session_config_entry("session.use_env_allocators", "1")
        provider_options = {"device_id": str(device_id),
                            "user_compute_stream": str(self.stream.ptr),
                            "do_copy_in_default_stream": "0"}
        self._session = ort.InferenceSession(str(spec.path), sess_options=options,
                                             providers=[(PROVIDER, provider_options)])
        if PROVIDER not in self._session.get_providers():
            raise BackendUnavailableError(
                f"onnxruntime did not enable {PROVIDER} for {spec.path} "
                f"(session providers: {self._session.get_providers()})")
        self._n_dense = len(spec.config.dense_features)
        self._n_sparse = len(spec.config.sparse_features)
        self._output = spec.config.output_name
        self._binding = InputBinding(spec.config)

    def _bind(self, io: Any, name: str, arr: Any, output: bool = False) -> None:
        args = ("cuda", self.device_id, arr.dtype.type, tuple(arr.shape), arr.data.ptr)
        if output:
            io.bind_output(name, *args)
        else:
            io.bind_input(name, *args)

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        n = check_batch(dense, sparse, self._n_dense, self._n_sparse)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        cp = self._cupy
        with self.stream:
            d_inputs = {k: cp.asarray(v) for k, v in self._binding.feeds(dense, sparse).items()}
            d_out = cp.empty((n, 1), dtype=cp.float32)
        io = self._session.io_binding()
        for name, arr in d_inputs.items():
            self._bind(io, name, arr)
        self._bind(io, self._output, d_out, output=True)
        self.stream.synchronize()  # the inputs are on the device before onnxruntime reads them
        self._session.run_with_iobinding(io)
        self.stream.synchronize()  # the model has written the output
        return np.asarray(d_out.get(stream=self.stream), dtype=np.float32).reshape(n)

    def close(self) -> None:
        self._session = None
