"""Service tiers priced by a tariff: ``[service_tier]`` multipliers, validated, on statements computed by hand.

The tariff is tests/billing/conftest.py's (1.00 per 1M input, 2.00 per 1M output tokens; lifeline 1M tokens for
the lifeline tier; block b1 to 4M ×1.0; band "day" 8-17h ×1.0 in Asia/Shanghai) with priority ×1.5, flex ×0.5.
Every event below starts at 09:00 local (01:00 UTC): the "day" band, so only the service tier moves a price.
"""

from datetime import date

import pytest

from aiplus.billing.errors import BillingError
from aiplus.billing.render import render_statements, statements_csv
from aiplus.billing.simulate import simulate
from aiplus.billing.statements import statement
from aiplus.billing.tariff import parse_tariff
from aiplus.config import BillingConfig

from .conftest import TIERS, add_org, adopt, event, tariff_text, utc, write

MULTIPLIERS = "\n[service_tier]\npriority = 1.5\nflex = 0.5\n"


def tiered(e, service_tier: str):
    e.service_tier = service_tier
    return e


def _lines(doc):
    return [
        (
            i["block"],
            i["service_tier"],
            i["service_tier_multiplier_bp"],
            i["prompt_tokens"],
            i["amount_micros"],
        )
        for i in doc["lines"]
    ]


def _usage(db):
    """A firm (standard tier, no subsidy) and a school (lifeline tier, education: 50%) in each service tier."""
    add_org(db, "firm", "standard", "manufacturing")
    add_org(db, "school", "lifeline", "education")
    write(
        db,
        tiered(event("p", "firm", utc(2026, 11, 3, 1), prompt=1_000_000), "priority"),
        tiered(event("d", "firm", utc(2026, 11, 3, 1), prompt=1_000_000), "default"),
        tiered(event("f", "firm", utc(2026, 11, 4, 1), prompt=1_000_000, completion=500_000), "flex"),
        tiered(event("f2", "firm", utc(2026, 11, 5, 1), prompt=1_000_000), "flex"),
        tiered(event("sp", "school", utc(2026, 11, 3, 1), prompt=1_000_000), "priority"),
        tiered(event("sf", "school", utc(2026, 11, 3, 1), prompt=1_000_000), "flex"),
    )


def _priority_and_flex(db):
    """A shop (standard tier, no subsidy): 1M input tokens in priority; 1M input, 0.5M output in flex."""
    add_org(db, "shop", "standard", "trade")
    write(
        db,
        tiered(event("p", "shop", utc(2026, 11, 3, 1), prompt=1_000_000), "priority"),
        tiered(event("f", "shop", utc(2026, 11, 3, 1), prompt=1_000_000, completion=500_000), "flex"),
    )


def test_multipliers_parse_into_basis_points():
    tariff = parse_tariff(tariff_text() + MULTIPLIERS, TIERS)
    assert tariff.service_tier_bp == {"flex": 5_000, "priority": 15_000}
    assert tariff.service_tier_table == {"priority": 15_000, "default": 10_000, "flex": 5_000}
    assert tariff.prices_service_tiers
    plain = parse_tariff(tariff_text(), TIERS)
    assert plain.service_tier_table == {"priority": 10_000, "default": 10_000, "flex": 10_000}
    assert not plain.prices_service_tiers
    assert not parse_tariff(
        tariff_text() + "\n[service_tier]\ndefault = 1\npriority = 1.0\n"
    ).prices_service_tiers


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ("turbo = 2.0", "service_tier.turbo", "unknown service tier 'turbo'; known service tiers: priority"),
        ("auto = 1.0", "service_tier.auto", "priced as default"),
        ("flex = -0.5", "service_tier.flex", "must not be negative"),
        ("flex = inf", "service_tier.flex", "finite"),
        ("priority = nan", "service_tier.priority", "finite"),
        ('priority = "1.5"', "service_tier.priority", "must be a number"),
        ("priority = true", "service_tier.priority", "must be a number"),
        ("priority = 1.23456", "service_tier.priority", "four decimals"),
    ],
)
def test_bad_multipliers_name_the_field(table, field, words):
    with pytest.raises(BillingError) as err:
        parse_tariff(tariff_text() + f"\n[service_tier]\n{table}\n", TIERS)
    assert err.value.field == field
    assert words in err.value.message


def test_service_tier_must_be_a_table():
    with pytest.raises(BillingError) as err:
        parse_tariff('service_tier = "flex"\n' + tariff_text(), TIERS)
    assert (
        err.value.field == "service_tier" and "table of service tier = price multiplier" in err.value.message
    )


