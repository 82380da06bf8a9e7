"""Builds the DLRM-style reference CTR model (ONNX) and its repository config.

The field names and bucket counts below are the contract with the feature actor: column ``i``
of the ``sparse`` input holds an id in ``[0, SPARSE_FIELDS[i][1])``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
MAX_BATCH_ROWS = 8192
PREFERRED_BATCH_ROWS = (256, 1024, 4096, 8192)
FINAL_BIAS = -2.5
RELU_GAIN = 2.0**0.5  # torch.nn.init.calculate_gain("relu")
OUTPUT_GAIN = 4.0  # spreads the logits (std about 0.6) so CTRs range from about 1% to 20%

SPARSE_FIELDS: tuple[tuple[str, int], ...] = (
    ("user_id", 50000),
    ("user_age_bucket", 16),
    ("user_gender", 4),
    ("user_city", 2000),
    ("user_segment", 64),
    ("device_type", 8),
    ("os", 16),
    ("app_id", 5000),
    ("site_id", 5000),
    ("page_category", 256),
    ("slot_id", 512),
    ("hour_of_day", 24),
    ("day_of_week", 7),
    ("country", 256),
    ("ad_id", 50000),
    ("advertiser_id", 5000),
    ("campaign_id", 10000),
    ("creative_id", 20000),
    ("ad_category", 512),
    ("creative_format", 16),
    ("landing_domain", 5000),
    ("user_id_x_ad_category", 20000),
    ("user_city_x_advertiser_id", 20000),
    ("device_type_x_creative_format", 128),
    ("hour_of_day_x_ad_category", 4096),
    ("user_segment_x_campaign_id", 20000),
)

DENSE_FIELDS: tuple[str, ...] = (
    "user_ctr_7d",
    "user_impressions_7d",
    "user_clicks_7d",
    "user_tenure_days",
    "page_position",
    "session_depth",
    "bid",
    "ad_ctr_7d",
    "ad_impressions_7d",
    "ad_quality",
    "advertiser_ctr_30d",
    "creative_age_days",
    "landing_load_ms",
)

BOTTOM_MLP = (64, 16)
TOP_MLP = (256, 128, 1)


def _xavier(rng: np.random.Generator, fan_in: int, fan_out: int, gain: float) -> np.ndarray:
    """Xavier-normal weights stored [out, in] (Gemm with transB=1, like a PyTorch export)."""
    std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    return rng.normal(0.0, std, size=(fan_out, fan_in)).astype(np.float32)


def _mlp(
    rng: np.random.Generator,
    prefix: str,
    x: str,
    width_in: int,
    widths: Sequence[int],
    last_act: str,
    final_bias: float | None = None,
    output: str | None = None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Gemm + activation layers; ReLU between layers, ``last_act`` after the last one.

    The last activation's output is named ``output`` when given.
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        gain = OUTPUT_GAIN if last and final_bias is not None else RELU_GAIN
        w = _xavier(rng, width_in, width, gain)
        b = rng.normal(0.0, 0.01, size=width).astype(np.float32)
        if last and final_bias is not None:
            b[:] = final_bias
        w_name, b_name = f"{prefix}_fc{i}_weight", f"{prefix}_fc{i}_bias"
        inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)]
        gemm_out = f"{prefix}_fc{i}"
        nodes.append(
            helper.make_node("Gemm", [x, w_name, b_name], [gemm_out], name=gemm_out, transB=1)
        )
        act = last_act if last else "Relu"
        x = output if last and output else f"{gemm_out}_{act.lower()}"
        nodes.append(helper.make_node(act, [gemm_out], [x], name=x))
        width_in = width
    return nodes, inits, x


def build_model_proto(seed: int = 0, embedding_dim: int = 16) -> onnx.ModelProto:
    """Returns the reference model for ``seed`` (same seed, same weights)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    embeddings: list[str] = []
    for col, (field, buckets) in enumerate(SPARSE_FIELDS):
        table = rng.normal(0.0, 0.05, size=(buckets, embedding_dim)).astype(np.float32)
        table_name, col_name = f"emb_{field}", f"col_{col}"
        inits.append(numpy_helper.from_array(table, table_name))
        inits.append(numpy_helper.from_array(np.array(col, dtype=np.int64), col_name))
        ids, emb = f"ids_{field}", f"emb_out_{field}"
        nodes.append(helper.make_node("Gather", ["sparse", col_name], [ids], name=ids, axis=1))
        nodes.append(helper.make_node("Gather", [table_name, ids], [emb], name=emb, axis=0))
        embeddings.append(emb)

    bottom_nodes, bottom_inits, bottom_out = _mlp(
        rng, "bottom", "dense", len(DENSE_FIELDS), BOTTOM_MLP, "Relu"
    )
    concat_width = BOTTOM_MLP[-1] + embedding_dim * len(SPARSE_FIELDS)
    concat = helper.make_node(
        "Concat", [bottom_out, *embeddings], ["interaction"], name="interaction", axis=1
    )
    top_nodes, top_inits, _ = _mlp(
        rng,
        "top",
        "interaction",
        concat_width,
        TOP_MLP,
        "Sigmoid",
        final_bias=FINAL_BIAS,
        output="ctr",
    )
    nodes += [*bottom_nodes, concat, *top_nodes]
    inits += bottom_inits + top_inits

    graph = helper.make_graph(
        nodes,
        "adstream_ctr_reference",
        inputs=[
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", len(DENSE_FIELDS)]),
            helper.make_tensor_value_info("sparse", TensorProto.INT64, ["N", len(SPARSE_FIELDS)]),
        ],
        outputs=[helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="adstream.model_build",
        doc_string=f"DLRM-style reference CTR model, seed={seed}, embedding_dim={embedding_dim}",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def config_toml(name: str, embedding_dim: int = 16) -> str:
    """The ``config.toml`` text describing the reference model."""
    sparse = ", ".join(f'"{f}"' for f, _ in SPARSE_FIELDS)
    buckets = ", ".join(str(b) for _, b in SPARSE_FIELDS)
    dense = ", ".join(f'"{f}"' for f in DENSE_FIELDS)
    preferred = ", ".join(str(r) for r in PREFERRED_BATCH_ROWS)
    return f"""# adstream model repository config (written by workers.scoring.reference_model)
# reference DLRM-style CTR model, embedding_dim = {embedding_dim}
name = "{name}"
backend = "onnxruntime"
max_batch_rows = {MAX_BATCH_ROWS}

[inputs.dense]
dtype = "float32"
dims = [-1, {len(DENSE_FIELDS)}]

[inputs.sparse]
dtype = "int64"
dims = [-1, {len(SPARSE_FIELDS)}]

[outputs.ctr]
dtype = "float32"
dims = [-1, 1]

[features]
sparse = [{sparse}]
buckets = [{buckets}]
dense = [{dense}]

[batching]
max_batch_rows = {MAX_BATCH_ROWS}
max_wait_ms = 2.0
preferred_batch_rows = [{preferred}]

[instances]
count = 1
intra_op_threads = 1
"""


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_reference_model(
    repo_dir: Path,
    name: str = "ctr",
    version: int = 1,
    seed: int = 0,
    embedding_dim: int = 16,
) -> Path:
    """Writes ``repo_dir/<name>/<version>/model.onnx`` and ``repo_dir/<name>/config.toml``.

    Returns the model path. The bytes are identical for the same arguments.
    """
    if version < 1:
        raise ValueError(f"model version must be >= 1, got {version}")
    model_dir = Path(repo_dir) / name / str(version)
    model_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_dir / "model.onnx"
    model = build_model_proto(seed=seed, embedding_dim=embedding_dim)
    _write_atomic(model_path, model.SerializeToString())
    _write_atomic(model_dir.parent / "config.toml", config_toml(name, embedding_dim).encode())
    return model_path
