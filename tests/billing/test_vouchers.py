"""Vouchers computed by hand, on SQLite and PostgreSQL: two stacking programmes, a cap reached mid-month, a
voucher expiring mid-month, a pool running dry, an ineligible firm, and a late event after the month closed.

Tariff: UTC, 1.00 per 1M input tokens, one block ×1, one band ×1, no lifeline, no subsidy, so 1M tokens = 1.00.
Programme "city": 30%, stacks up to 60% combined, cap 5.00 per org a month, small and micro firms only.
Programme "district": 40%, stacks up to 60%, a pool of 3.50.
"""

from datetime import date

import pytest
import sqlalchemy as sa

from aiplus.billing.errors import BillingError, Conflict, NotFound
from aiplus.billing.programmes import (
    add_programme,
    issue_voucher,
    list_programmes,
    list_vouchers,
    revoke_voucher,
)
from aiplus.billing.statements import close_month, document_bytes, statement, statements
from aiplus.config import DEFAULT_TIERS
from aiplus.storage.tables import voucher_programmes, voucher_writeoffs, vouchers
from aiplus.tenancy.orgs import create_org

from .conftest import adopt, event, utc, write

FLAT = """
name = "Flat"
currency = "CNY"
timezone = "UTC"

[[prices]]
model = "*"
input_per_mtok = 1000000
output_per_mtok = 1000000

[[blocks]]
name = "all"
multiplier = 1.0

[[bands]]
name = "any"
hours = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
multiplier = 1.0
"""
M = 1_000_000  # 1.00 in micro-units; also 1M tokens
NOW = utc(2027, 2, 20)

CITY = {
    "id": "city",
    "funder": "City Economy Bureau",
    "pool_micros": 100 * M,
    "share": "0.3",
    "cap_month_micros": 5 * M,
    "cap_year_micros": 50 * M,
    "valid_from": "2027-01-01",
    "valid_until": "2027-12-31",
    "sizes": ["micro", "small"],
    "stacks": True,
    "max_combined_share": "0.6",
}
DISTRICT = {
    "id": "district",
    "funder": "District Fund",
    "pool_micros": 3_500_000,
    "share": "0.4",
    "valid_from": "2027-01-01",
    "valid_until": "2027-12-31",
    "stacks": True,
    "max_combined_share": "0.6",
}


def org(engine, org_id: str, employees: int, sector: str = "manufacturing") -> None:
    with engine.begin() as conn:
        create_org(
            conn,
            name=org_id,
            sector=sector,
            tier="standard",
            org_id=org_id,
            employees=employees,
            tiers=DEFAULT_TIERS,
        )


def issue(engine, programme: str, org_id: str, amount: int, expires: str, priority: int = 0) -> int:
    with engine.begin() as conn:
        return issue_voucher(
            conn, programme, org_id, amount, expires, priority=priority, valid_from="2027-03-01", now=NOW
        )["id"]


@pytest.fixture
def funded(db):
    adopt(db, FLAT, date(2027, 3, 1), now=NOW)
    for name, employees in (("alpha", 20), ("beta", 12), ("gamma", 900), ("delta", 5)):
        org(db, name, employees)
    with db.begin() as conn:
        add_programme(conn, CITY, now=NOW)
        add_programme(conn, DISTRICT, now=NOW)
    ids = {
        "v1": issue(db, "city", "alpha", 20 * M, "2027-12-31", priority=0),
        "v2": issue(db, "district", "alpha", 10 * M, "2027-03-15", priority=1),
        "v3": issue(db, "district", "beta", 10 * M, "2027-12-31"),
        "v4": issue(db, "city", "gamma", 10 * M, "2027-12-31"),
        "v5": issue(db, "city", "delta", 1 * M, "2027-03-31"),
    }
    write(
        db,
        event("d1", "delta", utc(2027, 3, 5, 9), prompt=2 * M),
        event("a1", "alpha", utc(2027, 3, 10, 9), prompt=10 * M),
        event("g1", "gamma", utc(2027, 3, 10, 10), prompt=1 * M),
        event("b1", "beta", utc(2027, 3, 12, 9), prompt=5 * M),
        event("a2", "alpha", utc(2027, 3, 20, 9), prompt=10 * M),
    )
    return db, ids


def _paid(doc):
    return [
        (p["day"], p["voucher"], p["charge_micros"], p["amount_micros"]) for p in doc["vouchers"]["payments"]
    ]


def test_hand_computed_march(funded):
    db, v = funded
    with db.connect() as conn:
        alpha, beta, gamma, delta = (
            statement(conn, "2027-03", o) for o in ("alpha", "beta", "gamma", "delta")
        )
        assert statements(conn, "2027-03") == [alpha, beta, delta, gamma]  # one org's alone = among all
    # Mar 10, alpha 10.00: city 30% = 3.00 (cap 5.00 left); district 40% would be 4.00, but the combined share
    # is 60% = 6.00, so 3.00 (the pool keeps 0.50). Mar 20, alpha 10.00: city reaches its monthly cap at 2.00;
    # district's voucher expired on Mar 15. Alpha: 20.00 less 8.00 = 12.00 due.
    assert _paid(alpha) == [
        ("2027-03-10", v["v1"], 10 * M, 3 * M),
        ("2027-03-10", v["v2"], 10 * M, 3 * M),
        ("2027-03-20", v["v1"], 10 * M, 2 * M),
    ]
    assert alpha["charge_micros"] == 20 * M and alpha["amount_due_micros"] == 12 * M
    assert alpha["vouchers"]["by_programme"] == [
        {"programme": "city", "name": "city", "funder": "City Economy Bureau", "amount_micros": 5 * M},
        {"programme": "district", "name": "district", "funder": "District Fund", "amount_micros": 3 * M},
    ]
    # Mar 12, beta 5.00: district's share is 2.00 but its pool has 0.50 left: it runs dry.
    assert _paid(beta) == [("2027-03-12", v["v3"], 5 * M, 500_000)]
    assert beta["amount_due_micros"] == 4_500_000
    # Gamma is a large firm: city pays only small and micro ones.
    assert _paid(gamma) == [] and gamma["amount_due_micros"] == 1 * M
    # Mar 5, delta 2.00: 30% = 0.60 of its 1.00 voucher.
    assert _paid(delta) == [("2027-03-05", v["v5"], 2 * M, 600_000)]
    for doc in (alpha, beta, gamma, delta):  # the organization's due plus the funders' shares is the charge
        assert doc["amount_due_micros"] + doc["vouchers"]["amount_micros"] == doc["charge_micros"]
        assert sum(p["charge_micros"] for p in doc["vouchers"]["pieces"]) in (0, doc["charge_micros"])


