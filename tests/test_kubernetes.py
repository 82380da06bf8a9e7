"""The Kubernetes manifests (``deploy/kubernetes``), validated without a cluster.

Each overlay is rendered with kustomize (the binary ``make kustomize`` builds); every object
is validated against the Kubernetes schemas of ``kubernetes-validate`` (strict: an unknown
field is an error) or, for KEDA and Prometheus Operator kinds, against the schema of its
CustomResourceDefinition (``tests/kubernetes_crds``, unknown fields refused too). Then the
cross-references: each container's settings are loaded the way the worker loads them (the
real CLI parser and ``load_config``, with the image's environment, the container's env and
the mounted ConfigMap and Secret files), and the probes, ports, Secret keys, autoscaler
bounds and triggers and the termination grace are checked against those settings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.config import ENV_PREFIX, load_config
from pipeline.endpoint import MetricsServer
from pipeline.membership import CHILD_INDEX_ENV
from pipeline.metrics import Metrics
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "kubernetes_crds"
OVERLAYS = ("cpu", "gpu", "cpu-hpa", "gpu-hpa")
# the oldest Kubernetes the manifests need (preStop's sleep action is on by default from
# 1.30) and the newest whose schemas kubernetes-validate ships
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
ROLE_INPUTS = {"features": "requests", "scorer": "features", "aggregator": "scores"}
# what the workers need after preStop and the drain: the last commit, leaving the group,
# closing the clients (the supervisor allows the same: drain_timeout_s + 10)
EXIT_MARGIN_S = 10
SECRET = yaml.safe_load((K8S / "kafka-secret.example.yaml").read_text())


# ---- rendering ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kustomize() -> str:
    """The kustomize binary: ``ADSTREAM_KUSTOMIZE`` (``make test`` sets it), else the one
    ``make kustomize`` builds (and prints)."""
    path = os.environ.get("ADSTREAM_KUSTOMIZE")
    if not path:
        done = subprocess.run(["make", "-s", "--no-print-directory", "kustomize"], cwd=ROOT,
                              check=False, capture_output=True, text=True)
        assert done.returncode == 0, f"make kustomize failed: {done.stderr.strip()}"
        path = done.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), f"no kustomize binary at {path}; run `make kustomize`"
    return path


def _build(kustomize: str, directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kustomize, "build", str(directory)], check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"kustomize build {directory}: {done.stderr.strip()}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="session")
def rendered(kustomize: str, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's objects, and ``cpu+servicemonitor``: the cpu overlay with the optional
    ServiceMonitor component, as an operator's own overlay would add it."""
    out = {name: _build(kustomize, K8S / "overlays" / name) for name in OVERLAYS}
    own = tmp_path_factory.mktemp("own-overlay")
    rel = Path(os.path.relpath(K8S, own))
    (own / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "adstream", "resources": [str(rel / "overlays" / "cpu")],
        "components": [str(rel / "components" / "servicemonitor")]}))
    out["cpu+servicemonitor"] = _build(kustomize, own)
    return out


ALL = (*OVERLAYS, "cpu+servicemonitor")


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _deployment(objects: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return _of(objects, "Deployment")[f"adstream-{role}"]


# ---- schemas ----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema that refuses unknown fields (the API server
    would drop them silently) except where the CRD keeps them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of that custom resource's version."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            out[(api, crd["spec"]["names"]["kind"])] = _strict(
                version["schema"]["openAPIV3Schema"])
    return out


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """What is wrong with ``obj`` against its kind's schema, one line each."""
    return list(_schema_errors(json.dumps(obj, sort_keys=True)))


@functools.cache
def _schema_errors(text: str) -> tuple[str, ...]:
    """Cached by the object's JSON: the overlays share most of their objects."""
    obj = json.loads(text)
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd = _crd_schemas().get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if crd is not None:
        validator = jsonschema.Draft7Validator(crd)
        return tuple(f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                     for e in validator.iter_errors(obj))
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where} (Kubernetes {version}): "
                          f"{'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{where}: no schema for {obj.get('apiVersion')} "
                          f"{obj.get('kind')} in Kubernetes {version}")
    return tuple(errors)


