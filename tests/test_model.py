"""The reference model builder and the model repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from workers.scoring.reference_model import DENSE_FIELDS, SPARSE_FIELDS, build_reference_model
from workers.scoring.repository import ModelRepositoryError, list_versions, load_model


@pytest.fixture(scope="module")
def ref_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    build_reference_model(repo)
    return repo


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, len(DENSE_FIELDS)), dtype=np.float32)
    buckets = np.array([b for _, b in SPARSE_FIELDS])
    return dense, rng.integers(0, buckets, size=(n, len(buckets)), dtype=np.int64)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = build_reference_model(tmp_path / "a", seed=3)
    b = build_reference_model(tmp_path / "b", seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent.parent / "config.toml").read_text() == (
        b.parent.parent / "config.toml"
    ).read_text()


def test_different_seed_gives_different_weights(tmp_path: Path) -> None:
    a = build_reference_model(tmp_path / "a", seed=1)
    b = build_reference_model(tmp_path / "b", seed=2)
    assert a.read_bytes() != b.read_bytes()


def test_graph_follows_the_contract(ref_repo: Path) -> None:
    model = onnx.load(str(ref_repo / "ctr" / "1" / "model.onnx"))
    assert model.ir_version == 9
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["dense", "sparse"]
    assert [o.name for o in model.graph.output] == ["ctr"]
    tables = {t.name: tuple(t.dims) for t in model.graph.initializer if t.name.startswith("emb_")}
    assert tables == {f"emb_{name}": (b, 16) for name, b in SPARSE_FIELDS}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gather") == 2 * len(SPARSE_FIELDS)
    assert ops.count("Gemm") == 5 and ops.count("Concat") == 1 and ops[-1] == "Sigmoid"


def test_onnxruntime_scores_are_plausible_ctrs(ref_repo: Path) -> None:
    session = ort.InferenceSession(
        str(ref_repo / "ctr" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    dense, sparse = _rows(2000)
    (ctr,) = session.run(None, {"dense": dense, "sparse": sparse})
    assert ctr.shape == (2000, 1) and ctr.dtype == np.float32
    assert np.all((ctr > 0) & (ctr < 1))
    assert 0.01 < float(np.median(ctr)) < 0.2  # a few percent
    assert float(np.std(ctr)) > 0.005  # scores differ between rows


def test_config_round_trip(ref_repo: Path) -> None:
    spec = load_model(ref_repo, "ctr")
    c = spec.config
    assert (spec.version, spec.path) == (1, ref_repo / "ctr" / "1" / "model.onnx")
    assert c.name == "ctr" and c.backend == "onnxruntime" and c.max_batch_rows == 8192
    assert c.sparse_features == tuple(name for name, _ in SPARSE_FIELDS)
    assert c.sparse_buckets == tuple(b for _, b in SPARSE_FIELDS)
    assert c.dense_features == DENSE_FIELDS
    assert c.inputs["dense"].dims == (-1, 13) and c.inputs["sparse"].dtype == "int64"
    assert c.outputs["ctr"].dims == (-1, 1) and c.output_name == "ctr"
    assert c.preferred_batch_rows == (256, 1024, 4096, 8192) and c.max_wait_ms == 2.0
    assert (c.instance_count, c.intra_op_threads) == (1, 1)


def test_versions_and_highest_version(tmp_path: Path) -> None:
    build_reference_model(tmp_path, version=1)
    build_reference_model(tmp_path, version=3, seed=1)
    (tmp_path / "ctr" / "7").mkdir()  # no model file: not a version
    assert list_versions(tmp_path, "ctr") == [1, 3]
    assert load_model(tmp_path, "ctr").version == 3
    assert load_model(tmp_path, "ctr", 1).version == 1
    with pytest.raises(ModelRepositoryError, match=r"version 2 is missing \(present: \[1, 3\]\)"):
        load_model(tmp_path, "ctr", 2)


def _broken_config(tmp_path: Path, old: str, new: str) -> Path:
    build_reference_model(tmp_path)
    path = tmp_path / "ctr" / "config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "ctr"\n', 'name = "ctr\n', "not valid TOML"),
        ("max_batch_rows = 8192\n", "", r"'max_batch_rows' is missing"),
        ("max_batch_rows = 8192\n", 'max_batch_rows = "8192"\n', "must be an integer, got str"),
        ("buckets = [50000, ", "buckets = [", "'features.buckets' has 25 entries but"),
        ('"landing_load_ms"]', '"landing_load_ms", "extra"]', r"'inputs.dense.dims' is \[-1, 13\]"),
        ("dims = [-1, 13]", "dims = [-1, 12]", r"'inputs.dense.dims' is \[-1, 12\]"),
        ('[inputs.sparse]\ndtype = "int64"', '[inputs.sparse]\ndtype = "int32"',
         r"input 'sparse': config expects int32 \[B, 26\], graph has int64 \[B, 26\]"),
        ('[inputs.sparse]\ndtype = "int64"', '[inputs.sparse]\ndtype = "float32"',
         "an input from 'sparse' takes one of"),
        ('name = "ctr"', 'name = "other"', "'name' is 'other' but the directory is 'ctr'"),
        ("[outputs.ctr]", "[outputs.score]", "config 'outputs.score' is not a graph output"),
        ("max_wait_ms = 2.0", "max_wait_ms = -1.0", "'batching.max_wait_ms' must be >= 0"),
        (
            "[batching]\nmax_batch_rows = 8192",
            "[batching]\nmax_batch_rows = 4096",
            "disagrees with 'max_batch_rows'",
        ),
    ],
)
def test_config_errors_name_the_file_and_field(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    repo = _broken_config(tmp_path, old, new)
    with pytest.raises(ModelRepositoryError, match=message) as info:
        load_model(repo, "ctr")
    assert "ctr" in str(info.value)


def test_onnx_that_does_not_match_the_config(tmp_path: Path) -> None:
    build_reference_model(tmp_path)
    config = tmp_path / "ctr" / "config.toml"
    text = config.read_text()
    extra = '"user_id", "extra_field"'
    text = text.replace('"user_id"', extra, 1).replace("dims = [-1, 26]", "dims = [-1, 27]")
    text = text.replace("buckets = [50000", "buckets = [50000, 10")
    config.write_text(text)
    with pytest.raises(ModelRepositoryError, match=r"input 'sparse': config expects int64 \[B, 27\], graph has int64 \[B, 26\]"):
        load_model(tmp_path, "ctr")


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match="model directory is missing"):
        load_model(tmp_path, "ctr")
    (tmp_path / "ctr" / "1").mkdir(parents=True)
    with pytest.raises(ModelRepositoryError, match=r"no version directory holds a model\.onnx"):
        load_model(tmp_path, "ctr")
    build_reference_model(tmp_path)
    (tmp_path / "ctr" / "config.toml").unlink()
    with pytest.raises(ModelRepositoryError, match=r"config\.toml: config file is missing"):
        load_model(tmp_path, "ctr")
    build_reference_model(tmp_path)
    (tmp_path / "ctr" / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelRepositoryError, match="not a readable ONNX model"):
        load_model(tmp_path, "ctr")
