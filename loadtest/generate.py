"""Synthetic ad traffic with a realistic shape, deterministic for a seed.

Users and ads are Zipf-distributed (a few are very popular); each request draws its
candidate count from a distribution (``fixed:N``, ``uniform:A,B`` or ``lognormal:MEDIAN,SIGMA``)
and its candidates from an ad catalogue whose attributes are fixed per ad. Requests carry
every field the default feature pipeline reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def parse_distribution(spec: str) -> tuple[str, tuple[float, ...]]:
    """``fixed:N``, ``uniform:A,B`` or ``lognormal:MEDIAN,SIGMA`` -> (kind, params)."""
    kind, _, rest = spec.partition(":")
    try:
        params = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise ValueError(f"candidate distribution {spec!r}: parameters must be numbers") from None
    expected = {"fixed": 1, "uniform": 2, "lognormal": 2}
    if kind not in expected or len(params) != expected[kind]:
        raise ValueError(f"candidate distribution {spec!r}: use fixed:N, uniform:A,B or "
                         "lognormal:MEDIAN,SIGMA")
    if any(p <= 0 for p in params):
        raise ValueError(f"candidate distribution {spec!r}: parameters must be positive")
    return kind, params


@dataclass
class Catalogue:
    """Fixed attributes per ad, drawn once per seed."""

    ad_id: np.ndarray
    columns: dict[str, np.ndarray]
    popularity: np.ndarray

    @classmethod
    def make(cls, n_ads: int, rng: np.random.Generator) -> Catalogue:
        advertiser = rng.integers(1, max(2, n_ads // 20), n_ads)
        cols: dict[str, np.ndarray] = {
            "advertiser_id": advertiser,
            "campaign_id": advertiser * 10 + rng.integers(0, 10, n_ads),
            "creative_id": np.arange(n_ads) * 3 + rng.integers(0, 3, n_ads),
            "category": rng.integers(0, 400, n_ads),
            "creative_format": rng.integers(0, 6, n_ads),
            "landing_domain": rng.integers(0, 3000, n_ads),
            "bid": rng.lognormal(np.log(0.8), 0.7, n_ads).astype(np.float32),
            "ctr_7d": rng.beta(1.5, 60, n_ads).astype(np.float32),
            "impressions_7d": rng.integers(0, 200_000, n_ads),
            "quality": rng.beta(5, 5, n_ads).astype(np.float32),
            "advertiser_ctr_30d": rng.beta(2, 80, n_ads).astype(np.float32),
            "creative_age_days": rng.integers(0, 365, n_ads),
            "landing_load_ms": rng.lognormal(np.log(900), 0.5, n_ads).astype(np.float32),
        }
        ranks = np.arange(1, n_ads + 1, dtype=np.float64)
        pop = ranks ** -1.05
        return cls(np.arange(1, n_ads + 1, dtype=np.int64) * 7919 % 10_000_019, cols,
                   pop / pop.sum())


# categorical values as an ad server would have them: names, not ids
STRING_FORMS = {
    "advertiser_id": "advertiser-{}", "campaign_id": "campaign-{}-spring-sale",
    "creative_id": "creative-{}.jpg", "category": "IAB{}", "creative_format": "format-{}",
    "landing_domain": "www.shop{}.example.com", "city": "city-{}", "segment": "segment-{}",
}


def _count(kind: str, params: tuple[float, ...], rng: np.random.Generator, cap: int) -> int:
    if kind == "fixed":
        n = params[0]
    elif kind == "uniform":
        n = int(rng.integers(int(params[0]), int(params[1]) + 1))
    else:
        n = rng.lognormal(np.log(params[0]), params[1])
    return int(min(max(1, round(float(n))), cap))


def generate(
    n: int,
    *,
    seed: int = 0,
    candidates: str = "uniform:20,300",
    users: int = 10_000,
    ads: int = 20_000,
    rate: float = 500.0,
    burst_every_s: float = 10.0,
    burst_factor: float = 3.0,
    top_k: int = 10,
    timeout_ms: int | None = None,
    strings: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` requests as JSON-ready dicts, each with an ``at_ms`` arrival offset.
    ``strings``: categorical values as strings (see :data:`STRING_FORMS`), the same
    requests otherwise."""
    kind, params = parse_distribution(candidates)
    rng = np.random.default_rng(seed)
    cat = Catalogue.make(ads, rng)
    cap = min(ads, 10_000)
    user_ranks = np.arange(1, users + 1, dtype=np.float64) ** -1.1
    user_p = user_ranks / user_ranks.sum()
    t = 0.0
    for i in range(n):
        in_burst = burst_every_s > 0 and (t / 1000) % burst_every_s < 1.0
        t += rng.exponential(1000.0 / (rate * (burst_factor if in_burst else 1.0)))
        u = int(rng.choice(users, p=user_p))
        urng = np.random.default_rng([seed, u])  # a user's profile is the same every time
        k = _count(kind, params, rng, cap)
        picks = np.unique(rng.choice(len(cat.ad_id), size=k, p=cat.popularity))
        while len(picks) < k:
            extra = rng.integers(0, len(cat.ad_id), k - len(picks))
            picks = np.unique(np.concatenate([picks, extra]))
        picks = rng.permutation(picks)
        cands: dict[str, Any] = {"ad_id": cat.ad_id[picks].tolist()}
        for name, col in cat.columns.items():
            cands[name] = col[picks].tolist()
            if strings and name in STRING_FORMS:
                cands[name] = [STRING_FORMS[name].format(v) for v in cands[name]]
        req: dict[str, Any] = {
            "request_id": f"req-{seed}-{i:08d}",
            "user_id": f"u{u}",
            "user": {
                "age_bucket": int(urng.integers(0, 12)),
                "gender": int(urng.integers(0, 3)),
                "city": int(urng.integers(0, 1500)),
                "segment": int(urng.integers(0, 50)),
                "ctr_7d": round(float(urng.beta(1.2, 50)), 5),
                "impressions_7d": int(urng.integers(0, 5000)),
                "clicks_7d": int(urng.integers(0, 60)),
                "tenure_days": int(urng.integers(0, 3000)),
            },
            "context": {
                "device_type": int(rng.integers(0, 5)),
                "os": int(rng.integers(0, 8)),
                "app_id": int(rng.zipf(1.3) % 4000),
                "site_id": int(rng.zipf(1.3) % 4000),
                "page_category": int(rng.integers(0, 200)),
                "slot_id": int(rng.integers(0, 400)),
                "hour_of_day": int((t / 3_600_000) % 24),
                "day_of_week": int((t / 86_400_000) % 7),
                "country": int(rng.zipf(1.5) % 200),
                "page_position": int(rng.integers(0, 10)),
                "session_depth": int(rng.geometric(0.3)),
            },
            "candidates": cands,
            "top_k": top_k,
            "at_ms": round(t, 3),
        }
        if strings:
            for key in ("city", "segment"):
                req["user"][key] = STRING_FORMS[key].format(req["user"][key])
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        yield req


def write_jsonl(path: Path, requests: Iterator[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w") as f:
        for r in requests:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
    return n
