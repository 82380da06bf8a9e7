"""The feature plan of 1805f8d (old) and of this change (new) on the same requests, one run
each, alternating: PYTHONPATH=<checkout> python plan-old-new.py (CPU µs per request)."""
import time
from pathlib import Path
import tempfile
from loadtest.generate import generate
from pipeline.runner import tune_gc
from schemas.json_form import request_from_json
from schemas.messages import ScoreRequest, decode, encode
from workers.features.spec import FeaturePipeline
from workers.scoring.reference_model import build_reference_model
from workers.scoring.repository import load_model
repo = Path(tempfile.mkdtemp()); build_reference_model(repo)
c = load_model(repo, "ctr").config
plan = FeaturePipeline.from_spec(list(c.sparse_features), list(c.sparse_buckets), list(c.dense_features), None)
reqs = [decode(encode(request_from_json(d, 0)), ScoreRequest) for d in generate(2000, candidates="fixed:100") if "candidates" in d]
tune_gc()
for size in (1, 8, 32):
    batches = [reqs[i:i + size] for i in range(0, len(reqs) - size + 1, size)]
    best = 1e9
    for _ in range(5):
        t0 = time.process_time(); [plan.batch(b) for b in batches]; best = min(best, time.process_time() - t0)
    print(f"plan over {size:3d} requests (gathered per request): {best / (len(batches) * size) * 1e6:7.1f} us/request")
