"""Small hand-made ledgers whose penetration is worked out by hand, on SQLite and on PostgreSQL."""

from datetime import UTC, date

import pytest

from aiplus.adoption.penetration import Definition, last_complete_month_end, month_ends, penetration_series
from aiplus.adoption.register import insert_register
from aiplus.storage.tables import usage_daily

REGISTER = [
    {"id": "o1", "name": "Small bank", "sector": "finance", "region": "North", "employees": 20},
    {"id": "o2", "name": "Big bank", "sector": "finance", "region": "South", "employees": 300},
    {"id": "o3", "name": "Tiny dev shop", "sector": "ict", "region": "North", "employees": 5},
    {"id": "o4", "name": "Never uses it", "sector": "ict", "region": "North", "employees": 60},
]
EMPLOYEES = 385


def rollup(day, org, requests, status="ok", tools=0, tokens=100, model="m"):
    return {
        "day": date.fromisoformat(day),
        "org_id": org,
        "model": model,
        "status": status,
        "requests": requests,
        "tool_requests": tools,
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
        "cost_micros": 0,
    }


LEDGER = [
    rollup(
        "2026-01-31", "o1", 6, model="a"
    ),  # o1: exactly 10 on the window's last day, split over two models
    rollup("2026-01-31", "o1", 4, model="b"),
    rollup("2026-01-01", "o2", 1),  # o2: one day before January's 30-day window (Jan 2..Jan 31)
    rollup("2026-01-15", "o2", 9),
    rollup("2026-01-15", "o2", 5, status="error"),  # failures never count
    rollup("2026-01-02", "o3", 12, tools=12),  # o3: first day of January's window, all with tool calls
    rollup("2026-01-20", "x9", 500),  # a tenant outside the register: not counted anywhere
]


@pytest.fixture
def db(db):
    """The shared database fixture (SQLite and PostgreSQL), holding this module's register and ledger."""
    with db.begin() as conn:
        insert_register(conn, REGISTER)
        conn.execute(usage_daily.insert(), LEDGER)
    return db


def series(engine, by="sector", detail="all", **rule):
    with engine.connect() as conn:
        return penetration_series(conn, Definition(**rule), by=by, as_of=date(2026, 2, 28), detail=detail)


def test_months_run_from_first_usage_to_last_complete_month(db):
    s = series(db)
    assert s.months == [date(2026, 1, 31), date(2026, 2, 28)]
    assert last_complete_month_end(date(2026, 3, 30)) == date(2026, 2, 28)
    assert month_ends(date(2024, 1, 15), date(2024, 3, 31))[1] == date(2024, 2, 29)


def test_org_and_employment_penetration_by_hand(db):
    s = series(db)
    jan, feb = s.total
    # January: o1 (10 on Jan 31) and o3 (12 on Jan 2); o2 has 9 ok in the window (Jan 1 is outside).
    assert (jan.orgs, jan.adopting, jan.penetration) == (4, 2, 0.5)
    assert jan.employment_penetration == (20 + 5) / EMPLOYEES
    assert jan.agent_penetration == 0.25
    assert jan.tokens == 4 * 200 and jan.intensity == 800 / EMPLOYEES  # ok rows of o1 (2), o2, o3
    # February's window is Jan 30..Feb 28: only o1's Jan 31 requests are in it.
    assert (feb.adopting, feb.penetration, feb.agent) == (1, 0.25, 0)
    assert feb.employment_penetration == 20 / EMPLOYEES
    finance, ict = s.groups["finance"], s.groups["ict"]
    assert [c.penetration for c in finance] == [0.5, 0.5]
    assert [c.penetration for c in ict] == [0.5, 0.0]
    assert list(s.groups) == ["finance", "ict"]


def test_cuts_by_region_and_size(db):
    by_region = series(db, by="region")
    assert {k: v[0].adopting for k, v in by_region.groups.items()} == {"North": 2, "South": 0}
    assert by_region.groups["North"][0].orgs == 3
    by_size = series(db, by="size")
    assert list(by_size.groups) == ["micro", "small", "medium", "large"]
    assert [by_size.groups[k][0].penetration for k in by_size.groups] == [1.0, 1.0, 0.0, 0.0]


def test_agent_use_rule_counts_only_tool_requests(db):
    jan, feb = series(db, agent_use_requires_tools=True).total
    assert (jan.adopting, feb.adopting) == (1, 0)


