"""``memory://`` is refused in one line by every command that is not one process end to end."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pipeline.cli import main, settings_from_args
from pipeline.in_process import InProcessOnly
from workers.settings import Settings

REFUSING = [
    ["topics", "create"],
    ["produce", "-"],
    ["worker", "scorer"],
    ["status"],
    ["kafka", "status"],
    ["dlq", "show"],
    ["dlq", "redrive", "--all"],
    ["results", "tail"],
    ["loadtest", "record", "--out", "x.adrec", "--duration", "1"],
]


@pytest.mark.parametrize("argv", REFUSING, ids=[" ".join(a) for a in REFUSING])
def test_a_command_given_the_in_process_broker_says_so_and_exits_2(argv, capsys) -> None:
    assert main([*argv, "--bootstrap", "memory://elsewhere"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"adstream {argv[0]}")
    assert "memory://elsewhere is the in-process broker, which exists only inside one process" \
        in err and "--bootstrap HOST:PORT" in err


def test_replay_refuses_it_without_workers_in_the_same_process(tmp_path, capsys) -> None:
    traffic = tmp_path / "t.jsonl"
    traffic.write_text('{"request_id": "r", "user_id": "u", '
                       '"candidates": {"ad_id": [1], "bid": [1.0]}}\n')
    assert main(["loadtest", "replay", str(traffic), "--rate", "5", "--bootstrap",
                 "memory://x"]) == 2
    assert "adstream loadtest replay: memory://x is the in-process broker" in \
        capsys.readouterr().err


def test_the_environment_and_config_file_are_checked_too(monkeypatch, tmp_path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[kafka]\nbootstrap = "memory://cfg"\n')
    assert main(["topics", "create", "--config", str(config)]) == 2
    monkeypatch.setenv("ADSTREAM_KAFKA_BOOTSTRAP", "memory://env")
    assert main(["topics", "create"]) == 2


def test_commands_that_run_everything_in_one_process_may_use_it() -> None:
    allowed = argparse.Namespace(bootstrap="memory://one", in_process=True, command="run")
    assert settings_from_args(Settings, allowed).kafka.bootstrap == "memory://one"
    refused = argparse.Namespace(bootstrap="memory://one", command="produce")
    with pytest.raises(InProcessOnly, match="adstream produce: memory://one"):
        settings_from_args(Settings, refused)


def test_the_console_script_prints_no_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "produce", "-", "--bootstrap",
                          "memory://x"], capture_output=True, text=True, input="", timeout=60,
                         check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize(("flags", "roles"), [([], ["fused"]), (["--fused"], ["fused"]),
                                              (["--three-hops"],
                                               ["features", "scorer", "aggregator"])])
def test_run_serves_with_the_fused_role_unless_asked_for_three_hops(monkeypatch, flags,
                                                                    roles) -> None:
    import tools.commands.worker as worker

    ran: list[list[str]] = []
    monkeypatch.setattr(worker, "_run_roles", lambda args, names: ran.append(names) or 0)
    assert main(["run", *flags, "--bootstrap", "memory://r"]) == 0
    assert ran == [roles]


def test_run_takes_one_topology(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--fused", "--three-hops"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
