"""The upstream deadlines are settings of a model, validated when the configuration is read."""

import pytest

from aiplus.config import ConfigError, load_settings


def write(tmp_path, extra: str):
    path = tmp_path / "aiplus.toml"
    path.write_text(f'[[models]]\nid = "m"\nengine = "openai"\nupstreams = ["http://gpu:8000/v1"]\n{extra}\n')
    return path


def test_deadlines_are_read_per_model(tmp_path):
    settings = load_settings(write(tmp_path, "first_byte_timeout_s = 5\nidle_timeout_s = 2.5"), env={})
    model = settings.model("m")
    assert (model.first_byte_timeout_s, model.idle_timeout_s, model.request_timeout_s) == (5, 2.5, 600.0)


@pytest.mark.parametrize(
    "line",
    [
        "first_byte_timeout_s = 0",
        "idle_timeout_s = -1",
        'request_timeout_s = "10"',
        "idle_timeout_s = inf",
        "first_byte_timeout_s = true",
    ],
)
def test_nonsense_deadlines_are_refused(tmp_path, line):
    with pytest.raises(ConfigError, match=line.split(" ")[0]):
        load_settings(write(tmp_path, line), env={})
