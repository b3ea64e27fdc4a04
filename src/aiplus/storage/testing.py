"""Throwaway databases for tests: a SQLite file, or a private schema on a shared PostgreSQL server.

The servers the tests share come from one place: ``AIPLUS_TEST_PG_URL`` and ``AIPLUS_TEST_REDIS_URL``, else the
local ones that ``make test`` starts (scripts/services.sh reads the same variables).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from aiplus.storage.db import create_engine, migrate

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def shared_pg_url() -> str:
    """The PostgreSQL server (and database) the tests make their private schemas in."""
    return os.environ.get("AIPLUS_TEST_PG_URL") or DEFAULT_PG_URL


def shared_redis_url() -> str:
    """The Redis server the tests share, each under its own key prefix."""
    return os.environ.get("AIPLUS_TEST_REDIS_URL") or DEFAULT_REDIS_URL


@contextlib.contextmanager
def scratch_database(kind: str, tmp_path: Path, pg_url: str | None = None) -> Iterator[tuple[sa.Engine, str]]:
    """A migrated engine and its URL; PostgreSQL gets a unique schema (dropped afterwards) so runs never collide."""
    pg_url = pg_url or shared_pg_url()
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'aiplus.db'}"
        engine = create_engine(url)
        migrate(engine)
        try:
            yield engine, url
        finally:
            engine.dispose()
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{pg_url}?options=-csearch_path%3D{schema}"
    engine = create_engine(url)
    try:
        migrate(engine)
        yield engine, url
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
