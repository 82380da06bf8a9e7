"""The local real-Kafka broker: fixture, restart durability, stop and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tools import kafka as kafka_local
from tools.kafka import (
    KAFKA_VERSION,
    broker_answers,
    describe_cluster,
    ensure_kafka,
    start_broker,
    stop_broker,
)
from tools.kafka.broker_config import scram_args, server_config
from tools.kafka.processes import free_port


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="adstream")
    kafka_local.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


async def _create_and_produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 20) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            got += [msg.value for msgs in batches.values() for msg in msgs if msg.value]
    finally:
        await consumer.stop()
    return got


@pytest.mark.kafka
async def test_fixture_broker_answers(kafka_bootstrap: str) -> None:
    assert await broker_answers(kafka_bootstrap)
    info = await describe_cluster(kafka_bootstrap)
    assert info["cluster_id"]
    brokers = info["brokers"]
    assert isinstance(brokers, list) and len(brokers) == 1
    assert isinstance(info["topics"], list)


@pytest.mark.kafka
def test_restart_keeps_topic_and_messages(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    topic = "durable-test"
    values = [f"message-{i}".encode() for i in range(3)]
    broker = start_broker(data_dir=data_dir)
    try:
        state = json.loads((data_dir / "broker.json").read_text())
        assert state["pid"] == broker.pid and state["port"] == broker.port
        assert state["version"] == KAFKA_VERSION
        # Starting again while it runs returns the running broker.
        assert start_broker(data_dir=data_dir).pid == broker.pid
        asyncio.run(_create_and_produce(broker.bootstrap, topic, values))

        assert stop_broker(data_dir)
        assert not asyncio.run(broker_answers(broker.bootstrap, timeout_s=2))
        assert not stop_broker(data_dir)  # nothing left to stop

        again = start_broker(data_dir=data_dir)
        assert again.port == broker.port and again.pid != broker.pid
        topics = asyncio.run(describe_cluster(again.bootstrap))["topics"]
        assert isinstance(topics, list) and topic in topics
        assert asyncio.run(_consume(again.bootstrap, topic, len(values))) == values
    finally:
        stop_broker(data_dir)
    assert (data_dir / "broker.log").is_file()


def test_stop_without_broker_returns_false(tmp_path: Path) -> None:
    assert stop_broker(tmp_path) is False
    (tmp_path / "broker.json").write_text('{"pid": 1, "port": 1, "controller_port": 2}')
    assert stop_broker(tmp_path) is False  # pid 1 is not our broker


@pytest.mark.kafka
def test_ensure_kafka_is_idempotent() -> None:
    libs = ensure_kafka()
    assert ensure_kafka() == libs
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (libs.parent / ".complete").is_file()


@pytest.mark.kafka
def test_cli_status(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["kafka", "status", "--bootstrap", kafka_bootstrap]) == 0
    out = capsys.readouterr().out
    assert f"Kafka at {kafka_bootstrap}: answering" in out
    assert "cluster id: " in out and "brokers: 1@" in out


def test_cli_status_not_answering(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert _cli(["kafka", "status", "--bootstrap", f"127.0.0.1:{port}"]) == 1
    assert "not answering" in capsys.readouterr().out


def test_cluster_ids_never_start_with_a_dash() -> None:
    from tools.kafka.broker_config import new_cluster_id

    assert not any(new_cluster_id().startswith("-") for _ in range(5000))


def test_sasl_ssl_listener_properties_and_scram_users(tmp_path: Path) -> None:
    listener = kafka_local.SaslSslListener(tmp_path / "keystore.pem", (("u1", "p1"), ("u2", "p2")),
                                           ("PLAIN", "SCRAM-SHA-512"))
    config = server_config(tmp_path, 9092, 9093, None, listener, 9094)
    assert config["listeners"].endswith(",SASL_SSL://127.0.0.1:9094")
    assert config["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094")
    assert "SASL_SSL:SASL_SSL" in config["listener.security.protocol.map"]
    assert config["inter.broker.listener.name"] == "PLAINTEXT"
    prefix = "listener.name.sasl_ssl."
    assert config[prefix + "sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-512"
    assert config[prefix + "ssl.keystore.type"] == "PEM"
    assert 'user_u1="p1" user_u2="p2"' in config[prefix + "plain.sasl.jaas.config"]
    assert "ScramLoginModule" in config[prefix + "scram-sha-512.sasl.jaas.config"]
    assert scram_args(listener) == [
        "--add-scram", "SCRAM-SHA-512=[name=u1,password=p1]",
        "--add-scram", "SCRAM-SHA-512=[name=u2,password=p2]"]
    plain = server_config(tmp_path, 9092, 9093, None)
    assert "SASL_SSL" not in plain["listeners"] and scram_args(None) == []
