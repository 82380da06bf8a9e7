"""The scoring backends' names (importable without loading any backend or onnx)."""

BACKENDS = ("onnxruntime", "cupy", "onnxruntime-cuda")
