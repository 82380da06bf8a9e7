"""The README's kcat example, run as written against the real broker and pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import DirectScorer

from schemas.encoding import JSON
from schemas.messages import ScoreRequest, decode
from schemas.strings import StringColumn
from workers.scoring.repository import load_model

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (Debian "
                       "package `kcat`; the Makefile installs it for `make test`)"),
]


def readme_kcat_example() -> str:
    m = re.search(r"<!-- kcat-example:start -->\n```bash\n(.*?)```\n<!-- kcat-example:end -->",
                  README.read_text(), re.DOTALL)
    assert m, "README lacks the kcat example between its kcat-example markers"
    return m.group(1)


def test_the_readme_kcat_example_gets_a_json_answer(running_pipeline, model_repo, tmp_path
                                                     ) -> None:
    """The README's commands, with only the broker address and topic names swapped for
    this session's (the pipeline under test reads topics of its own)."""
    s = running_pipeline.settings
    reply = f"kcat.replies.{uuid.uuid4().hex[:8]}"
    script = (readme_kcat_example()
              .replace("127.0.0.1:9092", running_pipeline.bootstrap)
              .replace("ads.requests", s.topics.requests)
              .replace("kcat.replies", reply))
    t = s.topics  # `adstream topics create` then finds this session's topics existing
    config = tmp_path / "topics.toml"
    config.write_text("[topics]\n" + "".join(
        f'{k} = "{getattr(t, k)}"\n'
        for k in ("requests", "features", "scores", "results", "dlq", "changelog")))
    env = {**os.environ, "ADSTREAM_KAFKA_BOOTSTRAP": running_pipeline.bootstrap,
           "ADSTREAM_CONFIG": str(config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])  # the last line: the answer
    assert answer["schema"] == "ads.ScoreResult/1.1"
    assert answer["request_id"] == "kcat-1" and answer["status"] == "ok", answer
    assert answer["n_scored"] == answer["n_candidates"] == 3
    assert len(answer["ad_id"]) == len(answer["score"]) == len(answer["bid"]) == 2
    # the answer is the Python path's top-K for the same JSON request (string column too)
    body = re.search(r"echo '(\{.*\})'", script)
    assert body, "the example sends its request with echo '...'"
    req = decode(body.group(1).encode(), ScoreRequest, content_type=JSON)
    assert isinstance(req.candidates["landing_domain"], StringColumn)
    ad_id, scores = DirectScorer(load_model(model_repo, "ctr")).top_k(req)
    assert answer["ad_id"] == ad_id.tolist()
    np.testing.assert_allclose(answer["score"], scores, atol=1e-5, rtol=0)
