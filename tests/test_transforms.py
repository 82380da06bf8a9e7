import numpy as np
import pytest

from schemas import SchemaError, ScoreRequest
from workers.features.spec import DEFAULT_SPEC, FeatureConfigError, FeaturePipeline
from workers.features.transforms import (
    FeatureBatch,
    categorical,
    cross,
    hash_column,
    hash_scalar,
    mix64,
    numeric,
)
from workers.scoring.repository import load_model


def _batch(n: int, **cands: np.ndarray) -> FeatureBatch:
    return FeatureBatch("r", {"city": "paris", "age": 3, "ctr": 0.5},
                        {"hour": 13}, {"ad_id": np.arange(n, dtype=np.int64), **cands},
                        sparse=np.zeros((n, 4), np.int64), dense=np.zeros((n, 3), np.float32))


def test_integer_values_hash_alike_as_scalars_strings_and_columns() -> None:
    col = hash_column(np.array([5, 17, -3], dtype=np.int64))
    assert col.dtype == np.uint64
    assert [hash_scalar(5), hash_scalar("17"), hash_scalar(-3)] == col.tolist()
    assert hash_scalar(5.0) == hash_scalar(5)
    assert hash_scalar("paris") == hash_scalar("paris") != hash_scalar("london")
    assert hash_scalar(None) != hash_scalar("")


def test_mix64_is_a_bijection_on_a_sample() -> None:
    x = np.arange(100_000, dtype=np.uint64)
    assert len(np.unique(mix64(x))) == len(x)


def test_categorical_ids_stay_in_their_buckets_and_differ_per_feature() -> None:
    b = _batch(1000)
    categorical("ad_id", "candidate.ad_id", 0, 97)(b)
    categorical("ad_id_again", "candidate.ad_id", 1, 97)(b)
    categorical("city", "user.city", 2, 50)(b)
    assert b.sparse[:, 0].min() >= 0 and b.sparse[:, 0].max() < 97
    assert len(np.unique(b.sparse[:, 0])) > 80  # well spread
    assert (b.sparse[:, 0] != b.sparse[:, 1]).any()  # salted per feature
    assert len(np.unique(b.sparse[:, 2])) == 1  # a user scalar is broadcast


def test_cross_combines_hashed_features_and_needs_them_first() -> None:
    b = _batch(200, category=np.arange(200) % 4)
    with pytest.raises(ValueError, match="needs"):
        cross("city_x_cat", ["city", "cat"], 3, 1000)(b)
    categorical("city", "user.city", 0, 10)(b)
    categorical("cat", "candidate.category", 1, 10)(b)
    cross("city_x_cat", ["city", "cat"], 3, 1000)(b)
    assert len(np.unique(b.sparse[:, 3])) == 4  # one id per (city, category) pair


def test_numeric_transforms_and_defaults() -> None:
    b = _batch(3, bid=np.array([0.0, 1.0, np.e - 1], np.float32))
    numeric("bid", "candidate.bid", 0, transform="log1p")(b)
    numeric("ctr", "user.ctr", 1, transform="standardize", mean=0.25, std=0.5)(b)
    numeric("missing", "context.nope", 2, default=7.0, clip=(0.0, 5.0))(b)
    np.testing.assert_allclose(b.dense[:, 0], [0.0, np.log(2), 1.0], rtol=1e-6)
    np.testing.assert_allclose(b.dense[:, 1], 0.5)
    np.testing.assert_allclose(b.dense[:, 2], 5.0)
    b.user["ctr"] = "high"
    with pytest.raises(SchemaError) as info:
        numeric("ctr", "user.ctr", 1)(b)
    assert info.value.field == "user.ctr"


def test_bad_sources_are_refused_at_configuration_time() -> None:
    with pytest.raises(ValueError, match=r"user\.X"):
        categorical("x", "ad_id", 0, 10)
    with pytest.raises(ValueError, match="transform"):
        numeric("x", "user.a", 0, transform="sqrt")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from workers.scoring.reference_model import build_reference_model

    repo = tmp_path_factory.mktemp("models")
    build_reference_model(repo)
    return load_model(repo, "ctr")


