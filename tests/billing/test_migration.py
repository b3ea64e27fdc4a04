"""Migration 0003 on a database that already holds usage: the time-of-use rollup is backfilled from the events."""

from alembic import command

from aiplus.billing.statements import statement
from aiplus.storage.db import alembic_config
from aiplus.storage.tables import usage_events

from .conftest import add_org, event, utc


def test_upgrade_backfills_usage_recorded_before_billing(db):
    command.downgrade(alembic_config(db), "0002")
    add_org(db, "old", "standard", "trade")
    rows = [
        event("a", "old", utc(2026, 10, 31, 23, 30), prompt=1_000, completion=500).to_row(),
        event("b", "old", utc(2026, 11, 1, 0, 30), prompt=2_000).to_row(),
        event("c", "old", utc(2026, 11, 2), prompt=0).to_row(),  # nothing billed: no row
    ]
    for row in rows:
        del row["service_tier"]  # a column of 0006
    with db.begin() as conn:
        conn.execute(usage_events.insert(), rows)
    command.upgrade(alembic_config(db), "head")
    with db.connect() as conn:
        october, november = statement(conn, "2026-10", "old"), statement(conn, "2026-11", "old")
    assert [(i["version"], i["block"], i["prompt_tokens"], i["amount_micros"]) for i in october["lines"]] == [
        (0, "list price", 1_000, 1_500)  # no tariff yet: the cost it was metered at (UTC months)
    ]
    assert november["tokens"] == 2_000 and november["charge_micros"] == 2_000
    assert november["opening_balance_micros"] == 1_500
