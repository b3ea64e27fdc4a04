"""The service tier in the ledger: each usage event records the band its request was served in, the rollups split
by it, and the usage API reports it — written directly, and end to end through a real ``aiplus serve`` on the
embedded model called with the official ``openai`` client, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
import sqlalchemy as sa

from aiplus.metering.events import UsageEvent, write_events
from aiplus.metering.usage import query_usage, totals_by_service_tier
from aiplus.storage.tables import usage_daily, usage_events, usage_tou
from tests.conftest import DEFAULT_MODEL, start_server

AT = datetime(2026, 11, 3, 9, tzinfo=UTC)


def _event(rid: str, service_tier: str = "default", status: str = "ok", prompt: int = 10) -> UsageEvent:
    completion = 5 if prompt else 0
    return UsageEvent(
        rid, "org", None, "m", "chat", prompt, completion, status, False, AT, 1, 2, 7, service_tier
    )


def test_rollups_and_usage_reports_split_by_service_tier(db):
    with db.begin() as conn:
        events = [_event("p1", "priority"), _event("f1", "flex"), _event("f2", "flex", prompt=20)]
        events += [_event("d1"), _event("r1", status="rejected", prompt=0)]
        assert write_events(conn, events) == 5
    with db.connect() as conn:
        d, t = usage_daily.c, usage_tou.c
        daily = conn.execute(sa.select(d.service_tier, d.status, d.requests, d.prompt_tokens)).all()
        tou = conn.execute(sa.select(t.service_tier, t.requests, t.prompt_tokens)).all()
        split = query_usage(conn, org_id="org", by_service_tier=True)
        whole = query_usage(conn, org_id="org")
        flex = query_usage(conn, org_id="org", service_tier="flex")
        with pytest.raises(ValueError, match="service_tier must be one of priority, default, flex"):
            query_usage(conn, service_tier="auto")
    assert sorted(tuple(r) for r in daily) == [
        ("default", "ok", 1, 10),
        ("default", "rejected", 1, 0),
        ("flex", "ok", 2, 30),
        ("priority", "ok", 1, 10),
    ]
    assert sorted(tuple(r) for r in tou) == [("default", 1, 10), ("flex", 2, 30), ("priority", 1, 10)]
    assert [(r["service_tier"], r["requests"], r["prompt_tokens"]) for r in split] == [
        ("priority", 1, 10),
        ("default", 2, 10),
        ("flex", 2, 30),
    ]
    assert [(r["requests"], r["prompt_tokens"]) for r in whole] == [(5, 50)] and "service_tier" not in whole[
        0
    ]
    assert [(r["requests"], r["prompt_tokens"]) for r in flex] == [(2, 30)]
    by_tier = totals_by_service_tier(split)
    assert (by_tier["flex"]["requests"], by_tier["default"]["failed_requests"]) == (2, 1)


def test_events_carry_a_known_service_tier():
    with pytest.raises(ValueError, match="service_tier='auto' is not one of priority, default, flex"):
        _event("x", "auto").to_row()
    row = _event("x", "flex").to_row()
    assert row["service_tier"] == "flex"
    del row["service_tier"]  # a journal line written before service tiers existed
    assert UsageEvent.from_row(row).service_tier == "default"


def _ledger(engine, ids: set[str], timeout: float = 20.0) -> dict[str, tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            e = usage_events.c
            query = sa.select(e.request_id, e.status, e.service_tier).where(e.request_id.in_(ids))
            found = {rid: (status, tier) for rid, status, tier in conn.execute(query)}
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_flex_request_lands_in_the_ledger_as_flex(tmp_path, database):
    env, engine = database
    server = start_server(tmp_path, env=env)
    try:
        org = server.new_org("Night Batch", tier="standard", sector="trade")
        client = openai.OpenAI(base_url=server.v1, api_key=org["key"], max_retries=0, timeout=120)
        ask = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        expected: dict[str, tuple[str, str]] = {}
        raw = client.chat.completions.with_raw_response.create(**ask, service_tier="flex")
        assert raw.parse().service_tier == "flex"
        expected[raw.headers["x-request-id"]] = ("ok", "flex")
        raw = client.responses.with_raw_response.create(
            model=DEFAULT_MODEL, input="Say hi.", max_output_tokens=4, service_tier="priority", store=False
        )
        assert raw.parse().service_tier == "priority"
        expected[raw.headers["x-request-id"]] = ("ok", "priority")
        raw = client.chat.completions.with_raw_response.create(**ask)  # the tier's own band
        assert raw.parse().service_tier == "default"
        expected[raw.headers["x-request-id"]] = ("ok", "default")
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**ask, service_tier="platinum")
        assert err.value.body["param"] == "service_tier"
        # refused before a band was known: metered in default (no tokens, so it costs nothing anyway)
        expected[err.value.response.headers["x-request-id"]] = ("rejected", "default")

        assert _ledger(engine, set(expected)) == expected
        auth = {"authorization": f"Bearer {org['key']}"}
        r = httpx.get(f"{server.v1}/usage", params={"by_service_tier": "true"}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert {row["service_tier"] for row in body["data"]} == {"priority", "default", "flex"}
        by_tier = body["totals_by_service_tier"]
        assert (by_tier["flex"]["requests"], by_tier["priority"]["requests"]) == (1, 1)
        assert by_tier["default"]["requests"] == 2 and by_tier["default"]["failed_requests"] == 1
        assert by_tier["flex"]["completion_tokens"] > 0
        r = httpx.get(f"{server.v1}/usage", params={"service_tier": "flex"}, headers=auth, timeout=30)
        assert r.json()["totals"]["requests"] == 1 and "totals_by_service_tier" not in r.json()
        r = httpx.get(f"{server.v1}/usage", params={"service_tier": ""}, headers=auth, timeout=30)
        assert r.json()["totals"]["requests"] == 4  # an empty filter is no filter
        r = httpx.get(f"{server.v1}/usage", params={"by_service_tier": "maybe"}, headers=auth, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "by_service_tier"
        r = httpx.get(f"{server.v1}/usage", params={"service_tier": "gold"}, headers=auth, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "service_tier"
    finally:
        server.stop()
    with engine.connect() as conn:  # the rollup billing reads has the flex tokens in their own row
        t = usage_tou.c
        tiers = conn.execute(sa.select(t.service_tier).where(t.org_id == org["org"]["id"])).scalars().all()
    assert sorted(tiers) == ["default", "flex", "priority"]