@pytest.mark.parametrize("overlay", ALL)
def test_every_object_matches_its_schema(rendered: dict[str, list[dict[str, Any]]],
                                         overlay: str) -> None:
    objects = rendered[overlay]
    errors = [line for obj in objects for line in schema_errors(obj)]
    assert not errors, "\n".join(errors)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget", "Job"} <= kinds
    assert ("ScaledObject" in kinds) != ("HorizontalPodAutoscaler" in kinds), \
        "exactly one of KEDA and HPA"


def test_the_example_secret_matches_its_schema() -> None:
    assert schema_errors(SECRET) == []


def test_schema_check_refuses_unknown_and_mistyped_fields(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cpu+servicemonitor"]
    deployment = copy.deepcopy(_deployment(objects, "scorer"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbes"] = container.pop("livenessProbe")
    assert any("'livenessProbes' was unexpected" in e for e in schema_errors(deployment))
    container["livenessProbe"] = container.pop("livenessProbes")
    container["lifecycle"]["preStop"]["sleep"]["seconds"] = "5"
    assert any("'5' is not of type 'integer'" in e for e in schema_errors(deployment))
    scaled = copy.deepcopy(_of(objects, "ScaledObject")["adstream-scorer"])
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert any("'maxReplicas' was unexpected" in e for e in schema_errors(scaled))
    monitor = copy.deepcopy(_of(objects, "ServiceMonitor")["adstream"])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert any("does not match" in e for e in schema_errors(monitor))


# ---- what each container's worker would read -------------------------------------------------


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile (the image's environment, below each container's env)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    env = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for item in shlex.split(line.strip()[4:]):
                key, sep, value = item.partition("=")
                assert sep, f"Dockerfile: ENV {item}: expected KEY=VALUE"
                env[key] = value
    return env


def _secret_value(name: str, key: str) -> str:
    assert name == SECRET["metadata"]["name"], f"Secret {name!r} is not {SECRET['metadata']}"
    assert key in SECRET["stringData"], f"Secret {name} has no key {key!r}"
    return str(SECRET["stringData"][key])


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _secret_value(ref["name"], ref["key"])
    return env


def _mounted_files(pod: dict[str, Any], container: dict[str, Any],
                   configmaps: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Absolute path in the container -> content, for the ConfigMap and Secret volumes."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            assert name in configmaps, f"volume {mount['name']}: no ConfigMap {name}"
            entries = {k: v for k, v in configmaps[name]["data"].items()}
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            items = volume["secret"].get("items") or [
                {"key": k, "path": k} for k in SECRET["stringData"]]
            entries = {i["path"]: _secret_value(name, i["key"]) for i in items}
        else:
            continue
        for path, content in entries.items():
            files[f"{mount['mountPath'].rstrip('/')}/{path}"] = content
    return files


def _container_paths(value: Any, where: str) -> list[tuple[str, str]]:
    """(setting, path) for each string setting that names a file under /etc/."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _container_paths(v, f"{where}.{k}")]
    return [(where, value)] if isinstance(value, str) and value.startswith("/etc/") else []


@dataclasses.dataclass
class Container:
    where: str  # Deployment/adstream-scorer
    pod: dict[str, Any]
    spec: dict[str, Any]
    args: Any  # the parsed command line
    env: dict[str, str]  # image ENV, then the container's
    settings: Settings


def worker_container(objects: list[dict[str, Any]], kind: str, name: str,
                     root: Path) -> Container:
    """The settings the container's process loads, as it loads them: its arguments through
    the real CLI parser, the image's and the container's environment, the --config file
    from the mounted ConfigMap and the *_file settings pointing at mounted Secret keys."""
    obj = _of(objects, kind)[name]
    pod = obj["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    where = f"{kind}/{name}"
    try:
        args = build_parser().parse_args(spec["args"])
    except SystemExit:
        pytest.fail(f"{where}: adstream {' '.join(spec['args'])}: refused by the CLI")
    env = {**image_env(), **_container_env(spec)}
    for var in env:
        if var.startswith(ENV_PREFIX):
            assert var in SETTING_VARS, f"{where}: env {var} is no adstream setting"
    files = _mounted_files(pod, spec, _of(objects, "ConfigMap"))
    for path, content in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(content)
    config = str(args.config)
    assert config in files, f"{where}: --config {config}: no mounted ConfigMap file there"
    text = files[config]
    paths = _container_paths(tomllib.loads(text), config) + [
        (f"env {k}", v) for k, v in env.items() if v.startswith("/etc/")]
    for setting, path in paths:
        assert path in files, f"{where}: {setting} = {path!r}: no mounted file there"
    for path in files:  # the container's paths, moved under root
        text = text.replace(json.dumps(path), json.dumps(str(root / path.lstrip("/"))))
        env = {k: str(root / v.lstrip("/")) if v == path else v for k, v in env.items()}
    rooted = root / "adstream.rooted.toml"
    rooted.write_text(text)
    settings = load_config(Settings, rooted, env=env, overrides=args.set)
    for table, values in tomllib.loads(text).items():  # a setting the file sets in vain
        for key, value in values.items():
            wins = getattr(getattr(settings, table), key)
            assert wins == value, (f"{where}: {config} sets {table}.{key} = {value!r}, but "
                                   f"{wins!r} from the environment or --set wins")
    return Container(where, pod, spec, args, env, settings)


SETTING_VARS = {f"{ENV_PREFIX}{table.name}_{key.name}".upper()
                for table in dataclasses.fields(Settings)
                for key in dataclasses.fields(table.default_factory())  # type: ignore[misc]
                } | {CHILD_INDEX_ENV, f"{ENV_PREFIX}CONFIG"}


@pytest.fixture(scope="session", params=ALL)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def workers(rendered: dict[str, list[dict[str, Any]]], overlay: str,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Container]:
    """The three roles' containers of ``overlay``, read once for the tests below (which
    only read them)."""
    root = tmp_path_factory.mktemp(f"pods-{overlay}")
    return {role: worker_container(rendered[overlay], "Deployment", f"adstream-{role}",
                                   root / role) for role in ROLE_INPUTS}


def test_each_role_runs_its_worker_with_accepted_settings(
        workers: dict[str, Container]) -> None:
    for role, c in workers.items():
        assert (c.args.command, c.args.role) == ("worker", role), c.where
        # a SASL_SSL login: the user from the Secret, the password and CA from its files
        k = c.settings.kafka
        assert k.security_protocol == "SASL_SSL" and k.sasl_username, c.where
        assert Path(k.sasl_password_file).read_text() == SECRET["stringData"]["sasl-password"]
        assert Path(k.ssl_ca_file).read_text() == SECRET["stringData"]["ca.crt"]


def test_probes_and_scrapes_hit_the_metrics_port(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        workers: dict[str, Container]) -> None:
    objects = rendered[overlay]
    for role, c in workers.items():
        port = c.settings.metrics.port
        assert port > 0, f"{c.where}: metrics.port is 0: no /healthz, /readyz or /metrics"
        ports = {p.get("name"): p["containerPort"] for p in c.spec["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.spec[probe]["httpGet"]
            assert get["path"] == path, f"{c.where}: {probe} on {get['path']}"
            target = ports.get(get["port"], get["port"])
            assert target == port, f"{c.where}: {probe} on port {target}, metrics.port {port}"
        template = _deployment(objects, role)["spec"]["template"]["metadata"]
        assert template["annotations"]["prometheus.io/scrape"] == "true", c.where
        assert template["annotations"]["prometheus.io/port"] == str(port), c.where
        assert template["annotations"]["prometheus.io/path"] == "/metrics", c.where
        # the ServiceMonitor's Service selects every worker pod, on the metrics port
        for service in _of(objects, "Service").values():
            assert service["spec"]["selector"].items() <= template["labels"].items()
            for p in service["spec"]["ports"]:
                assert ports.get(p["targetPort"], p["targetPort"]) == port, c.where
    job_labels = _of(objects, "Job")["adstream-topics"]["spec"]["template"]["metadata"]["labels"]
    for service in _of(objects, "Service").values():
        assert not service["spec"]["selector"].items() <= job_labels.items(), \
            "the metrics Service selects the topics Job's pod, which serves no metrics"
        names = {p["name"] for p in service["spec"]["ports"]}
        for monitor in _of(objects, "ServiceMonitor").values():
            assert monitor["spec"]["selector"]["matchLabels"].items() \
                <= service["metadata"]["labels"].items()
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names
            assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    if overlay.endswith("servicemonitor"):
        assert _of(objects, "ServiceMonitor") and _of(objects, "Service")


def test_the_worker_endpoint_serves_the_probed_paths() -> None:
    """/healthz and /readyz (the probes' paths) exist on the worker's endpoint: a starting
    worker is alive (200) and not ready (503); an unknown path is 404."""
    server = MetricsServer(Metrics(), "127.0.0.1", 0)
    server.start()
    try:
        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}",
                                            timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        assert (status("/healthz"), status("/readyz"), status("/nope")) == (200, 503, 404)
    finally:
        server.stop()


def test_termination_grace_covers_prestop_and_drain(workers: dict[str, Container]) -> None:
    for c in workers.values():
        pre_stop = c.spec["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = c.pod["terminationGracePeriodSeconds"]
        needed = pre_stop + c.settings.actor.drain_timeout_s + EXIT_MARGIN_S
        assert grace >= needed, (f"{c.where}: terminationGracePeriodSeconds {grace} < preStop "
                                 f"{pre_stop} + actor.drain_timeout_s "
                                 f"{c.settings.actor.drain_timeout_s} + {EXIT_MARGIN_S}")


def test_rollouts_and_disruptions_take_one_pod_at_a_time(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    budgets = _of(rendered[overlay], "PodDisruptionBudget")
    for role in ROLE_INPUTS:
        deployment = _deployment(rendered[overlay], role)
        assert "replicas" not in deployment["spec"], "the autoscaler owns replicas"
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, 1), role
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets.values()
                if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(mine) == 1, f"{role}: {len(mine)} PodDisruptionBudgets select its pods"
        assert mine[0]["spec"]["maxUnavailable"] == 1


def _secret_keys_used(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    used = set()
    for o in objects:
        pod = o.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []):
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
        for v in pod.get("volumes", []):
            if "secret" in v:
                used |= {(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]}
        if o["kind"] == "TriggerAuthentication":
            used |= {(r["name"], r["key"]) for r in o["spec"]["secretTargetRef"]}
    return used


def test_secret_keys_are_those_the_settings_and_the_readme_make(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    name = SECRET["metadata"]["name"]
    assert _secret_keys_used(rendered[overlay]) == {(name, k) for k in SECRET["stringData"]}
    readme = (ROOT / "README.md").read_text()
    command = re.search(rf"kubectl -n adstream create secret generic {name}((?:.*\\\n)*.*)",
                        readme)
    assert command, f"README: no `kubectl -n adstream create secret generic {name}` command"
    keys = set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", command.group(1)))
    assert keys == set(SECRET["stringData"]), f"README's secret command makes {keys}"


def test_topics_job_creates_the_partitions_of_the_config(
        rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path) -> None:
    job = worker_container(rendered[overlay], "Job", "adstream-topics", tmp_path)
    assert (job.args.command, job.args.partitions) == ("topics", None), \
        "the Job takes topics.partitions from the ConfigMap (no --partitions of its own)"
    assert job.settings.topics.partitions >= 1


KAFKA_SCALER = json.loads((CRDS / "keda-kafka-scaler-parameters.json").read_text())


def test_autoscalers_follow_each_groups_lag_within_the_partitions(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        workers: dict[str, Container]) -> None:
    objects = rendered[overlay]
    scaled, hpas = _of(objects, "ScaledObject"), _of(objects, "HorizontalPodAutoscaler")
    for role, c in workers.items():
        s = c.settings
        group, topic = f"{s.kafka.group_prefix}-{role}", getattr(s.topics, ROLE_INPUTS[role])
        target = f"adstream-{role}"
        if scaled:
            (so,) = [o for o in scaled.values() if o["spec"]["scaleTargetRef"]["name"] == target]
            low, high = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
            (trigger,) = so["spec"]["triggers"]
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            unknown = set(meta) - set(KAFKA_SCALER["triggerMetadata"])
            assert not unknown, f"{so['metadata']['name']}: not Kafka scaler metadata: {unknown}"
            assert meta["bootstrapServers"] == s.kafka.bootstrap
            assert (meta["consumerGroup"], meta["topic"]) == (group, topic)
            assert int(meta["lagThreshold"]) >= 1
            assert meta["offsetResetPolicy"] == "earliest"  # where a new member starts
            assert meta["allowIdleConsumers"] == "false"
            assert meta["tls"] == ("enable" if s.kafka.security_protocol.endswith("SSL")
                                   else "disable")
            assert meta["sasl"] == s.kafka.sasl_mechanism.lower().replace("-", "_") \
                .replace("scram_sha_", "scram_sha")
            auth = _of(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
            params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
            assert params <= set(KAFKA_SCALER["authParams"]), params
            assert {"username", "password", "ca"} <= params
        else:
            (hpa,) = [o for o in hpas.values() if o["spec"]["scaleTargetRef"]["name"] == target]
            low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
            (metric,) = hpa["spec"]["metrics"]
            external = metric["external"]
            assert external["metric"]["name"] == "adstream_consumer_lag_records"
            assert external["metric"]["selector"]["matchLabels"] == {"group": group}
            assert external["target"]["type"] == "AverageValue"
        assert 1 <= low <= high <= s.topics.partitions, \
            f"{target}: replicas {low}..{high}, topics.partitions {s.topics.partitions}"


async def test_the_hpa_metric_is_one_the_workers_export() -> None:
    """A worker exports adstream_consumer_lag_records with its group in the ``group`` label
    (what the HPA selects on), and the adapter rule serves that name."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from pipeline.lag import LagReader, PartitionLag
    from pipeline.transport.base import TP

    class Reader(LagReader):
        async def groups(self, prefix: str = "") -> list[str]:
            return ["adstream-scorer"]

        async def describe(self, group: str) -> Any:
            raise AssertionError("the member owns partitions: lag is read, not describe")

        async def lag(self, group: str, tps: Any = None) -> list[PartitionLag]:
            return [PartitionLag(tp.topic, tp.partition, 10, 52, 42) for tp in tps]

    metrics = Metrics()
    actor: Any = SimpleNamespace(handler=SimpleNamespace(name="scorer"),
                                 group_id="adstream-scorer", in_flight=0, paused=set())
    metrics.on_start(actor)
    metrics.on_assigned(actor, {TP("ads.features", 3)})
    assert await metrics.read_lag(Reader())
    text = generate_latest(metrics.registry).decode()
    (sample,) = [line for line in text.splitlines()
                 if line.startswith("adstream_consumer_lag_records{")]
    assert 'group="adstream-scorer"' in sample and sample.endswith(" 42.0"), sample
    values = yaml.safe_load((K8S / "components/hpa/prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    assert rule["name"]["as"] == "adstream_consumer_lag_records"
    assert rule["seriesQuery"].startswith("adstream_consumer_lag_records{")


def test_gpu_overlays_put_the_scorer_on_a_gpu(rendered: dict[str, list[dict[str, Any]]],
                                             overlay: str,
                                             workers: dict[str, Container]) -> None:
    scorer = workers["scorer"]
    resources = scorer.spec["resources"]
    if overlay.startswith("gpu"):
        assert scorer.settings.scorer.backend == "cupy"
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert scorer.pod["nodeSelector"], "GPU scorers need GPU nodes"
        assert scorer.spec["image"].startswith("adstream-gpu")
    else:
        assert scorer.settings.scorer.backend in ("", "onnxruntime")
        assert "nvidia.com/gpu" not in json.dumps(resources)
    for role in ("features", "aggregator"):
        assert "nvidia.com/gpu" not in json.dumps(workers[role].spec["resources"])
