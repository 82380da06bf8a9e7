"""docker-compose.yml, Prometheus' scrape configuration and the Grafana dashboard agree with
each other and with the metrics the workers export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.metrics import CATALOG, Metrics, sample_names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "adstream.json"
WORKERS = {"features", "scorer", "scorer-gpu", "aggregator"}
PROMQL_WORDS = {"up"}  # series Prometheus makes itself


def compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1), whichever answers."""
    if shutil.which("docker"):
        out = subprocess.run(["docker", "compose", "version"], capture_output=True,
                             timeout=60, check=False)
        if out.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    client = compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed, so the compose "
                    "file cannot be validated here (install docker-compose to run this check)")
    return subprocess.run([*client, "-f", str(COMPOSE), *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT, env={**os.environ, **(env or {})})


def service_blocks(config: str) -> dict[str, str]:
    """The normalized ``config`` output cut into one text block per service."""
    body = config.split("\nservices:\n", 1)[-1] if not config.startswith("services:") \
        else config.split("services:\n", 1)[1]
    blocks: dict[str, str] = {}
    name = None
    for line in body.splitlines():
        if line and not line.startswith(" "):
            break  # the next top-level key (volumes, networks)
        m = re.match(r"^  ([\w-]+):\s*$", line)
        if m:
            name = m.group(1)
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    return blocks


def test_compose_file_validates_with_every_profile() -> None:
    for profiles in ([], ["--profile", "gpu", "--profile", "loadtest"]):
        out = compose(*profiles, "config", "-q")
        assert out.returncode == 0, out.stderr
    out = compose("--profile", "gpu", "--profile", "loadtest", "config", "--services")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == {"kafka", "topics", "features", "scorer", "scorer-gpu",
                                       "aggregator", "loadtest", "prometheus", "grafana"}


def test_one_variable_sets_the_replicas_of_each_role() -> None:
    env = {"FEATURES_REPLICAS": "3", "SCORER_REPLICAS": "0", "SCORER_GPU_REPLICAS": "2",
           "AGGREGATOR_REPLICAS": "4", "PARTITIONS": "12"}
    out = compose("--profile", "gpu", "config", env=env)
    assert out.returncode == 0, out.stderr
    blocks = service_blocks(out.stdout)
    for service, n in (("features", 3), ("scorer", 0), ("scorer-gpu", 2), ("aggregator", 4)):
        assert re.search(rf"\n\s+replicas: {n}\n", "\n" + blocks[service]), blocks[service]
        assert "ADSTREAM_METRICS_PORT: '9100'" in blocks[service] or \
            'ADSTREAM_METRICS_PORT: "9100"' in blocks[service]
    assert "driver: nvidia" in blocks["scorer-gpu"] and "driver: nvidia" not in blocks["scorer"]
    assert "'12'" in blocks["topics"] or '"12"' in blocks["topics"]  # --partitions


def test_prometheus_scrapes_every_worker_service_on_the_metrics_port() -> None:
    prom = (DEPLOY / "prometheus.yml").read_text()
    names = re.search(r"names:\s*\[([^\]]*)\]", prom)
    assert names is not None
    assert {n.strip() for n in names.group(1).split(",")} == WORKERS
    port = re.search(r"\n\s+port:\s*(\d+)", prom)
    text = COMPOSE.read_text()
    assert port is not None and f'ADSTREAM_METRICS_PORT: "{port.group(1)}"' in text
    for service in WORKERS:
        assert re.search(rf"\n  {re.escape(service)}:", text), service
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml" in text


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row"
            for t in p["targets"]]


def test_dashboard_loads_and_every_query_names_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "adstream" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = re.search(r"uid:\s*(\S+)", (DEPLOY / "grafana" / "provisioning" /
                                             "datasources" / "prometheus.yml").read_text())
    assert datasource is not None
    exported = sample_names()
    standard = {s.name for fam in Metrics().registry.collect() for s in fam.samples
                if not s.name.startswith("adstream_")}  # process_*, python_*
    used: set[str] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == datasource.group(1), p["title"]
        assert p["targets"], p["title"]
    for title, expr in _exprs(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
        names = set(re.findall(r"\b(adstream_[a-z0-9_]+)\b", expr))
        others = set(re.findall(r"\b([a-z_]+)\{", expr)) - names
        assert names or others, f"{title}: {expr} selects no series"
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"
        assert others <= PROMQL_WORDS | standard, f"{title}: {sorted(others)} are not exported"
        used |= names
    unused = {n for n in CATALOG if not any(u.startswith(n) for u in used)}
    assert not unused, f"metrics no panel shows: {sorted(unused)}"


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "adstream.yml").read_text()
    path = re.search(r"path:\s*(\S+)", provider)
    assert path is not None
    text = COMPOSE.read_text()
    assert f"./deploy/grafana/dashboards:{path.group(1)}:ro" in text
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in text
    assert f"{path.group(1)}/{DASHBOARD.name}" in text  # the home dashboard
