"""The ``aiplus`` command run as a user runs it, against a temporary data directory (or PostgreSQL schema)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiplus.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Aiplus:
    """``aiplus ARGS --config CONFIG`` in this process; returns the exit code and what it printed."""

    config: Path
    capsys: pytest.CaptureFixture

    def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        code = main([*argv, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return Result(code, out, err)


def write_config(path: Path, data_dir: Path, extra: str = "") -> Path:
    path.write_text(f'[server]\ndata_dir = "{data_dir}"\n{extra}')
    return path


@pytest.fixture
def clean_env(monkeypatch):
    """No AIPLUS_* variable of the caller's shell overrides the test's config file."""
    for name in list(os.environ):
        if name.startswith("AIPLUS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def aiplus(tmp_path, capsys, clean_env) -> Aiplus:
    """The CLI on a fresh SQLite database under a temporary data directory."""
    return Aiplus(write_config(tmp_path / "aiplus.toml", tmp_path / "data"), capsys)
