"""The regulator's view and the simulation of a proposal, on the hand-computed month of test_statements.py."""

import csv
import io
import json

import pytest

from aiplus.billing.balance import balance
from aiplus.billing.errors import BillingError
from aiplus.billing.render import render_statements, simulation_csv
from aiplus.billing.simulate import simulate
from aiplus.billing.statements import statements
from aiplus.config import BillingConfig

from .conftest import TIERS, tariff_text

CONFIG = BillingConfig(
    monthly_income=(("Capital", 1_000_000_000), ("Poor", 100_000_000)), affordability_target_bp=200
)


def test_balance_adds_up(region):
    with region.connect() as conn:
        report = balance(conn, "2026-11", CONFIG)
    assert report["revenue_by_tier_block"] == [
        {"tier": "lifeline", "block": "b1", "tokens": 2_000_001, "revenue_micros": 2_000_000},
        {"tier": "lifeline", "block": "lifeline", "tokens": 999_999, "revenue_micros": 0},
        {"tier": "standard", "block": "b1", "tokens": 6_000_000, "revenue_micros": 6_500_000 + 3_000_000},
        {"tier": "standard", "block": "b2", "tokens": 4_000_000, "revenue_micros": 9_750_000},
    ]
    assert report["lifeline_by_tier"] == [
        {"tier": "lifeline", "organizations": 1, "tokens": 999_999, "value_micros": 1_000_000}
    ]
    assert [(r["sector"], r["subsidy_micros"]) for r in report["subsidy_by_sector"]] == [
        ("education", 1_000_000),
        ("healthcare", 1_250_000),
    ]
    assert report["totals"] == {
        "revenue_micros": 21_250_000,
        "subsidy_micros": 2_250_000,
        "adjustments_micros": 0,
        "vouchers_micros": 0,
        "billed_micros": 19_000_000,
        "lifeline_value_micros": 1_000_000,
        "given_micros": 3_250_000,
    }
    with region.connect() as conn:
        due = sum(d["amount_due_micros"] for d in statements(conn, "2026-11"))
    assert due == report["totals"]["billed_micros"]
    # The basket (1.5M in, 0.5M out) spread over 8 valley, 10 day and 6 peak hours under version 1:
    # valley (500,000 + 2×166,666) × 0.5 + day (625,000 + 2×208,333) + peak (375,000 + 2×125,001) × 2.
    aff = report["affordability"]
    assert aff["cost_micros"] == 416_666 + 1_041_666 + 1_250_004
    assert aff["regions"] == [
        {"region": "Capital", "income_micros": 1_000_000_000, "share_ppm": 2_708, "affordable": True},
        {"region": "Poor", "income_micros": 100_000_000, "share_ppm": 27_083, "affordable": False},
    ]


def test_simulate_a_proposal(region):
    proposal = (
        tariff_text()
        .replace("multiplier = 1.5", "multiplier = 2.0")
        .replace("education = 0.5", "education = 1.0")
    )
    with region.connect() as conn:
        sim = simulate(conn, proposal, "2026-11", TIERS, CONFIG)
        again = statements(conn, "2026-11")
    changes = {r["org_id"]: r["change_micros"] for r in sim["organizations"]}
    # school: fully subsidised; factory: b2 at ×2.0 (peak 12.00, valley 1.00); clinic: all at version 1's prices.
    assert changes == {
        "school": -1_000_000,
        "factory": 19_500_000 - 16_250_000,
        "clinic": 1_500_000 - 1_750_000,
    }
    assert {r["tier"]: r["change_micros"] for r in sim["by_tier"]} == {
        "lifeline": -1_000_000,
        "standard": 3_000_000,
    }
    assert sim["balance"]["change"]["revenue_micros"] == 23_500_000 - 21_250_000
    assert sim["balance"]["change"]["billed_micros"] == 2_000_000
    assert len(simulation_csv(sim).splitlines()) == 4
    assert [d["amount_due_micros"] for d in again] == [1_750_000, 16_250_000, 1_000_000]  # nothing adopted


def test_simulate_maps_recorded_bands_and_refuses_to_split_them(region):
    merged = (  # valley and day become one "off-peak" band at ×1.0; peak is renamed "evening"
        tariff_text()
        .replace(
            'name = "valley"\nhours = [0, 1, 2, 3, 4, 5, 6, 7]\nmultiplier = 0.5\n\n[[bands]]\nname = "day"\n',
            "",
        )
        .replace("hours = [8, 9,", 'name = "off-peak"\nhours = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9,')
        .replace('name = "peak"', 'name = "evening"')
    )
    with region.connect() as conn:
        sim = simulate(conn, merged, "2026-11", TIERS, CONFIG)
    # factory: valley cells now at ×1.0 (2.00 instead of 1.00 across b1/b2: 1.00 + 1.50), peak unchanged.
    factory = next(r for r in sim["organizations"] if r["org_id"] == "factory")
    assert factory["proposed_micros"] == 6_000_000 + 9_000_000 + 1_000_000 + 1_500_000
    split = (
        tariff_text()
        .replace("hours = [18, 19, 20, 21, 22, 23]", "hours = [18, 19, 20]")
        .replace("hours = [0, 1, 2, 3, 4, 5, 6, 7]", "hours = [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]")
    )
    with pytest.raises(BillingError) as err, region.connect() as conn:
        simulate(conn, split, "2026-11", TIERS, CONFIG)
    assert err.value.field == "bands" and "'peak'" in err.value.message
    moved = tariff_text().replace("Asia/Shanghai", "Europe/Paris")
    with pytest.raises(BillingError) as err, region.connect() as conn:
        simulate(conn, moved, "2026-11", TIERS, CONFIG)
    assert err.value.field == "timezone"


def test_formats_carry_the_same_figures(region):
    with region.connect() as conn:
        docs = statements(conn, "2026-11")
    as_json = json.loads(render_statements(docs, "json"))
    assert as_json["data"] == docs
    rows = list(csv.DictReader(io.StringIO(render_statements(docs, "csv"))))
    for doc in docs:
        mine = [r for r in rows if r["org_id"] == doc["org"]["id"]]
        usage = sum(int(r["amount_micros"]) for r in mine if r["item"] == "usage")
        subsidy = sum(int(r["amount_micros"]) for r in mine if r["item"] == "subsidy")
        due = next(int(r["amount_micros"]) for r in mine if r["item"] == "amount_due")
        assert usage == doc["charge_micros"] and usage + subsidy == due
    html = render_statements(docs, "html")
    assert html.count("<article>") == 3 and "size: A4" in html
    assert "16.250000" in html and "Factory" in html and "<script" not in html
    tables = render_statements([docs[1]], "table")
    assert tables[1][2][-2] == ["amount due", "16.250000"]
