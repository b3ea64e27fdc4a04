"""Settings reach every knob from aiplus.toml and the environment, and a bad value stops the start, naming it."""

import re

import pytest

from aiplus.cli import main
from aiplus.config import ConfigError, load_settings


def test_redis_prefix_and_revocation_from_toml_then_environment(tmp_path):
    config = tmp_path / "aiplus.toml"
    config.write_text('[server]\nredis_prefix = "city-a:"\nrevocation = "pubsub"\n')
    settings = load_settings(config, env={})
    assert (settings.redis_prefix, settings.revocation) == ("city-a:", "pubsub")
    env = {"AIPLUS_REDIS_PREFIX": "city-b:", "AIPLUS_REVOCATION": "strict"}
    settings = load_settings(config, env=env)
    assert (settings.redis_prefix, settings.revocation) == ("city-b:", "strict")
    assert (load_settings(None, env={}).redis_prefix, load_settings(None, env={}).revocation) == (
        "aiplus:",
        "strict",
    )


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ('revocation = "fast"', {}, "revocation (or AIPLUS_REVOCATION)"),
        ("", {"AIPLUS_REVOCATION": "sometimes"}, "revocation (or AIPLUS_REVOCATION)"),
        ('redis_prefix = ""', {}, "redis_prefix (or AIPLUS_REDIS_PREFIX)"),
        ("redis_prefix = 7", {}, "redis_prefix (or AIPLUS_REDIS_PREFIX)"),
        ("", {"AIPLUS_REDIS_PREFIX": "two words:"}, "redis_prefix (or AIPLUS_REDIS_PREFIX)"),
    ],
)
def test_a_bad_value_is_a_configuration_error_naming_the_setting(tmp_path, toml, env, named):
    config = tmp_path / "aiplus.toml"
    config.write_text(f"[server]\n{toml}\n")
    with pytest.raises(ConfigError, match=re.escape(f"[server] {named}: ")):
        load_settings(config, env=env)


def test_serve_refuses_to_start_with_a_bad_revocation_mode(tmp_path, capsys, monkeypatch):
    config = tmp_path / "aiplus.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\nrevocation = "eventually"\n')
    monkeypatch.delenv("AIPLUS_REVOCATION", raising=False)
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aiplus: error: configuration") and "revocation" in err and "'eventually'" in err
