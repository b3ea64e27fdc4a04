"""Database engines for SQLite (default, WAL) and PostgreSQL, and schema migrations through Alembic."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aiplus.storage.watchdog import Watchdog, patient

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def private_directory(path: str | os.PathLike) -> Path:
    """``path``, created owner-only (0700) where it is missing: it holds the server secret and key digests."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            directory.mkdir(mode=0o700)
            directory.chmod(0o700)  # mkdir's mode passes through the umask
    return path


def private_file(path: str | os.PathLike) -> None:
    """Create ``path`` empty and owner-only (0600) unless it exists (SQLite gives its -wal and -shm the same)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL mode and a busy timeout so readers never block the writer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_directory(Path(path).parent)
            private_file(path)
        # A small prepared-statement cache: the ledger's multi-row inserts differ in length, each cached one is
        # large, and the default 128 of them grew a server by ~1 KiB a request until the cache filled.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "cached_statements": 4})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = sa.create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args=_postgresql_deadlines(url),
    )
    Watchdog(STATEMENT_TIMEOUT_MS / 1000 + WATCHDOG_GRACE_S, PING_TIMEOUT_S).attach(engine)
    return engine


# A database that is unreachable (packets dropped) must cost seconds, not a hang: connecting gives up after
# CONNECT_TIMEOUT_S; on an open connection the kernel gives up after TCP_USER_TIMEOUT_MS without an ACK (a query
# sent into the void) and keepalives notice an idle connection gone; the server cancels a statement running longer
# than STATEMENT_TIMEOUT_MS; waiting for a pooled connection gives up after POOL_TIMEOUT_S; and the watchdog cuts
# a connection whose answer is later than the ping's PING_TIMEOUT_S, or a statement's timeout and
# WATCHDOG_GRACE_S (bytes acknowledged by a middlebox and dropped: see storage/watchdog.py). Callers answer 503.
CONNECT_TIMEOUT_S = 3
TCP_USER_TIMEOUT_MS = 3000
STATEMENT_TIMEOUT_MS = 10_000
POOL_TIMEOUT_S = 5
PING_TIMEOUT_S = 2.0
WATCHDOG_GRACE_S = 5.0


def _postgresql_deadlines(url: str) -> dict:
    options = sa.engine.make_url(url).query.get("options") or ()
    options = [options] if isinstance(options, str) else list(options)  # kept: connect_args replace the URL's
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "options": " ".join([*options, f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"]),
    }


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
        with engine.connect() as conn, patient(conn):
            conn.execute(sa.text("SET LOCAL statement_timeout = 0"))  # waiting for another migrator is fine
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
    private_file(f"{path}.migrate-lock")
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
