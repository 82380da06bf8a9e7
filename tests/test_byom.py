"""Bring your own model: inputs of any name, order and CTR dtype, mapped from the features."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from loadtest.generate import generate
from pipeline.config import ConfigError, amended
from pipeline.transport.memory import MemoryBroker
from schemas.json_form import request_from_json
from workers.aggregation.ranking import rank
from workers.client import ResultWaiter, send_requests
from workers.features.spec import FeaturePipeline
from workers.roles import ensure_topics, run_roles, transport_for
from workers.scoring.backends import create_backend
from workers.scoring.reference_model import DENSE_FIELDS, SPARSE_FIELDS
from workers.scoring.repository import ModelRepositoryError, load_model, served_versions
from workers.settings import Settings

_names = itertools.count()
SPARSE = [f for f, _ in SPARSE_FIELDS]
BUCKETS = [b for _, b in SPARSE_FIELDS]


def peer_model(ids: str = "sparse_ids", ids_type: int = TensorProto.INT64, ids_width: int = 26,
               dense: str = "dense", dense_type: int = TensorProto.FLOAT,
               dense_width: int = 13, output: str = "prob") -> onnx.ModelProto:
    """A small DLRM-like model written the way another team would: ids first, then dense,
    hashed embeddings (Mod), a summed bag, its own output name."""
    rng = np.random.default_rng(5)
    hashed, dim = 1000, 8
    np_dense = helper.tensor_dtype_to_np_dtype(dense_type)
    inits = [
        numpy_helper.from_array(np.array(hashed, np.int64), "hashed"),
        numpy_helper.from_array((np.arange(ids_width) * hashed).astype(np.int64), "offsets"),
        numpy_helper.from_array(rng.normal(0, 0.3, (ids_width * hashed, dim))
                                .astype(np.float32), "table"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (dense_width, dim)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (2 * dim, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([-1.5], np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Cast", [ids], ["ids64"], to=TensorProto.INT64),
        helper.make_node("Mod", ["ids64", "hashed"], ["ids_mod"]),
        helper.make_node("Add", ["ids_mod", "offsets"], ["rows"]),
        helper.make_node("Gather", ["table", "rows"], ["emb"], axis=0),
        helper.make_node("ReduceSum", ["emb", "axis1"], ["bag"], keepdims=0),
        helper.make_node("Cast", [dense], ["dense32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["dense32", "w1"], ["bottom"]),
        helper.make_node("Concat", ["bag", "bottom"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "w2"], ["logit0"]),
        helper.make_node("Add", ["logit0", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [output]),
    ]
    graph = helper.make_graph(
        nodes, "peer_ctr",
        inputs=[helper.make_tensor_value_info(ids, ids_type, ["B", ids_width]),
                helper.make_tensor_value_info(dense, dense_type, ["B", dense_width])],
        outputs=[helper.make_tensor_value_info(output, TensorProto.FLOAT, ["B", 1])],
        initializer=inits)
    assert np_dense is not None
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _list(xs: list[str] | list[int]) -> str:
    return ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in xs)


PEER_CONFIG = f"""
name = "peer"
max_batch_size = 2048                     # Triton's name for max_batch_rows

[inputs.sparse_ids]
from = "sparse"
dtype = "int64"
dims = [-1, 26]

[inputs.dense]
from = "dense"
dtype = "float32"
dims = [-1, 13]

[outputs.prob]
dtype = "float32"
dims = [-1, 1]

[features]
sparse = [{_list(SPARSE)}]
buckets = [{_list(BUCKETS)}]
dense = [{_list(list(DENSE_FIELDS))}]

[dynamic_batching]
preferred_batch_size = [256, 1024]
max_queue_delay_microseconds = 1500