def test_statement_prices_each_service_tier_by_hand(db):
    adopt(db, tariff_text() + MULTIPLIERS, date(2026, 11, 1))
    _usage(db)
    with db.connect() as conn:
        firm, school = statement(conn, "2026-11", "firm"), statement(conn, "2026-11", "school")
    # Firm: 4.5M tokens; b1 holds 4M (8/9 of every cell, ×1.0), b2 0.5M (1/9, ×1.5): each cell × 19/18.
    # Cells: priority 1.00 × 1.5 = 1.50, default 1.00, flex (2M input 2.00 + 0.5M output 1.00) × 0.5 = 1.50.
    # Charge 4.00 × 19/18 = 4.222222 (half up). Line floors: priority 1.333333 + 0.25, default 0.888888 +
    # 0.166666, flex as priority: 4.222220; the two micro-units left go to the largest remainders (8/9 and
    # 2/3 of a micro-unit: default's two lines).
    assert firm["tokens"] == 4_500_000
    assert firm["charge_micros"] == 4_222_222
    assert firm["charge_by_service_tier"] == [  # from the highest band
        {"service_tier": "priority", "tokens": 1_000_000, "amount_micros": 1_583_333},
        {"service_tier": "default", "tokens": 1_000_000, "amount_micros": 1_055_556},
        {"service_tier": "flex", "tokens": 2_500_000, "amount_micros": 1_583_333},
    ]
    assert [(line["block"], line["service_tier"], line["amount_micros"]) for line in firm["lines"]] == [
        ("b1", "priority", 1_333_333),
        ("b2", "priority", 250_000),
        ("b1", "default", 888_889),
        ("b2", "default", 166_667),
        ("b1", "flex", 1_333_333),
        ("b2", "flex", 250_000),
    ]
    # School: 2M tokens, the lifeline's 1M shared pro rata: half of each tier's tokens free, half in b1.
    # priority 0.5M × 1.00 × 1.5 = 0.75, flex 0.5M × 1.00 × 0.5 = 0.25; the free half is worth the same.
    assert _lines(school) == [
        ("lifeline", "priority", 15_000, 500_000, 0),
        ("b1", "priority", 15_000, 500_000, 750_000),
        ("lifeline", "flex", 5_000, 500_000, 0),
        ("b1", "flex", 5_000, 500_000, 250_000),
    ]
    assert school["charge_micros"] == 1_000_000
    assert school["lifeline_tokens"] == 1_000_000 and school["lifeline_value_micros"] == 1_000_000
    assert school["subsidy"]["amount_micros"] == 500_000 and school["amount_due_micros"] == 500_000
    assert school["charge_by_service_tier"] == [
        {"service_tier": "priority", "tokens": 1_000_000, "amount_micros": 750_000},
        {"service_tier": "flex", "tokens": 1_000_000, "amount_micros": 250_000},
    ]


def test_exact_amounts_in_one_block(db):
    adopt(db, tariff_text() + MULTIPLIERS, date(2026, 11, 1))
    add_org(db, "shop", "standard", "trade")
    write(
        db,
        tiered(event("p", "shop", utc(2026, 11, 3, 1), prompt=1_000_000), "priority"),
        tiered(event("d", "shop", utc(2026, 11, 3, 1), prompt=1_000_000), "default"),
        tiered(event("f", "shop", utc(2026, 11, 3, 1), prompt=1_000_000, completion=500_000), "flex"),
    )
    with db.connect() as conn:
        doc = statement(conn, "2026-11", "shop")
    # 3.5M tokens, all in b1: priority 1.00 × 1.5, default 1.00, flex (1.00 + 1.00) × 0.5.
    assert _lines(doc) == [
        ("b1", "priority", 15_000, 1_000_000, 1_500_000),
        ("b1", "default", 10_000, 1_000_000, 1_000_000),
        ("b1", "flex", 5_000, 1_000_000, 1_000_000),
    ]
    assert doc["charge_micros"] == doc["amount_due_micros"] == 3_500_000
    csv = statements_csv([doc]).splitlines()
    assert csv[0].split(",")[6:8] == ["band", "service_tier"]
    assert csv[4] == "shop,2026-11,usage,1,m,b1,day,flex,,1000000,500000,1000000"
    (lines_title, columns, rows), (_t, _c, summary) = render_statements([doc], "table")
    assert "service tier" in columns and rows[0][columns.index("multiplier")] == "×1 ×1 ×1.5"
    assert ["  of which flex (1,500,000 tokens)", "1.000000"] in summary
    html = render_statements([doc], "html")
    assert "<th>Service tier</th>" in html and "of which service tier priority" in html


def test_a_tariff_without_multipliers_bills_service_tiers_as_one_line(db):
    adopt(db, tariff_text(), date(2026, 11, 1))
    _priority_and_flex(db)
    with db.connect() as conn:
        doc = statement(conn, "2026-11", "shop")
    assert _lines(doc) == [("b1", "", 10_000, 2_000_000, 3_000_000)]
    assert doc["charge_by_service_tier"] == []
    (_title, columns, rows), _summary = render_statements([doc], "table")
    assert "service tier" not in columns and rows[0][columns.index("multiplier")] == "×1 ×1"
    assert "Service tier" not in render_statements([doc], "html")


def test_a_proposal_with_multipliers_reprices_a_recorded_month(db):
    adopt(db, tariff_text(), date(2026, 11, 1))
    _priority_and_flex(db)
    with db.connect() as conn:
        sim = simulate(conn, tariff_text() + MULTIPLIERS, "2026-11", TIERS, BillingConfig())
    (row,) = [r for r in sim["organizations"] if r["org_id"] == "shop"]
    assert row["current_micros"] == 3_000_000
    assert row["proposed_micros"] == 1_500_000 + 1_000_000  # priority 1.00 × 1.5, flex 2.00 × 0.5
