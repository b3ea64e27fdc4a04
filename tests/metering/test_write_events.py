from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from aiplus.metering.ledger import UsageEvent, write_events
from aiplus.storage.tables import usage_daily, usage_events
from aiplus.tenancy.orgs import create_org

T0 = datetime(2026, 11, 28, 23, 59, 30, tzinfo=UTC)


def event(i: int, org: str = "a", model: str = "m1", status: str = "ok", at: datetime = T0) -> UsageEvent:
    return UsageEvent(
        request_id=f"req-{org}-{model}-{i}",
        org_id=org,
        key_id=None,
        model=model,
        endpoint="chat",
        prompt_tokens=10 + i,
        completion_tokens=2 * i,
        status=status,
        used_tools=i % 3 == 0,
        started_at=at + timedelta(seconds=i),
        ttft_ms=5,
        duration_ms=50,
        cost_micros=1000 * i + 7,
    )


def test_duplicates_are_no_ops(db):
    with db.begin() as conn:
        create_org(conn, name="A", sector="ict", org_id="a")
    batch = [event(i) for i in range(50)]
    with db.connect() as conn:
        assert write_events(conn, batch) == 50
    with db.connect() as conn:
        assert write_events(conn, batch + batch[:10]) == 0
        assert write_events(conn, [event(50), event(50), event(1)]) == 1
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(usage_events)).scalar() == 51


def test_rollups_equal_raw_sums(db):
    events = [
        event(i, org=org, model=model, status=status)
        for i in range(60)
        for org, model, status in [("a", "m1", "ok"), ("b", "m2", "error"), ("a", "m2", "cancelled")]
        if (i + len(org) + len(model)) % 2 == 0 or status == "ok"
    ]
    with db.connect() as conn:
        for start in range(0, len(events), 17):  # several batches, some rollup rows hit twice
            write_events(conn, events[start : start + 17] + events[:5])
    raw = {}
    for e in events:
        key = (e.started_at.date(), e.org_id, e.model, e.status)
        acc = raw.setdefault(key, [0, 0, 0, 0, 0])
        for idx, value in enumerate(
            [1, int(e.used_tools), e.prompt_tokens, e.completion_tokens, e.cost_micros]
        ):
            acc[idx] += value
    with db.connect() as conn:
        rows = conn.execute(sa.select(usage_daily)).all()
        sql_raw = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(usage_events.c.prompt_tokens),
                sa.func.sum(usage_events.c.cost_micros),
            )
        ).one()
    got = {
        (r.day, r.org_id, r.model, r.status): [
            r.requests,
            r.tool_requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost_micros,
        ]
        for r in rows
    }
    assert got == raw
    assert len({k[0] for k in got}) == 2  # events straddle midnight UTC: two days
    assert sql_raw[0] == sum(v[0] for v in raw.values())
    assert sql_raw[1] == sum(r.prompt_tokens for r in rows)
    assert sql_raw[2] == sum(r.cost_micros for r in rows)


def test_overlapping_concurrent_writers_insert_each_event_once(db):
    from concurrent.futures import ThreadPoolExecutor

    events = [event(i) for i in range(400)]

    def write(batch):
        with db.begin() as conn:
            return write_events(conn, batch)

    batches = [events[::-1], events, events[100:300], events[::2], events[1::2][::-1]]
    with ThreadPoolExecutor(len(batches)) as pool:
        new = sum(pool.map(write, batches))
    assert new == 400
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(usage_daily.c.requests))).scalar() == 400