def test_longer_window_and_threshold(db):
    jan, feb = series(db, window_days=60).total
    # Feb's 60-day window is Dec 31..Feb 28: o2 now has 1 + 9 = 10; o3's 12 on Jan 2 count too.
    assert (jan.adopting, feb.adopting) == (3, 3)  # Jan 1 is inside January's 60-day window too
    jan, _ = series(db, min_requests=11).total
    assert jan.adopting == 1  # only o3 with 12


def test_no_usage_gives_zero_not_errors(sqlite_db):
    with sqlite_db.begin() as conn:
        insert_register(conn, REGISTER)
    s = series(sqlite_db)
    assert s.months == [date(2026, 2, 28)]
    assert s.total[0].penetration == 0.0 and s.total[0].orgs == 4


def test_latest_detail_measures_agents_and_tokens_in_the_last_month_only(db):
    full, lean = series(db).total, series(db, detail="latest").total
    assert [c.adopting for c in lean] == [c.adopting for c in full]
    assert [c.adopting_employees for c in lean] == [c.adopting_employees for c in full]
    assert (lean[0].agent, lean[0].tokens, lean[0].agent_penetration, lean[0].intensity) == (
        None,
        None,
        None,
        None,
    )
    assert (lean[1].agent, lean[1].tokens) == (full[1].agent, full[1].tokens)
    assert series(db, detail="latest", agent_use_requires_tools=True).total[0].adopting == 1


def test_stored_window_sums_give_the_live_figures(db):
    from aiplus.adoption import snapshots
    from aiplus.adoption.report import refresh_snapshots

    live, live_size = series(db), series(db, by="size")
    months = [date(2026, 1, 31), date(2026, 2, 28)]
    assert snapshots.refresh(db, 30, months, today=date(2026, 3, 6)) == 1  # February is not settled yet
    assert snapshots.refresh(db, 30, months, today=date(2026, 3, 7)) == 1
    with db.connect() as conn:
        assert refresh_snapshots(conn, Definition(), as_of=date(2026, 2, 28)) == 0  # nothing left to store
        assert snapshots.stored_months(conn, 30, months) == set(months)
    stored = series(db, detail="latest")
    assert series(db, by="size", detail="latest").groups == live_size.groups
    assert stored.total == live.total and stored.groups == live.groups  # every month detailed, from storage
    assert [c.adopting for c in series(db, min_requests=11).total] == [1, 0]  # N applies at read time
    with db.begin() as conn:  # a late event for January: seen only after a rebuild
        conn.execute(usage_daily.insert(), [rollup("2026-01-20", "o4", 10)])
    assert series(db).total[0].adopting == 2
    assert snapshots.refresh(db, 30, months, today=date(2026, 3, 7), rebuild=True) == 2
    assert series(db).total[0].adopting == 3


def test_through_the_ledger_days_are_utc(sqlite_db):
    """Events written by the ledger: the rollup day is the UTC date, so a request at 00:30 in UTC+8 on
    1 February counts for January (16:30 UTC on 31 January), and one at 00:30 UTC on 1 February does not."""
    from datetime import datetime, timedelta, timezone

    from aiplus.metering.ledger import UsageEvent, write_events

    def event(i, org, when, status="ok"):
        return UsageEvent(f"r-{org}-{i}", org, None, "m", "chat", 10, 5, status, False, when, 50, 100, 7)

    utc8 = timezone(timedelta(hours=8))
    mid_jan = datetime(2026, 1, 15, 12, tzinfo=UTC)
    events = [event(i, "o1", mid_jan) for i in range(9)] + [
        event(9, "o1", datetime(2026, 2, 1, 0, 30, tzinfo=utc8))
    ]
    events += [event(i, "o2", mid_jan) for i in range(9)] + [
        event(9, "o2", datetime(2026, 2, 1, 0, 30, tzinfo=UTC))
    ]
    events += [event(i, "o3", mid_jan, status="error") for i in range(20)]
    with sqlite_db.begin() as conn:
        insert_register(conn, REGISTER)
        assert write_events(conn, events) == 40
        assert write_events(conn, events) == 0  # idempotent: the rollups count each request once
    jan, feb = series(sqlite_db).total
    assert (jan.adopting, feb.adopting) == (1, 0)
    assert jan.tokens == 10 * 15 + 9 * 15  # o1's ten and o2's nine successful requests in January's window
