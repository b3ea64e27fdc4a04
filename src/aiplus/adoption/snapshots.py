"""Settled monthly windows, summed once: per organization, its successful requests, tool-call requests and tokens
in each month's trailing window, so a report reads one row per active organization and month instead of every
rollup row in every window.

A month's window is settled ``SETTLE_DAYS`` after it ends; later events for it (clock skew, very late settles)
are not reflected until the month is summed again (``refresh(..., rebuild=True)``). The register is joined at
read time, so register changes and the threshold N apply at once; only ``window_days`` is part of the key.

Months not stored (not settled yet, or never refreshed) are measured live from ``usage_daily``: the same figures,
slower. See docs/adoption.md, "Performance". The tables are ``adoption_window_months`` and
``adoption_window_sums`` (storage/tables.py, migration 0002).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from aiplus.storage.tables import adoption_window_months as window_months
from aiplus.storage.tables import adoption_window_sums as window_sums
from aiplus.storage.tables import usage_daily

SETTLE_DAYS = 7


def settled(end: date, today: date) -> bool:
    return end + timedelta(days=SETTLE_DAYS) <= today


def stored_months(conn: sa.Connection, window_days: int, months: list[date]) -> set[date]:
    if not months:
        return set()
    query = sa.select(window_months.c.month_end).where(
        window_months.c.window_days == window_days,
        window_months.c.month_end >= months[0],
        window_months.c.month_end <= months[-1],
    )
    return set(conn.scalars(query)) & set(months)


def per_org_sums(window_days: int, end: date) -> sa.Select:
    """Successful requests, tool-call requests and tokens per organization in the window ending on ``end``."""
    d = usage_daily
    return (
        sa.select(
            d.c.org_id,
            sa.func.sum(d.c.requests).label("n"),
            sa.func.sum(d.c.tool_requests).label("t"),
            sa.func.sum(d.c.prompt_tokens + d.c.completion_tokens).label("tok"),
        )
        .where(d.c.day > end - timedelta(days=window_days), d.c.day <= end, d.c.status == "ok")
        .group_by(d.c.org_id)
    )


def _insert(conn: sa.Connection, table: sa.Table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def store_month(engine: sa.Engine, window_days: int, end: date, *, rebuild: bool = False) -> bool:
    """Sum one window into ``adoption_window_sums`` (in SQL, one transaction); False if another process did."""
    with engine.begin() as conn:
        if rebuild:
            for table in (window_sums, window_months):
                conn.execute(
                    table.delete().where(table.c.window_days == window_days, table.c.month_end == end)
                )
        marker = _insert(conn, window_months).on_conflict_do_nothing()
        claimed = conn.execute(
            marker.values(window_days=window_days, month_end=end, computed_at=datetime.now(UTC))
        ).rowcount
        if not claimed:
            return False
        sums = per_org_sums(window_days, end).subquery()
        source = sa.select(
            sa.literal(window_days, sa.Integer),
            sa.literal(end, sa.Date),
            sums.c.org_id,
            sums.c.n,
            sums.c.t,
            sums.c.tok,
        )
        columns = ["window_days", "month_end", "org_id", "requests", "tool_requests", "tokens"]
        conn.execute(window_sums.insert().from_select(columns, source))
    return True


def refresh(
    engine: sa.Engine,
    window_days: int,
    months: list[date],
    *,
    today: date | None = None,
    rebuild: bool = False,
) -> int:
    """Store every settled month of ``months`` not stored yet (all of them with ``rebuild``); returns how many."""
    today = today or datetime.now(UTC).date()
    with engine.connect() as conn:
        done = set() if rebuild else stored_months(conn, window_days, months)
    todo = [m for m in months if settled(m, today) and m not in done]
    return sum(store_month(engine, window_days, m, rebuild=rebuild) for m in todo)
