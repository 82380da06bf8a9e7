"""Every Kafka client's arguments come from one builder: security, then the caller's, then
the pass-through table; secrets stay out of reprs."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from certs import make_certs

from pipeline.config import ConfigError, load_config
from pipeline.kafka_clients import admin_kwargs, consumer_kwargs, kafka_options, producer_kwargs
from pipeline.kafka_security import read_password_file
from workers.settings import Settings


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls")).ca_file


def _options(*flags: str, wait: bool = True):
    return kafka_options(load_config(Settings, env={}, overrides=list(flags)).kafka,
                         wait_for_broker=wait)


def test_sasl_ssl_settings_become_aiokafka_security_arguments(ca_file, tmp_path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-the-file\nignored second line\n")
    opts = _options("kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-512",
                    "kafka.sasl_username=svc", f"kafka.sasl_password_file={secret}",
                    f"kafka.ssl_ca_file={ca_file}")
    kw = consumer_kwargs("b:9093", opts, group_id="g")
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == "from-the-file"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("commonName", "adstream test CA"),),)]
    assert kw["group_id"] == "g" and kw["bootstrap_servers"] == "b:9093"
    for build in (producer_kwargs, admin_kwargs):
        assert build("b:9093", opts)["ssl_context"] is ctx  # one context for every client


def test_plaintext_has_no_tls_or_sasl_arguments() -> None:
    kw = producer_kwargs("b:9092", _options())
    assert kw["security_protocol"] == "PLAINTEXT"
    assert not {"ssl_context", "sasl_mechanism", "sasl_plain_password"} & kw.keys()


def test_hostname_check_can_be_turned_off(ca_file) -> None:
    opts = _options("kafka.security_protocol=SSL", f"kafka.ssl_ca_file={ca_file}",
                    "kafka.ssl_check_hostname=false")
    assert admin_kwargs("b:1", opts)["ssl_context"].check_hostname is False


def test_pass_through_options_reach_only_their_kind_of_client() -> None:
    opts = _options("kafka.consumer_options.max_poll_records=17",
                    "kafka.producer_options.request_timeout_ms=1234",
                    "kafka.admin_options.metadata_max_age_ms=99")
    assert consumer_kwargs("b:1", opts)["max_poll_records"] == 17
    assert "max_poll_records" not in producer_kwargs("b:1", opts)
    assert producer_kwargs("b:1", opts)["request_timeout_ms"] == 1234  # overrides the default
    assert admin_kwargs("b:1", opts)["metadata_max_age_ms"] == 99


async def test_built_arguments_are_accepted_by_aiokafka() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    opts = _options("kafka.consumer_options.max_poll_records=3",
                    "kafka.producer_options.max_request_size=4096")
    consumer = AIOKafkaConsumer(**consumer_kwargs("127.0.0.1:1", opts))
    producer = AIOKafkaProducer(**producer_kwargs("127.0.0.1:1", opts))
    try:
        assert consumer._max_poll_records == 3  # what aiokafka kept
        assert producer._max_request_size == 4096
    finally:
        await consumer.stop()
        await producer.stop()


def test_the_password_is_not_in_any_repr(tmp_path) -> None:
    opts = _options("kafka.security_protocol=SASL_PLAINTEXT", "kafka.sasl_username=u",
                    "kafka.sasl_password=hunter2-secret")
    assert "hunter2-secret" not in repr(opts) and "hunter2-secret" not in repr(opts.security)
    assert opts.security.describe() == "SASL_PLAINTEXT, PLAIN as user 'u'"


def test_one_shot_commands_do_not_wait_for_the_broker() -> None:
    assert _options("kafka.connect_timeout_s=30").connect_timeout_s == 30
    assert _options("kafka.connect_timeout_s=30", wait=False).connect_timeout_s == 0


def test_unusable_tls_material_is_one_line_naming_the_setting(tmp_path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"kafka.ssl_ca_file: cannot load the TLS material"):
        _options("kafka.security_protocol=SSL", f"kafka.ssl_ca_file={bad}")
    empty = tmp_path / "pw"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"kafka.sasl_password_file: .*pw: the file is empty"):
        read_password_file(str(empty))
