"""Throwaway databases for tests: a SQLite file, or a private schema on a shared PostgreSQL server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from aiplus.storage.db import create_engine, migrate

DEFAULT_PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


@contextlib.contextmanager
def scratch_database(
    kind: str, tmp_path: Path, pg_url: str = DEFAULT_PG_URL
) -> Iterator[tuple[sa.Engine, str]]:
    """A migrated engine and its URL; PostgreSQL gets a unique schema (dropped afterwards) so runs never collide."""
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
