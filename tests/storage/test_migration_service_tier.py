"""Migration 0006 (the service tier in the ledger) on databases that already hold usage, SQLite and PostgreSQL:
down, the rollups' service tiers are summed into one row per key; up, every earlier row reads as ``default``,
the rollups keep their counters and their index, and new events split by service tier."""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from aiplus.metering.events import UsageEvent, write_events
from aiplus.storage.db import alembic_config
from aiplus.storage.tables import usage_daily, usage_events, usage_tou

AT = datetime(2026, 11, 3, 9, tzinfo=UTC)


def _event(rid: str, service_tier: str, prompt: int = 100) -> UsageEvent:
    return UsageEvent(
        rid, "org", None, "m", "chat", prompt, 10, "ok", False, AT, 1, 2, prompt + 20, service_tier
    )


def _rollups(conn) -> dict[str, list[tuple]]:
    d, t = usage_daily.c, usage_tou.c
    daily = sa.select(d.status, d.requests, d.prompt_tokens, d.completion_tokens, d.cost_micros)
    tou = sa.select(t.month, t.band, t.requests, t.prompt_tokens, t.completion_tokens, t.cost_micros)
    return {
        "daily": sorted(tuple(r) for r in conn.execute(daily.where(d.org_id == "org"))),
        "tou": sorted(tuple(r) for r in conn.execute(tou.where(t.org_id == "org"))),
    }


def test_downgrade_then_upgrade_keeps_the_usage(db):
    with db.begin() as conn:
        write_events(conn, [_event("a", "flex"), _event("b", "priority", 200), _event("c", "default", 300)])
    command.downgrade(alembic_config(db), "0005")
    with db.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("usage_events")}
        assert "service_tier" not in columns
        assert _rollups(conn) == {  # three service tiers summed into one row per key
            "daily": [("ok", 3, 600, 30, 660)],
            "tou": [("2026-11", "", 3, 600, 30, 660)],
        }
        old = conn.execute(sa.text("SELECT request_id, prompt_tokens FROM usage_events ORDER BY 1")).all()
    assert [tuple(r) for r in old] == [("a", 100), ("b", 200), ("c", 300)]

    command.upgrade(alembic_config(db), "head")
    with db.begin() as conn:
        tiers = dict(conn.execute(sa.select(usage_events.c.request_id, usage_events.c.service_tier)).all())
        assert tiers == {"a": "default", "b": "default", "c": "default"}  # recorded before: default
        assert set(conn.execute(sa.select(usage_daily.c.service_tier)).scalars()) == {"default"}
        assert set(conn.execute(sa.select(usage_tou.c.service_tier)).scalars()) == {"default"}
        assert _rollups(conn)["daily"] == [("ok", 3, 600, 30, 660)]
        inspector = sa.inspect(conn)
        for table, index in (
            ("usage_daily", "ix_usage_daily_org_day"),
            ("usage_tou", "ix_usage_tou_org_month"),
        ):
            key = inspector.get_pk_constraint(table)
            assert key["constrained_columns"][-1] == "service_tier", (table, key)
            if conn.dialect.name == "postgresql":  # the name a later migration would drop it by
                assert key["name"] == f"{table}_pkey"
            assert index in {i["name"] for i in inspector.get_indexes(table)}
        # New events: one more default (adds to the migrated row), and a flex one (a row of its own).
        assert write_events(conn, [_event("d", "default"), _event("e", "flex", 50)]) == 2
    with db.connect() as conn:
        d = usage_daily.c
        rows = conn.execute(sa.select(d.service_tier, d.requests, d.prompt_tokens).order_by(d.service_tier))
        assert [tuple(r) for r in rows] == [("default", 4, 700), ("flex", 1, 50)]
        t = usage_tou.c
        rows = conn.execute(sa.select(t.service_tier, t.requests, t.prompt_tokens).order_by(t.service_tier))
        assert [tuple(r) for r in rows] == [("default", 4, 700), ("flex", 1, 50)]
