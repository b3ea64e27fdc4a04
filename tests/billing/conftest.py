from datetime import UTC, date, datetime

import pytest

from aiplus.billing.versions import adopt_tariff
from aiplus.config import DEFAULT_TIERS
from aiplus.metering.events import UsageEvent, write_events
from aiplus.tenancy.orgs import create_org

TIERS = [t.name for t in DEFAULT_TIERS]

# Round numbers to compute statements by hand: 1.00 per 1M input tokens, 2.00 per 1M output tokens.
TARIFF = """
name = "Test tariff"
currency = "CNY"
timezone = "Asia/Shanghai"

[[prices]]
model = "*"
input_per_mtok = {input}
output_per_mtok = {output}

[lifeline]
lifeline = 1000000

[[blocks]]
name = "b1"
up_to = 4000000
multiplier = 1.0

[[blocks]]
name = "b2"
up_to = 10000000
multiplier = 1.5

[[blocks]]
name = "b3"
multiplier = 2.0

[[bands]]
name = "valley"
hours = [0, 1, 2, 3, 4, 5, 6, 7]
multiplier = 0.5

[[bands]]
name = "day"
hours = [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
multiplier = 1.0

[[bands]]
name = "peak"
hours = [18, 19, 20, 21, 22, 23]
multiplier = 2.0

[subsidy]
education = 0.5
healthcare = {healthcare}
"""


def tariff_text(input: int = 1_000_000, output: int = 2_000_000, healthcare: str = "0.25") -> str:
    return TARIFF.format(input=input, output=output, healthcare=healthcare)


@pytest.fixture
def region(db):
    """Three organizations' November and December under two tariff versions (see test_statements.py)."""
    adopt(db, tariff_text(), date(2026, 11, 1))
    adopt(db, tariff_text(input=2_000_000, output=4_000_000, healthcare="0.5"), date(2026, 11, 16))
    add_org(db, "school", "lifeline", "education")
    add_org(db, "factory", "standard", "manufacturing")
    add_org(db, "clinic", "standard", "healthcare")
    write(
        db,
        event("s1", "school", utc(2026, 11, 3, 1), prompt=2_000_000),  # 09:00 local: day
        event("s2", "school", utc(2026, 11, 4, 20), completion=1_000_000),  # 04:00 on the 5th: valley
        event("f0", "factory", utc(2026, 10, 31, 16, 30), prompt=2_000_000),  # 00:30 on Nov 1 local: valley
        event("f1", "factory", utc(2026, 11, 10, 12), prompt=6_000_000),  # 20:00 local: peak
        event("f2", "factory", utc(2026, 11, 30, 17, 30), prompt=1_000_000),  # 01:30 on Dec 1 local: December
        event("c1", "clinic", utc(2026, 11, 5, 2), prompt=1_000_000),  # version 1, day
        event("c2", "clinic", utc(2026, 11, 20, 2), prompt=1_000_000),  # version 2, day
    )
    return db


def adopt(engine, text: str, day: date, **kw) -> dict:
    with engine.begin() as conn:
        return adopt_tariff(conn, text, day, TIERS, **kw)


def add_org(engine, org_id: str, tier: str, sector: str) -> None:
    with engine.begin() as conn:
        create_org(conn, name=org_id.title(), sector=sector, tier=tier, org_id=org_id, tiers=DEFAULT_TIERS)


def event(
    rid: str, org: str, at: datetime, prompt: int = 0, completion: int = 0, model: str = "m"
) -> UsageEvent:
    return UsageEvent(
        rid, org, None, model, "chat", prompt, completion, "ok", False, at, 1, 1, prompt + completion
    )


def write(engine, *events: UsageEvent) -> int:
    with engine.begin() as conn:
        return write_events(conn, list(events))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)
