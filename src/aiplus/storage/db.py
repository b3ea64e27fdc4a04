"""Database engines for SQLite (default, WAL) and PostgreSQL, and schema migrations through Alembic."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL mode and a busy timeout so readers never block the writer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A small prepared-statement cache: the ledger's multi-row inserts differ in length, each cached one is
        # large, and the default 128 of them grew a server by ~1 KiB a request until the cache filled.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "cached_statements": 4})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


MIGRATION_LOCK_ID = 7_243_001  # any constant: PostgreSQL advisory locks are keyed by a number


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    """One migrator at a time: several workers or machines starting together must not race to create tables."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                conn.commit()
        return
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision (idempotent, and safe when several processes start at once)."""
    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


@contextlib.contextmanager
def transaction(conn: sa.Connection) -> Iterator[None]:
    """Join the caller's transaction if one is open, else run in a new one that commits on success."""
    if conn.in_transaction():
        yield
    else:
        with conn.begin():
            yield


def dialect_insert(conn: sa.Connection, table: sa.Table):
    """An INSERT with ``on_conflict_do_*`` for this connection's dialect (SQLite 3.35+ or PostgreSQL)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def row_dict(row: sa.Row) -> dict:
    """A plain dict of a row, keyed by plain ``str`` (SQLAlchemy's ``quoted_name`` keys trip up orjson)."""
    return {str(k): v for k, v in row._mapping.items()}
