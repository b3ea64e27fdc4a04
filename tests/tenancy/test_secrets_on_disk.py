"""Secrets stay secret: the data directory and the SQLite database are owner-only, and no full key reaches a log."""

import os
import stat

import httpx

from aiplus.config import Settings
from aiplus.storage.db import create_engine, migrate
from aiplus.tenancy.bootstrap import SECRETS_FILE, bootstrap
from tests.conftest import start_server


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_first_start_keeps_its_files_and_the_demo_key_private(tmp_path):
    old = os.umask(0o022)  # the usual umask: files would be world-readable unless created owner-only
    try:
        data = tmp_path / "fresh" / "data"
        server = start_server(tmp_path, data_dir=data)
    finally:
        os.umask(old)
    try:
        assert mode(data) == 0o700 and mode(data.parent) == 0o700
        assert mode(data / "journal") == 0o700
        for name in ("aiplus.db", "aiplus.db-wal", "aiplus.db-shm", "aiplus.db.migrate-lock", SECRETS_FILE):
            assert mode(data / name) == 0o600, name
        key = next(
            line.split("Bearer ")[1].split('"')[0]
            for line in (data / SECRETS_FILE).read_text().splitlines()
            if "Bearer " in line
        )
        log = server.log.read_text()
        assert key not in log and key[8:] not in log  # not even most of it
        assert str(data / SECRETS_FILE) in log  # the log says where it is
        r = httpx.get(f"{server.v1}/usage", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200  # and it is the real key
    finally:
        server.stop()


def test_a_terminal_is_shown_the_secrets(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "data"))
    engine = create_engine(settings.db_url)
    migrate(engine)
    said: list[str] = []
    boot = bootstrap(engine, settings, said.append, terminal=True)
    engine.dispose()
    assert boot.admin_token in "\n".join(said) and boot.demo_key in "\n".join(said)
    assert not (tmp_path / "data" / SECRETS_FILE).exists()
