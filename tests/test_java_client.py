"""The Java client (clients/java, written from the published contract) against the real broker:
its top K for a request equals the Python client's for the same request."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from adstream_client import Client
from loadtest.generate import generate
from schemas.json_form import request_from_json

pytestmark = pytest.mark.kafka
JAVA_DIR = Path(__file__).resolve().parent.parent / "clients" / "java"


@pytest.fixture(scope="module")
def java_client() -> list[str]:
    """``mvn -q package`` once (dependencies cached in ~/.m2); the command that runs it."""
    if not (shutil.which("mvn") and shutil.which("java")):
        pytest.skip("the Java client test needs `mvn` and `java` (Java 17+) on PATH")
    built = subprocess.run(["mvn", "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "package"],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    target = JAVA_DIR / "target"
    return ["java", "-cp", f"{target / 'adstream-java-client.jar'}:{target / 'lib'}/*",
            "adstream.ScoreOnce"]


def _csv(values: np.ndarray) -> str:
    return ",".join(repr(float(v)) if values.dtype.kind == "f" else str(int(v)) for v in values)


def test_java_client_gets_the_same_top_k_as_the_python_client(running_pipeline,
                                                              java_client) -> None:
    s = running_pipeline.settings
    line = next(iter(generate(1, seed=41, candidates="uniform:60,60", timeout_ms=30_000)))
    req = request_from_json(line, int(time.time() * 1000))
    req.top_k = 7
    args = ["--bootstrap", running_pipeline.bootstrap, "--requests-topic", s.topics.requests,
            "--request-id", f"{req.request_id}-java", "--user-id", req.user_id,
            "--top-k", str(req.top_k), "--timeout-ms", "30000",
            "--ad-id", _csv(req.candidates["ad_id"]), "--bid", _csv(req.candidates["bid"])]
    for name, col in req.candidates.items():
        if name not in ("ad_id", "bid"):
            kind = "--int-column" if col.dtype.kind in "iu" else "--float-column"
            args += [kind, f"{name}={_csv(col)}"]
    for flag, scalars in (("--user", req.user), ("--context", req.context)):
        for name, v in scalars.items():
            args += [flag, f"{name}={v!r}"]
    ran = subprocess.run([*java_client, *args], capture_output=True, text=True, timeout=120,
                         check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    java = json.loads(ran.stdout.strip().splitlines()[-1])

    req.request_id = f"{req.request_id}-python"
    with Client(running_pipeline.bootstrap, requests_topic=s.topics.requests) as client:
        py = client.score(req, timeout=30)

    assert java["request_id"].endswith("-java") and java["status"] == "ok"
    assert [a["ad_id"] for a in java["ads"]] == py.ad_id.tolist()
    assert len(java["ads"]) == req.top_k
    np.testing.assert_array_equal(np.array([a["score"] for a in java["ads"]], np.float32),
                                  py.score)
    np.testing.assert_array_equal(np.array([a["bid"] for a in java["ads"]], np.float32), py.bid)


def test_java_client_refuses_bad_arguments_in_one_line(java_client) -> None:
    ran = subprocess.run([*java_client, "--request-id", "r"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert ran.returncode == 2
    assert ran.stderr.strip().startswith("ScoreOnce: ") and ran.stderr.strip().count("\n") == 0
