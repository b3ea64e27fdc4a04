"""The one lock billing writes take: adopting a version and closing a month each check what is stored, then write."""

from __future__ import annotations

import sqlalchemy as sa

BILLING_LOCK_ID = 7_243_011  # PostgreSQL advisory lock: one adoption or closing at a time


def serialize(conn: sa.Connection) -> None:
    """Adopting a version and closing a month check, then write: on PostgreSQL, one at a time (held until commit).

    SQLite serializes writers by itself.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({BILLING_LOCK_ID})")