def test_default_pipeline_fills_every_model_input(spec) -> None:
    c = spec.config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    from loadtest.generate import generate
    from schemas.json_form import request_from_json

    req = request_from_json(next(generate(1, seed=3)), 0)
    dense, sparse = pipe(req)
    assert dense.shape == (req.n_candidates, 13) and sparse.shape == (req.n_candidates, 26)
    assert np.isfinite(dense).all()
    assert ((sparse >= 0) & (sparse < np.array(c.sparse_buckets))).all()
    again = pipe(req)
    np.testing.assert_array_equal(again[1], sparse)  # deterministic


def test_pipeline_refuses_a_spec_missing_model_features(spec, tmp_path) -> None:
    bad = tmp_path / "features.toml"
    bad.write_text('[sparse.user_id]\nsource = "user.user_id"\n')
    c = spec.config
    with pytest.raises(FeatureConfigError, match="ad_id"):
        FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                  list(c.dense_features), bad)


def test_request_without_optional_fields_still_scores(spec) -> None:
    c = spec.config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    req = ScoreRequest("r", "u", {"ad_id": np.arange(3, dtype=np.int64),
                                  "bid": np.ones(3, np.float32)})
    dense, _sparse = pipe(req)
    assert dense.shape == (3, 13) and np.isfinite(dense).all()


def test_compiled_plan_equals_the_transforms_one_by_one(spec) -> None:
    """The fast path (all features of a kind at once) gives exactly what the per-feature
    transforms give, over generated traffic and odd inputs."""
    from loadtest.generate import generate
    from schemas.json_form import request_from_json

    c = spec.config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    reqs = [request_from_json(d, 0) for d in generate(60, seed=5, candidates="uniform:1,300")]
    odd = ScoreRequest("odd", "12345", {"ad_id": np.array([2**63 - 1, -5, 0], np.int64),
                                        "bid": np.array([0.5, -1.0, 1e9], np.float32),
                                        "category": np.array([3.0, 4.7, -2.0])},
                       user={"city": "paris", "age_bucket": True, "ctr_7d": "0.25",
                             "segment": 2**70},
                       context={"hour_of_day": 7.0, "os": None, "country": "-12"})
    for req in [*reqs, odd]:
        dense, sparse = pipe(req)
        ref_dense, ref_sparse = pipe.reference(req)
        np.testing.assert_array_equal(sparse, ref_sparse)
        np.testing.assert_allclose(dense, ref_dense, rtol=1e-6, atol=0)


def test_a_cross_of_an_undefined_feature_is_refused_when_built(spec, tmp_path) -> None:
    c = spec.config
    text = (DEFAULT_SPEC.read_text()
            .replace('cross = ["user_id", "ad_category"]', 'cross = ["user_id", "nope"]'))
    bad = tmp_path / "features.toml"
    bad.write_text(text)
    with pytest.raises(FeatureConfigError, match="nope"):
        FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                  list(c.dense_features), bad)


def test_one_plan_call_over_many_requests_equals_each_request_alone(spec) -> None:
    """The batch path (candidates of a whole fetch concatenated, user and context broadcast
    per request) gives each request exactly its own values, also when requests lack
    columns others have or carry them in other dtypes."""
    from loadtest.generate import generate
    from schemas.json_form import request_from_json

    c = spec.config
    pipe = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets),
                                     list(c.dense_features))
    reqs = [request_from_json(d, 0) for d in generate(40, seed=9, candidates="uniform:1,120")]
    bare = ScoreRequest("bare", "u7", {"ad_id": np.arange(4, dtype=np.int64),
                                       "bid": np.ones(4, np.float32)},
                        user={"city": "oslo"})
    floats = ScoreRequest("floats", "u8", {"ad_id": np.arange(3, dtype=np.int64),
                                           "bid": np.ones(3, np.float32),
                                           "category": np.array([3.0, 4.7, -2.0])})
    batch = [*reqs[:20], bare, floats, *reqs[20:]]
    dense, sparse = pipe.batch(batch)
    at = 0
    for req in batch:
        n = req.n_candidates
        ref_dense, ref_sparse = pipe.reference(req)
        np.testing.assert_array_equal(sparse[at:at + n], ref_sparse, err_msg=req.request_id)
        np.testing.assert_allclose(dense[at:at + n], ref_dense, rtol=1e-6, atol=0)
        at += n
    assert at == dense.shape[0] == sparse.shape[0]