[instance_group]
count = 2
"""


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str,
                version: int = 1) -> Path:
    (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
    path = repo / name / str(version) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    (repo / name / "config.toml").write_text(config)
    return path


def test_triton_names_map_onto_the_batcher_settings(tmp_path: Path) -> None:
    write_model(tmp_path, "peer", peer_model(), PEER_CONFIG)
    c = load_model(tmp_path, "peer").config
    assert (c.max_batch_rows, c.preferred_batch_rows, c.max_wait_ms, c.instance_count) == \
        (2048, (256, 1024), 1.5, 2)
    assert c.inputs["sparse_ids"].fields == tuple(SPARSE)
    assert list(c.inputs) == ["sparse_ids", "dense"]


def test_an_input_of_another_name_needs_from(tmp_path: Path) -> None:
    write_model(tmp_path, "peer", peer_model(), PEER_CONFIG.replace('from = "sparse"\n', ""))
    with pytest.raises(ModelRepositoryError, match=r"'inputs.sparse_ids.from' is missing"):
        load_model(tmp_path, "peer")


def test_every_mismatch_with_the_graph_is_named_one_line_each(tmp_path: Path) -> None:
    model = peer_model(ids_type=TensorProto.INT32, dense_width=12)
    write_model(tmp_path, "peer", model, PEER_CONFIG)
    with pytest.raises(ModelRepositoryError) as info:
        load_model(tmp_path, "peer")
    assert isinstance(info.value, ConfigError)  # the CLI prints it as one line, no traceback
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("input 'sparse_ids': config expects int64 [B, 26], graph has "
                             "int32 [B, 26]")
    assert lines[1].endswith("input 'dense': config expects float32 [B, 13], graph has "
                             "float32 [B, 12]")


@pytest.mark.parametrize(("old", "new", "message"), [
    ('dtype = "int64"', 'dtype = "float32"',
     r"'inputs.sparse_ids.dtype' is 'float32'; an input from 'sparse' takes one of"),
    ('from = "dense"', 'from = "context"', r"'inputs.dense.from' must be one of"),
    ("max_batch_size = 2048", "max_batch_size = 2048\nmax_batch_rows = 2048",
     "name the same setting; give one"),
    ("[instance_group]", "[version_policy]\nlatest = 1\nspecific = [1]\n[instance_group]",
     "'version_policy' takes one of"),
])
def test_config_mistakes_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in PEER_CONFIG
    write_model(tmp_path, "peer", peer_model(), PEER_CONFIG.replace(old, new, 1))
    with pytest.raises(ModelRepositoryError, match=message):
        load_model(tmp_path, "peer")


def test_column_subsets_and_casts_reach_the_model_as_configured(tmp_path: Path) -> None:
    """An int32 input of 5 chosen sparse fields and a float16 input of 3 dense fields."""
    ids, cols = ["ad_id", "user_id", "hour_of_day", "os", "campaign_id"], \
        ["bid", "ad_quality", "user_ctr_7d"]
    model = peer_model(ids="ids", ids_type=TensorProto.INT32, ids_width=5, dense="x",
                       dense_type=TensorProto.FLOAT16, dense_width=3)
    config = (PEER_CONFIG
              .replace('[inputs.sparse_ids]\nfrom = "sparse"\ndtype = "int64"\ndims = [-1, 26]',
                       f'[inputs.ids]\nfrom = "sparse"\nfields = [{_list(ids)}]\n'
                       f'dtype = "int32"\ndims = [-1, 5]')
              .replace('[inputs.dense]\nfrom = "dense"\ndtype = "float32"\ndims = [-1, 13]',
                       f'[inputs.x]\nfrom = "dense"\nfields = [{_list(cols)}]\n'
                       f'dtype = "float16"\ndims = [-1, 3]'))
    path = write_model(tmp_path, "peer", model, config)
    spec = load_model(tmp_path, "peer")
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((300, 13)).astype(np.float32)
    sparse = rng.integers(0, np.asarray(BUCKETS), (300, 26)).astype(np.int64)
    got = create_backend(spec, "onnxruntime").score(dense, sparse)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"ids": sparse[:, [SPARSE.index(f) for f in ids]].astype(np.int32),
             "x": dense[:, [DENSE_FIELDS.index(f) for f in cols]].astype(np.float16)}
    np.testing.assert_array_equal(got, session.run(None, feeds)[0].reshape(-1))


def test_version_policy_picks_what_is_served(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        write_model(tmp_path, "peer", peer_model(), PEER_CONFIG, version=v)
    assert load_model(tmp_path, "peer").version == 3
    (tmp_path / "peer" / "config.toml").write_text(PEER_CONFIG + "[version_policy]\nlatest = 2\n")
    assert served_versions(tmp_path, "peer") == [2, 3]
    (tmp_path / "peer" / "config.toml").write_text(
        PEER_CONFIG + "[version_policy]\nspecific = [1, 2]\n")
    assert served_versions(tmp_path, "peer") == [1, 2]
    assert load_model(tmp_path, "peer").version == 2
    (tmp_path / "peer" / "config.toml").write_text(
        PEER_CONFIG + "[version_policy]\nspecific = [7]\n")
    with pytest.raises(ModelRepositoryError, match=r"serves none of the versions present"):
        load_model(tmp_path, "peer")


async def test_a_peer_model_served_through_the_scorer_scores_like_onnxruntime(
        tmp_path: Path) -> None:
    path = write_model(tmp_path, "peer", peer_model(), PEER_CONFIG)
    name = f"byom{next(_names)}"
    s = amended(Settings(), kafka={"bootstrap": f"memory://{name}"},
                scorer={"model_repo": str(tmp_path), "model": "peer"},
                features={"chunk_rows": 64}, topics={"partitions": 2})
    now = int(time.time() * 1000)
    reqs = [request_from_json(d, now)
            for d in generate(60, seed=3, candidates="uniform:1,200", timeout_ms=30_000)]
    transport = transport_for(s)
    try:
        await ensure_topics(s, transport)
        stop = asyncio.Event()
        roles = asyncio.create_task(run_roles(["features", "scorer", "aggregator"], s, stop,
                                              transport))
        async with ResultWaiter(transport, s.topics.results) as waiter:
            futs = {r.request_id: waiter.expect(r.request_id) for r in reqs}
            await send_requests(transport.producer(), reqs, s.topics.requests)
            await asyncio.wait(futs.values(), timeout=30)
        stop.set()
        await roles
    finally:
        MemoryBroker.drop(name)
    features = FeaturePipeline.from_spec(SPARSE, BUCKETS, list(DENSE_FIELDS))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for req in reqs:
        res = futs[req.request_id].result()
        assert res.status == "ok" and res.n_scored == req.n_candidates
        dense, sparse = features(req)
        direct = session.run(None, {"dense": dense, "sparse_ids": sparse})[0].reshape(-1)
        top = rank(req.candidates["ad_id"], req.candidates["bid"].astype(np.float32), direct,
                   req.top_k)
        np.testing.assert_array_equal(res.ad_id, req.candidates["ad_id"][top])
        np.testing.assert_allclose(res.score, direct[top], atol=1e-6, rtol=0)
