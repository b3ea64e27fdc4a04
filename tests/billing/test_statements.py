"""Statements computed by hand: three organizations across the lifeline, rising blocks, time-of-use bands, a
sector subsidy, a month boundary in the tariff's time zone, a tariff change mid-month and a late event.

Tariff (tests/billing/conftest.py): 1.00 per 1M input, 2.00 per 1M output tokens; lifeline 1M tokens for the
lifeline tier; blocks b1 to 4M ×1.0, b2 to 10M ×1.5, b3 ×2.0; bands valley 0-7h ×0.5, day 8-17h ×1.0,
peak 18-23h ×2.0 in Asia/Shanghai (UTC+8); subsidy education 50%, healthcare 25% (50% from Nov 16).
"""

import pytest
import sqlalchemy as sa

from aiplus.billing.errors import BillingError, Conflict
from aiplus.billing.statements import close_month, document_bytes, statement, statements
from aiplus.storage.tables import usage_tou

from .conftest import event, utc, write


def _lines(doc):
    return [
        (i["version"], i["block"], i["band"], i["prompt_tokens"], i["completion_tokens"], i["amount_micros"])
        for i in doc["lines"]
    ]


def test_hand_computed_november(region):
    with region.connect() as conn:
        school, factory, clinic = (statement(conn, "2026-11", o) for o in ("school", "factory", "clinic"))
    # School: 3M tokens; the lifeline takes 1M pro rata (2/3 day, 1/3 valley), b1 the other 2M.
    # day 2.00 × 2/3 = 1.333333..., valley 2.00 × 0.5 × 2/3 = 0.666666...: 2.000000 in all, the last micro-unit
    # to the larger remainder (valley). Lifeline value 2.00/3 + 1.00/3 = 1.00; education pays half.
    assert _lines(school) == [
        (1, "lifeline", "day", 666_666, 0, 0),
        (1, "b1", "day", 1_333_334, 0, 1_333_333),
        (1, "lifeline", "valley", 0, 333_333, 0),
        (1, "b1", "valley", 0, 666_667, 666_667),
    ]
    assert school["charge_micros"] == 2_000_000
    assert school["lifeline_tokens"] == 999_999 and school["lifeline_value_micros"] == 1_000_000
    assert school["subsidy"] == {"sector": "education", "share_bp": 5000, "amount_micros": 1_000_000}
    assert (school["amount_due_micros"], school["closing_balance_micros"]) == (1_000_000, 1_000_000)
    # Factory: 8M tokens in local November (the 1M at 01:30 on Dec 1 local belongs to December): b1 4M, b2 4M,
    # half of each cell in each. peak 6.00 × 2 → 6.00 + 9.00; valley 2.00 × 0.5 → 0.50 + 0.75.
    assert _lines(factory) == [
        (1, "b1", "peak", 3_000_000, 0, 6_000_000),
        (1, "b2", "peak", 3_000_000, 0, 9_000_000),
        (1, "b1", "valley", 1_000_000, 0, 500_000),
        (1, "b2", "valley", 1_000_000, 0, 750_000),
    ]
    assert factory["tokens"] == 8_000_000
    assert factory["subsidy"]["amount_micros"] == 0 and factory["amount_due_micros"] == 16_250_000
    # Clinic: a tariff change on Nov 16: 1M tokens at 1.00 (25% subsidy), 1M at 2.00 (50% subsidy).
    assert _lines(clinic) == [
        (1, "b1", "day", 1_000_000, 0, 1_000_000),
        (2, "b1", "day", 1_000_000, 0, 2_000_000),
    ]
    assert clinic["tariff_versions"] == [1, 2]
    assert clinic["charge_micros"] == 3_000_000 and clinic["subsidy"]["amount_micros"] == 250_000 + 1_000_000
    assert clinic["amount_due_micros"] == 1_750_000


def test_month_boundary_is_the_tariffs_time_zone(region):
    with region.connect() as conn:
        december = statement(conn, "2026-12", "factory")
        months = set(
            conn.execute(sa.select(usage_tou.c.month).where(usage_tou.c.org_id == "factory")).scalars()
        )
    assert months == {"2026-11", "2026-12"}
    assert _lines(december) == [(2, "b1", "valley", 1_000_000, 0, 1_000_000)]  # 2.00 × 0.5
    assert december["opening_balance_micros"] == 16_250_000  # November, still open, carried forward


def test_closed_month_is_frozen_and_late_usage_is_a_dated_adjustment(region):
    with region.connect() as conn:
        before = [document_bytes(d) for d in statements(conn, "2026-11")]
        again = [document_bytes(d) for d in statements(conn, "2026-11")]
    assert before == again  # deterministic, byte for byte
    with pytest.raises(BillingError) as err, region.begin() as conn:
        close_month(conn, "2026-11", now=utc(2026, 11, 30, 15, 59))  # 23:59 in Shanghai: not over yet
    assert err.value.field == "month"
    with region.begin() as conn:
        closed = close_month(conn, "2026-11", now=utc(2026, 12, 5))
    assert closed["statements"] == 3 and closed["amount_due_micros"] == 1_000_000 + 16_250_000 + 1_750_000
    with pytest.raises(Conflict), region.begin() as conn:
        close_month(conn, "2026-11", now=utc(2026, 12, 5))
    with region.connect() as conn:
        frozen = [document_bytes(d) for d in statements(conn, "2026-11")]
    assert [
        d.replace(b'"status":"closed"', b'"status":"open"').split(b',"closed_at"')[0] for d in frozen
    ] == [b.rstrip(b"}") for b in before]
    # A late event for November (20:00 local on Nov 12: peak): the factory's month becomes 10M tokens.
    write(region, event("late", "factory", utc(2026, 11, 12, 12), prompt=2_000_000))
    with region.connect() as conn:
        assert [document_bytes(d) for d in statements(conn, "2026-11")] == frozen  # never edited
        december = statement(conn, "2026-12", "factory")
        school = statement(conn, "2026-12", "school")
    # Recomputed: peak 8.00×2 → b1 (4/10) 6.40 + b2 (6/10 ×1.5) 14.40; valley 2.00×0.5 → 0.40 + 0.90 = 22.10.
    assert december["adjustments"] == [
        {
            "for_month": "2026-11",
            "booked_in": "2026-12",
            "note": "usage of 2026-11 recorded after 2026-11 was closed",
            "tokens": 2_000_000,
            "amount_micros": 22_100_000 - 16_250_000,
        }
    ]
    assert december["opening_balance_micros"] == 16_250_000
    assert december["amount_due_micros"] == 1_000_000 + 5_850_000
    assert december["closing_balance_micros"] == 16_250_000 + 6_850_000
    assert school["adjustments"] == [] and school["opening_balance_micros"] == 1_000_000
    # Closing December books the adjustment once: January carries nothing more for November.
    with region.begin() as conn:
        close_month(conn, "2026-12", now=utc(2027, 1, 2))
    with region.connect() as conn:
        january = statement(conn, "2027-01", "factory")
    assert january["adjustments"] == [] and january["opening_balance_micros"] == 23_100_000


def test_months_close_in_order(region):
    with pytest.raises(Conflict) as err, region.begin() as conn:
        close_month(conn, "2026-12", now=utc(2027, 1, 5))
    assert "2026-11 first" in err.value.message
