import pytest

from pipeline.config import ConfigError, load_config, reference
from workers.settings import Settings


def test_file_then_environment_then_flags(tmp_path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[kafka]\nbootstrap = "file:1"\nlinger_ms = 7\n[scorer]\nmax_wait_ms = 3\n')
    s = load_config(Settings, f, env={"ADSTREAM_KAFKA_BOOTSTRAP": "env:2"},
                    overrides=["kafka.linger_ms=9", "topics.partitions=3"])
    assert s.kafka.bootstrap == "env:2"
    assert s.kafka.linger_ms == 9 and s.topics.partitions == 3
    assert s.scorer.max_wait_ms == 3.0


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
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(Settings, tmp_path / "nope.toml", env={})


def test_reference_lists_every_setting_with_its_environment_variable() -> None:
    rows = {r[0]: r for r in reference(Settings)}
    assert rows["kafka.bootstrap"][2] == "ADSTREAM_KAFKA_BOOTSTRAP"
    assert rows["actor.max_in_flight"][1] == "2000"
    assert len(rows) > 30
