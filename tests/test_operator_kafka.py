"""``adstream dlq show|redrive`` and ``results tail`` on the real broker with the roles running."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from adstream_client.wire import request_message
from pipeline.headers import now_ms
from pipeline.cli import main
from pipeline.transport import Outgoing, open_transport
from schemas import ScoreRequest

pytestmark = pytest.mark.kafka


def _cli(capsys, running, *argv: str) -> list[dict]:
    t = running.settings.topics
    code = main([*argv, "--bootstrap", running.bootstrap, "--set", f"topics.dlq={t.dlq}",
                 "--set", f"topics.results={t.results}", "--log-level", "error"])
    out = capsys.readouterr().out
    assert code == 0, out
    # the roles in this process log to stdout too; the command's lines are JSON objects
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _until(fetch, want: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


async def _produce(bootstrap: str, msgs: list[Outgoing]) -> None:
    producer = open_transport(bootstrap).producer()
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(m) for m in msgs])
    finally:
        await producer.stop()


def test_dead_letters_are_shown_decoded_filtered_and_redriven(running_pipeline, capsys) -> None:
    run, t = running_pipeline, running_pipeline.settings.topics
    tag = f"x{time.time_ns()}"
    missing = f"{t.requests}.{tag}.nowhere"
    req = ScoreRequest(f"dl-{tag}", "u-dl", {"ad_id": np.arange(2, dtype=np.int64),
                                              "bid": np.ones(2, np.float32)},
                       reply_to=missing, deadline_ms=now_ms() + 60_000)
    good = request_message(req, t.requests)
    junk = Outgoing(t.requests, f"junk {tag}".encode(), key=b"u-junk",
                    headers={"trace_id": tag.encode()})
    asyncio.run(_produce(run.bootstrap, [good, junk]))

    refused = _until(lambda: _cli(capsys, run, "dlq", "show", "--reason", missing), 1)
    assert len(refused) == 1
    dl = refused[0]
    assert dl["stage"] == "features" and dl["request_id"] == req.request_id
    assert dl["error"] == f"reply_to: topic {missing!r} does not exist"
    assert dl["source"].startswith(f"{t.requests}[") and dl["key"] == "u-dl"
    assert dl["value"]["msgpack"]["request_id"] == req.request_id
    assert dl["headers"]["trace_id"] == req.request_id
    assert _cli(capsys, run, "dlq", "show", "--reason", missing, "--stage", "scorer") == []
    assert _cli(capsys, run, "dlq", "show", "--reason", missing, "--since", "1h") == refused
    assert _cli(capsys, run, "dlq", "show", "--reason", missing, "--until", "1h") == []

    # the rejected answer went to the results topic, since reply_to does not exist
    answers = _until(lambda: _cli(capsys, run, "results", "tail", "--from-beginning",
                                  "--no-follow", "--request-id", req.request_id), 1)
    assert [(a["status"], a["reason"]) for a in answers] == [("rejected", dl["error"])]

    junk_dl = _until(lambda: _cli(capsys, run, "dlq", "show", "--reason",
                                  "not valid MessagePack", "--source-topic", t.requests,
                                  "--stage", "features"), 1)
    junk_dl = [d for d in junk_dl if d["headers"].get("trace_id") == tag]
    assert len(junk_dl) == 1 and junk_dl[0]["value"] == {"raw": f"junk {tag}"}

    # redrive the junk back to its source: it is refused again, same bytes, traceable
    part, off = junk_dl[0]["dlq"].split("[", 1)[1].split("]@")
    sent = _cli(capsys, run, "dlq", "redrive", "--offset", f"{part}:{off}")
    assert [(s["dlq"], s["to"], s["sent"]) for s in sent] == [(junk_dl[0]["dlq"], t.requests,
                                                                True)]
    again = _until(lambda: [d for d in _cli(capsys, run, "dlq", "show", "--reason",
                                            "not valid MessagePack")
                            if d["headers"].get("redriven_from") == junk_dl[0]["dlq"]], 1)
    assert len(again) == 1 and again[0]["value"] == junk_dl[0]["value"]
    assert again[0]["headers"]["trace_id"] == tag and again[0]["key"] == "u-junk"

    # --to another topic: the original bytes and key, a fresh deadline header
    copy_topic = f"{t.requests}.{tag}.copy"
    asyncio.run(open_transport(run.bootstrap).create_topics([copy_topic], 1))
    before = now_ms()
    _cli(capsys, run, "dlq", "redrive", "--reason", missing, "--to", copy_topic,
         "--deadline-ms", "5000")
    copies = _until(lambda: _read(run.bootstrap, copy_topic), 1)
    assert len(copies) == 1
    rec = copies[0]
    assert rec.value == good.value and rec.key == good.key
    assert before + 5000 <= int(rec.headers["deadline_ms"]) <= now_ms() + 5000
    assert rec.headers["trace_id"] == req.request_id.encode()
    assert not any(k.startswith("ts.") for k in rec.headers)


def test_redrive_without_a_choice_refuses_in_one_line(running_pipeline, capsys) -> None:
    code = main(["dlq", "redrive", "--bootstrap", running_pipeline.bootstrap, "--set",
                 f"topics.dlq={running_pipeline.settings.topics.dlq}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "give --all" in err


def _read(bootstrap: str, topic: str) -> list:
    async def go() -> list:
        consumer = open_transport(bootstrap).consumer([topic], None)
        await consumer.start()
        try:
            return await consumer.read_to_end()
        finally:
            await consumer.stop()
    return asyncio.run(go())
