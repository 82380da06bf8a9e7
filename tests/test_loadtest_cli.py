"""``adstream loadtest …`` on the command line: exit codes, messages, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.generate import generate, write_jsonl
from pipeline.cli import main


@pytest.fixture
def traffic_file(tmp_path: Path) -> Path:
    path = tmp_path / "traffic.jsonl"
    write_jsonl(path, generate(40, seed=9, candidates="uniform:5,60", timeout_ms=5000))
    return path


def _replay(traffic_file: Path, tmp_path: Path, model_repo: Path, *extra: str) -> int:
    return main(["loadtest", "replay", str(traffic_file), "--bootstrap",
                 f"memory://cli-{tmp_path.name}", "--with-workers", "--set",
                 f"scorer.model_repo={model_repo}", "--set", "topics.partitions=2",
                 "--progress", "plain", "--out", str(tmp_path / "RUN.json"), *extra])


def test_replay_writes_run_json_and_html_and_meets_a_loose_slo(traffic_file, tmp_path,
                                                               model_repo, capsys):
    code = _replay(traffic_file, tmp_path, model_repo, "--rate", "100", "--requests", "80",
                   "--warmup", "0.2", "--slo-p99-ms", "5000", "--html",
                   str(tmp_path / "report.html"))
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads((tmp_path / "RUN.json").read_text())
    assert doc["summary"]["sent"] == 80 and doc["summary"]["outcomes"]["lost"] == 0
    assert doc["slo"]["met"] and doc["command"].startswith("adstream loadtest replay")
    assert "latency   p50" in out and "SLO       p99 ≤ 5000 ms" in out
    assert " sending " in err or " done " in err  # plain progress lines
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "Where the time goes" in html
    # the report command reads it back
    assert main(["loadtest", "report", str(tmp_path / "RUN.json"), "--svg",
                 str(tmp_path / "main.svg")]) == 0
    assert (tmp_path / "main.svg").read_text().startswith("<svg")


def test_replay_exits_1_when_the_slo_is_missed(traffic_file, tmp_path, model_repo, capsys):
    code = _replay(traffic_file, tmp_path, model_repo, "--rate", "100", "--requests", "30",
                   "--slo-p99-ms", "0.001")
    assert code == 1
    assert "SLO missed: p99" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "mention"), [
    (["--rate", "-3"], "--rate must be > 0"),
    (["--speed", "2", "--arrival", "poisson"], "--arrival applies to --rate"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--requests", "0"], "--requests must be ≥ 1"),
    (["--rate", "10", "--requests", "5", "--warmup", "9"], "nothing would be measured"),
    (["--out", "/no/such/dir/RUN.json"], "does not exist"),
    (["--label", "nokey"], "expected KEY=VALUE"),
    (["--progress-interval", "0"], "--progress-interval must be > 0"),
    (["--batch-ms", "-1"], "--batch-ms must be in [0, 1000] ms"),
])
def test_bad_replay_flags_exit_2_with_the_reason(traffic_file, tmp_path, model_repo, capsys,
                                                 argv, mention):
    assert _replay(traffic_file, tmp_path, model_repo, *argv) == 2
    assert mention in capsys.readouterr().err


def test_bad_input_files_exit_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "a", "user_id": "u", "candidates": {"ad_id": [1]}}\n')
    assert main(["loadtest", "replay", str(bad), "--bootstrap", "memory://x",
                 "--with-workers"]) == 2
    assert "bad.jsonl:1: candidates.bid" in capsys.readouterr().err
    notrun = tmp_path / "RUN.json"
    notrun.write_text('{"hello": 1}')
    assert main(["loadtest", "report", str(notrun)]) == 2
    assert "not a load-test result" in capsys.readouterr().err
    assert main(["loadtest", "report", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_memory_broker_without_workers_is_refused(traffic_file, capsys):
    assert main(["loadtest", "replay", str(traffic_file), "--bootstrap", "memory://x",
                 "--rate", "10"]) == 2
    assert "add --with-workers" in capsys.readouterr().err


def test_sweep_finds_a_rate_and_prints_its_steps(traffic_file, tmp_path, model_repo, capsys):
    code = main(["loadtest", "sweep", str(traffic_file), "--bootstrap",
                 f"memory://sweep-{tmp_path.name}", "--with-workers", "--set",
                 f"scorer.model_repo={model_repo}", "--slo-p99-ms", "2000",
                 "--start-rate", "20", "--max-rate", "40", "--step-duration", "1",
                 "--warmup", "0.2", "--cooldown", "0", "--progress", "off",
                 "--out", str(tmp_path / "SWEEP.json"), "--html", str(tmp_path / "s.html")])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "SWEEP.json").read_text())
    assert [st["rate"] for st in doc["steps"]] == [20, 40], doc["steps"]
    assert doc["best"]["rate"] == 40
    assert "highest rate meeting p99 ≤ 2000 ms" in out and "step up" in out
    assert "Latency against offered rate" in (tmp_path / "s.html").read_text()