def test_close_writes_off_and_a_late_event_is_paid_by_the_voucher_valid_then(funded):
    db, v = funded
    with db.begin() as conn:
        done = close_month(conn, "2027-03", now=utc(2027, 4, 2))
    assert done["voucher_writeoffs"] == 5
    with db.connect() as conn:
        left = {p["id"]: p["pool_left_micros"] for p in list_programmes(conn)}
        remaining = {x["id"]: x["remaining_micros"] for x in list_vouchers(conn)}
        frozen = [document_bytes(d) for d in statements(conn, "2027-03")]
    assert left == {"city": 100 * M - 5_600_000, "district": 0}
    assert remaining[v["v1"]] == 15 * M and remaining[v["v5"]] == 400_000
    # A late event for March 28 (delta, 1.00) and April usage (delta, 1.00 on Apr 3).
    write(
        db,
        event("d-late", "delta", utc(2027, 3, 28, 9), prompt=1 * M),
        event("d-apr", "delta", utc(2027, 4, 3, 9), prompt=1 * M),
    )
    with db.connect() as conn:
        assert [document_bytes(d) for d in statements(conn, "2027-03")] == frozen
        april = statement(conn, "2027-04", "delta")
    # The adjustment (1.00 for March) is paid by v5, valid on March 28 (0.30 of its 0.40 left); April's own
    # usage by none (v5 expired on March 31).
    assert [a["amount_micros"] for a in april["adjustments"]] == [1 * M]
    assert [
        (p["for_month"], *x) for p, x in zip(april["vouchers"]["payments"], _paid(april), strict=True)
    ] == [("2027-03", "2027-03-28", v["v5"], 1 * M, 300_000)]
    assert april["amount_due_micros"] == 1 * M + 1 * M - 300_000
    with db.begin() as conn:
        close_month(conn, "2027-04", now=utc(2027, 5, 2))
    with db.connect() as conn:
        may = statement(conn, "2027-05", "delta")
        rows = conn.execute(sa.select(voucher_writeoffs.c.month, voucher_writeoffs.c.amount_micros)).all()
    assert may["vouchers"]["payments"] == [] and may["adjustments"] == []  # never paid twice
    assert sorted(rows) == sorted(
        [("2027-03", a) for a in (3 * M, 3 * M, 2 * M, 500_000, 600_000)] + [("2027-04", 300_000)]
    )


def test_revoked_voucher_pays_nothing_from_its_day(funded):
    db, v = funded
    with db.begin() as conn:
        revoke_voucher(conn, v["v1"], on="2027-03-15", now=NOW)
    with db.connect() as conn:
        alpha = statement(conn, "2027-03", "alpha")
        with pytest.raises(Conflict):
            revoke_voucher(conn, v["v1"], on="2027-03-16", now=NOW)
    assert [(p[0], p[1]) for p in _paid(alpha)] == [("2027-03-10", v["v1"]), ("2027-03-10", v["v2"])]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"share": "1.2"}, "share"),
        ({"share": "0.333333"}, "share"),
        ({"pool_micros": -1}, "pool_micros"),
        ({"valid_until": "2026-01-01"}, "valid_until"),
        ({"sectors": ["mining"]}, "sectors"),
        ({"max_combined_share": "0.2"}, "max_combined_share"),
        ({"id": "Bad Id"}, "id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_programme_names_the_field_and_writes_nothing(db, change, field):
    with pytest.raises(BillingError) as err, db.begin() as conn:
        add_programme(conn, {**CITY, **change}, now=NOW)
    assert err.value.field == field and err.value.status == 400
    with db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(voucher_programmes)) == 0


def test_bad_voucher_names_the_field_and_writes_nothing(funded):
    db, _v = funded
    cases = [
        (("nowhere", "alpha", M, "2027-12-31"), NotFound, "programme"),
        (("city", "nobody", M, "2027-12-31"), NotFound, "org_id"),
        (("city", "alpha", M, "2028-06-30"), BillingError, "expires_on"),
        (("city", "alpha", -5, "2027-12-31"), BillingError, "amount_micros"),
        # alpha holds 20.00 of city already; 31.00 more overlapping would break the yearly cap of 50.00.
        (("city", "alpha", 31 * M, "2027-12-31"), Conflict, "amount_micros"),
    ]
    with db.connect() as conn:
        before = conn.scalar(sa.select(sa.func.count()).select_from(vouchers))
    for args, kind, field in cases:
        with pytest.raises(kind) as err, db.begin() as conn:
            issue_voucher(conn, *args, valid_from="2027-03-01", now=NOW)
        assert err.value.field == field, args
    with db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(vouchers)) == before
    with db.begin() as conn:  # 30.00 fits the cap exactly
        issue_voucher(conn, "city", "alpha", 30 * M, "2027-12-31", valid_from="2027-03-01", now=NOW)
