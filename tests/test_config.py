import dataclasses
import subprocess
import sys

import pytest

from pipeline.config import ConfigError, amended, load_config, reference
from tools.status import StatusSettings
from workers.settings import Settings


def test_file_then_environment_then_flags(tmp_path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[kafka]\nbootstrap = "file:1"\nlinger_ms = 7\n[scorer]\nmax_wait_ms = 3\n')
    s = load_config(Settings, f, env={"ADSTREAM_KAFKA_BOOTSTRAP": "env:2"},
                    overrides=["kafka.linger_ms=9", "topics.partitions=3"])
    assert s.kafka.bootstrap == "env:2"
    assert s.kafka.linger_ms == 9 and s.topics.partitions == 3
    assert s.scorer.max_wait_ms == 3.0


def test_loaded_settings_are_frozen_and_amended_makes_a_changed_copy(tmp_path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[kafka]\nbootstrap = "file:1"\n[kafka.consumer_options]\nmax_poll_records = 7\n')
    s = load_config(Settings, f, env={}, overrides=["kafka.consumer_options.fetch_min_bytes=2"])
    assert s.kafka.consumer_options == {"max_poll_records": 7, "fetch_min_bytes": 2}
    for table, key, value in [("kafka", "bootstrap", "other:2"), ("topics", "partitions", 9),
                              ("scorer", "model_repo", "elsewhere"), ("metrics", "port", 1),
                              ("tracing", "sample_ratio", 1.0), ("log", "level", "debug")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(s, table), key, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kafka = s.kafka  # type: ignore[misc]
    status = load_config(StatusSettings, env={"ADSTREAM_KAFKA_BOOTSTRAP": "env:3"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.kafka.bootstrap = "x"  # type: ignore[misc]
    changed = amended(s, kafka={"bootstrap": "other:2"}, topics={"partitions": 9})
    assert (changed.kafka.bootstrap, changed.topics.partitions) == ("other:2", 9)
    assert changed.kafka.consumer_options == s.kafka.consumer_options
    assert (s.kafka.bootstrap, s.topics.partitions) == ("file:1", 8)  # the original unchanged
    assert changed.scorer is s.scorer  # tables not named are shared, not copied


@pytest.mark.parametrize(
    ("text", "env", "flags", "message"),
    [
        ("[kafak]\nx = 1\n", {}, [], "unknown table [kafak]"),
        ("[kafka]\nlinger = 1\n", {}, [], "unknown setting kafka.linger"),
        ('[kafka]\nlinger_ms = "soon"\n', {}, [], "kafka.linger_ms: expected int"),
        ("[kafka\n", {}, [], "not valid TOML"),
        ("", {"ADSTREAM_ACTOR_MAX_IN_FLIGHT": "lots"}, [], "ADSTREAM_ACTOR_MAX_IN_FLIGHT"),
        ("", {}, ["actor.max_in_flight"], "expected TABLE.KEY=VALUE"),
    ],
)
def test_bad_settings_say_where_they_came_from(tmp_path, text, env, flags, message) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(Settings, f, env=env, overrides=flags)
    assert message in str(info.value)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(Settings, tmp_path / "nope.toml", env={})


def test_reference_lists_every_setting_with_its_environment_variable() -> None:
    rows = {r[0]: r for r in reference(Settings)}
    assert rows["kafka.bootstrap"][2] == "ADSTREAM_KAFKA_BOOTSTRAP"
    assert rows["actor.max_in_flight"][1] == "2000"
    assert len(rows) > 30


# ---- allowed values, declared once on each field ----------------------------------------------


@pytest.mark.parametrize(("flag", "named", "allowed"), [
    ("kafka.linger_ms=-5", "kafka.linger_ms", "must be >= 0"),
    ("kafka.compression=snappy", "kafka.compression", "installed here: none, gzip"),
    ("kafka.compression=brotli", "kafka.compression",
     "must be one of none, gzip, snappy, lz4, zstd"),
    ("scorer.precision=int8", "scorer.precision", "must be one of float32, float16"),
    ("topics.partitions=0", "topics.partitions", "must be >= 1"),
    ("log.level=loud", "log.level", "must be one of debug, info, warning, error, critical"),
    ("scorer.gpu_pool_fraction=1.5", "scorer.gpu_pool_fraction", "must be <= 1"),
    ("kafka.security_protocol=TLS", "kafka.security_protocol",
     "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("kafka.bootstrap=b1:9092,b2", "kafka.bootstrap", "('b2' is not)"),
])
def test_a_value_outside_what_a_setting_allows_is_refused_naming_both(flag, named, allowed
                                                                       ) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Settings, env={}, overrides=[flag])
    text = str(info.value)
    assert f"--set {flag}: {named} " in text and allowed in text, text


def test_the_same_check_applies_to_the_file_and_the_environment(tmp_path) -> None:
    f = tmp_path / "a.toml"
    f.write_text("[topics]\npartitions = 0\n")
    with pytest.raises(ConfigError, match=r"a.toml: topics.partitions: topics.partitions must"):
        load_config(Settings, f, env={})
    with pytest.raises(ConfigError,
                       match=r"environment ADSTREAM_KAFKA_LINGER_MS: kafka\.linger_ms"):
        load_config(Settings, env={"ADSTREAM_KAFKA_LINGER_MS": "-1"})


def test_defaults_satisfy_their_own_rules() -> None:
    from pipeline.setting_rules import rule_of

    s = Settings()
    for table in vars(s):
        section = getattr(s, table)
        for key, value in vars(section).items():
            assert rule_of(type(section), key).problem(value) is None, f"{table}.{key}"


def test_reference_shows_what_each_setting_allows() -> None:
    rows = {r[0]: r for r in reference(Settings)}
    assert rows["kafka.linger_ms"][3] == ">= 0"
    assert rows["topics.partitions"][3] == ">= 1"
    assert rows["scorer.precision"][3] == "`float32`, `float16`"
    assert rows["scorer.gpu_pool_fraction"][3] == "> 0, <= 1"
    assert "AIOKafkaConsumer" in rows["kafka.consumer_options"][3]


@pytest.mark.parametrize("flags", [["--log-level", "loud"], ["--set", "kafka.linger_ms=-5"],
                                   ["--set", "kafka.consumer_options.max_pol_records=5"]])
def test_a_bad_setting_on_the_command_line_is_one_line_not_a_traceback(flags) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", *flags],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("adstream: configuration error: --set ")


def test_cross_setting_checks_name_what_is_missing(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"SASL_SSL needs kafka\.sasl_username"):
        load_config(Settings, env={}, overrides=["kafka.security_protocol=SASL_SSL"])
    with pytest.raises(ConfigError,
                       match=r"needs kafka\.sasl_password or kafka\.sasl_password_file"):
        load_config(Settings, env={}, overrides=["kafka.security_protocol=SASL_SSL",
                                                 "kafka.sasl_username=u"])
    with pytest.raises(ConfigError, match=r"kafka.ssl_ca_file: .*nope.pem: no such file"):
        load_config(Settings, env={}, overrides=[f"kafka.ssl_ca_file={tmp_path}/nope.pem"])
    with pytest.raises(ConfigError, match=r"actor\.resume_in_flight .* must be below"):
        load_config(Settings, env={}, overrides=["actor.resume_in_flight=3000"])


# ---- pass-through client options -------------------------------------------------------------


def test_pass_through_options_from_file_flags_and_environment(tmp_path) -> None:
    f = tmp_path / "a.toml"
    f.write_text("[kafka.consumer_options]\nmax_poll_records = 50\n"
                 "[kafka.producer_options]\nretry_backoff_ms = 250\n")
    s = load_config(Settings, f, env={"ADSTREAM_KAFKA_ADMIN_OPTIONS": '{"metadata_max_age_ms": 9}'},
                    overrides=["kafka.consumer_options.fetch_min_bytes=2"])
    assert s.kafka.consumer_options == {"max_poll_records": 50, "fetch_min_bytes": 2}
    assert s.kafka.producer_options == {"retry_backoff_ms": 250}
    assert s.kafka.admin_options == {"metadata_max_age_ms": 9}


@pytest.mark.parametrize(("flag", "message"), [
    ("kafka.consumer_options.max_pol_records=5",
     "kafka.consumer_options has 'max_pol_records', which aiokafka's consumer does not take"),
    ("kafka.producer_options.fetch_min_bytes=5",
     "kafka.producer_options has 'fetch_min_bytes', which aiokafka's producer does not take"),
    ("kafka.producer_options.acks=1", "may not set acks (adstream produces with acks=all"),
    ("kafka.consumer_options.security_protocol=SSL",
     "may not set security_protocol (use kafka.security_protocol)"),
    ("kafka.linger_ms.x=1", "kafka.linger_ms is not a table"),
])
def test_an_option_the_client_does_not_take_is_refused(flag, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Settings, env={}, overrides=[flag])
    assert message in str(info.value)


def test_pass_through_accepts_what_the_client_signature_takes() -> None:
    import inspect

    from aiokafka import AIOKafkaConsumer

    from pipeline.kafka_passthrough import accepted

    assert accepted("consumer") == set(inspect.signature(AIOKafkaConsumer.__init__).parameters
                                       ) - {"self", "topics"}


def test_to_toml_round_trips_tables_and_masks_only_when_asked(tmp_path) -> None:
    from pipeline.config import to_toml

    s = load_config(Settings, env={}, overrides=["kafka.sasl_password=s3cret",
                                                 "kafka.consumer_options.max_poll_records=7"])
    f = tmp_path / "resolved.toml"
    f.write_text(to_toml(s))
    assert load_config(Settings, f, env={}) == s
    masked = to_toml(s, masked=True)
    assert "s3cret" not in masked and 'sasl_password = "***"' in masked
    assert 'ssl_key_password = ""' in masked  # an unset secret shows as unset
