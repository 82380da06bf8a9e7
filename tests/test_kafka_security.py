"""adstream through a SASL_SSL listener (TLS + SCRAM), and what a wrong setting says.

The session broker has a SASL_SSL listener with a certificate signed by a CA made for the
session and a SCRAM user; these tests run the CLI, the worker processes, the load tester
with in-process roles and ``adstream status`` through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SecureKafka
from stack import Stack

from loadtest.generate import generate, write_jsonl

pytestmark = pytest.mark.kafka


def _cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          input=stdin.decode() if stdin else None, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def _sets(table: dict[str, str]) -> list[str]:
    return [a for k, v in table.items() for a in ("--set", f"kafka.{k}={v}")]


@pytest.fixture(scope="module")
def secure_stack(kafka_secure: SecureKafka, model_repo, tmp_path_factory):
    """Topics and the fused + aggregator workers, all through SASL_SSL + SCRAM-SHA-512;
    the config file names a password file, the workers get the password from the
    environment instead (the file's setting cleared)."""
    tmp = tmp_path_factory.mktemp("secure-stack")
    password_file = tmp / "kafka-password"
    password_file.write_text(kafka_secure.password + "\n")
    s = Stack(kafka_secure.bootstrap, model_repo, tmp,
              kafka={**kafka_secure.kafka_table("SCRAM-SHA-512"),
                     "sasl_password_file": str(password_file)})
    s.create_topics()
    env = {"ADSTREAM_KAFKA_SASL_PASSWORD_FILE": "",
           "ADSTREAM_KAFKA_SASL_PASSWORD": kafka_secure.password}
    try:
        for role in ("fused", "aggregator"):
            s.start(role, wait=False, env=env)
        for role in ("fused", "aggregator"):
            s.wait_ready(role)
        yield s
    finally:
        s.close()


def test_worker_processes_serve_requests_through_sasl_ssl_scram(
        secure_stack: Stack, kafka_secure: SecureKafka, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    write_jsonl(requests, generate(20, seed=5, candidates="uniform:5,40", timeout_ms=20_000))
    out = secure_stack.cli("produce", str(requests), "--wait", "--timeout", "60")
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    results = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(results) == 20 and {r["status"] for r in results} == {"ok"}
    logs = "".join(p.read_text() for p in secure_stack.logs.values())
    assert "partitions assigned" in logs and "Traceback" not in logs
    assert kafka_secure.password not in logs + out.stderr.decode()


def test_status_reads_the_groups_through_sasl_ssl(secure_stack: Stack) -> None:
    out = secure_stack.cli("status", "--json", "--no-discover")
    assert out.returncode == 0, out.stderr.decode()
    groups = {g["group"]: g for g in json.loads(out.stdout)["groups"]}
    prefix = secure_stack.prefix
    assert {f"{prefix}-fused", f"{prefix}-aggregator"} <= set(groups)


def test_config_masks_the_password(secure_stack: Stack, kafka_secure: SecureKafka) -> None:
    out = secure_stack.cli("config", "--set", f"kafka.sasl_password={kafka_secure.password}",
                           "--set", "kafka.sasl_password_file=")
    assert out.returncode == 0, out.stderr.decode()
    assert kafka_secure.password not in out.stdout.decode()
    assert 'sasl_password = "***"' in out.stdout.decode()


def test_load_tester_with_in_process_roles_through_sasl_ssl_scram_sha_256(
        kafka_secure: SecureKafka, model_repo, tmp_path) -> None:
    prefix = f"lt{os.getpid()}sec"
    config = tmp_path / "adstream.toml"
    table = kafka_secure.kafka_table("SCRAM-SHA-256")
    config.write_text("[kafka]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items())
                      + f'group_prefix = "{prefix}"\n[scorer]\nmodel_repo = "{model_repo}"\n'
                      + "[topics]\npartitions = 2\n"
                      + "".join(f'{t} = "{prefix}.{t}"\n' for t in
                                ("requests", "features", "scores", "results", "dlq",
                                 "changelog")))
    traffic = tmp_path / "traffic.jsonl"
    write_jsonl(traffic, generate(100, seed=9, candidates="uniform:5,60", timeout_ms=10_000))
    run_json = tmp_path / "RUN.json"
    out = _cli("loadtest", "replay", str(traffic), "--config", str(config), "--with-workers",
               "--rate", "40", "--duration", "3", "--warmup", "0.5", "--progress", "plain",
               "--out", str(run_json),
               env={"ADSTREAM_KAFKA_SASL_PASSWORD": kafka_secure.password}, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(run_json.read_text())["summary"]
    assert summary["outcomes"]["lost"] == 0
    assert summary["outcomes"]["ok"] == summary["measured"] > 60


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and "Unclosed" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(("change", "cause"), [
    ({"sasl_password": "not-the-password"}, "refused the SASL login of user"),
    ({"sasl_mechanism": "PLAIN"}, "does not enable SASL mechanism PLAIN (it enables SCRAM-"),
    ({"security_protocol": "PLAINTEXT"}, "expects TLS but kafka.security_protocol is PLAINTEXT"),
    ({"ssl_ca_file": ""}, "is not trusted (self-signed certificate in certificate chain)"),
])
def test_a_wrong_security_setting_is_one_line_naming_the_broker_and_the_cause(
        kafka_secure: SecureKafka, change: dict[str, str], cause: str) -> None:
    table = {**kafka_secure.kafka_table("SCRAM-SHA-512"), "sasl_password": kafka_secure.password,
             **change}
    line = _one_line_error(_cli("topics", "create", *_sets(table)))
    assert kafka_secure.bootstrap in line and cause in line, line
    assert kafka_secure.password not in line


def test_produce_with_tls_against_the_plaintext_port_is_one_line(
        kafka_secure: SecureKafka, kafka_bootstrap: str) -> None:
    table = {**kafka_secure.kafka_table(), "sasl_password": kafka_secure.password,
             "bootstrap": kafka_bootstrap}
    line = _one_line_error(_cli("produce", "-", *_sets(table), stdin=b""))
    assert f"the Kafka broker at {kafka_bootstrap} does not speak TLS" in line, line


def test_password_file_and_scram_sha_256_create_topics(kafka_secure: SecureKafka,
                                                        tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(kafka_secure.password + "\n")
    table = {**kafka_secure.kafka_table("SCRAM-SHA-256"), "sasl_password_file": str(secret)}
    prefix = f"pw{os.getpid()}"
    out = _cli("topics", "create", *_sets(table), "--set", f"topics.requests={prefix}.req",
               "--set", f"topics.results={prefix}.res", "--partitions", "1")
    assert out.returncode == 0, out.stderr
    assert f"{prefix}.req: created" in out.stdout
