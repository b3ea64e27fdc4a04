"""Properties of the voucher rule (hypothesis): no programme pays past its share, cap, pool, validity or the
combined share; no voucher past its amount or validity; the rule is deterministic and months allocate in order.
And on SQLite: the organization's due plus the funders' shares is the charge, claims recompute from their
files, a closed month's claim never changes and no payment is claimed twice."""

import tempfile
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiplus.billing.claims import claim_files, verify_claim, write_claim
from aiplus.billing.funding import Funds, Member, Piece, Programme, Voucher, allocate
from aiplus.billing.programmes import add_programme, issue_voucher
from aiplus.billing.statements import close_month, statement, statements
from aiplus.billing.tariff import BP
from aiplus.storage.testing import scratch_database

from .conftest import event, utc, write
from .test_vouchers import FLAT, NOW, adopt, org

START = date(2027, 3, 1)
DAYS = 61  # March and April
MEMBERS = {
    "a": Member("a", "trade", "small", "North"),
    "b": Member("b", "ict", "micro", "South"),
    "c": Member("c", "trade", "large", "North"),
}


def day(n: int) -> date:
    return START + timedelta(days=n)


@st.composite
def programmes(draw, pid: str) -> Programme:
    share = draw(st.integers(1, BP))
    stacks = draw(st.booleans())
    first, length = draw(st.integers(0, 40)), draw(st.integers(0, 60))
    return Programme(
        id=pid,
        name=pid,
        funder=pid,
        pool_micros=draw(st.integers(0, 30_000_000)),
        share_bp=share,
        cap_month_micros=draw(st.none() | st.integers(0, 10_000_000)),
        cap_year_micros=draw(st.none() | st.integers(0, 20_000_000)),
        valid_from=day(first),
        valid_until=day(first + length),
        sectors=draw(st.sampled_from(((), ("trade",), ("ict",)))),
        sizes=draw(st.sampled_from(((), ("micro", "small")))),
        regions=draw(st.sampled_from(((), ("North",)))),
        models=draw(st.sampled_from(((), ("m1",)))),
        stacks=stacks,
        max_combined_bp=draw(st.integers(share, BP)) if stacks else share,
    )


@st.composite
def worlds(draw):
    progs = {pid: draw(programmes(pid)) for pid in ("p1", "p2", "p3")[: draw(st.integers(1, 3))]}
    vouchers = []
    for i in range(draw(st.integers(1, 6))):
        first, length = draw(st.integers(0, 50)), draw(st.integers(0, 40))
        revoked = draw(st.none() | st.integers(0, DAYS))
        vouchers.append(
            Voucher(
                id=i + 1,
                programme_id=draw(st.sampled_from(sorted(progs))),
                org_id=draw(st.sampled_from(sorted(MEMBERS))),
                amount_micros=draw(st.integers(1, 15_000_000)),
                priority=draw(st.integers(-2, 2)),
                valid_from=day(first),
                expires_on=day(first + length),
                revoked_on=None if revoked is None else day(revoked),
            )
        )
    keys = draw(
        st.sets(
            st.tuples(
                st.integers(0, DAYS - 1), st.sampled_from(sorted(MEMBERS)), st.sampled_from(("m1", "m2"))
            )
        )
    )
    pieces = [Piece(day(d), o, m, 0, draw(st.integers(0, 8_000_000))) for d, o, m in sorted(keys)]
    return progs, vouchers, pieces


@given(worlds())
@settings(max_examples=400, deadline=None)
def test_no_programme_or_voucher_pays_past_a_limit(world):
    progs, vouchers, pieces = world
    payments = allocate(pieces, progs, vouchers, MEMBERS, Funds())
    by_voucher = {v.id: v for v in vouchers}
    per_piece: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_voucher, pool = defaultdict(int), defaultdict(int)
    month_cap, year_cap = defaultdict(int), defaultdict(int)
    for p in payments:
        v, prog = by_voucher[p.voucher_id], progs[p.programme_id]
        assert p.amount_micros > 0 and v.org_id == p.org_id and v.programme_id == p.programme_id
        assert v.valid_on(p.day) and prog.covers(MEMBERS[p.org_id], p.model, p.day)
        per_piece[(p.day, p.org_id, p.model, p.charge_micros)][p.programme_id] += p.amount_micros
        per_voucher[v.id] += p.amount_micros
        pool[prog.id] += p.amount_micros
        month_cap[(prog.id, p.org_id, p.day.month)] += p.amount_micros
        year_cap[(prog.id, p.org_id, p.day.year)] += p.amount_micros
    for (_d, _o, _m, charge), paid in per_piece.items():
        assert sum(paid.values()) <= charge  # the organization never owes less than nothing
        for pid, amount in paid.items():
            assert amount <= charge * progs[pid].share_bp // BP
        assert sum(paid.values()) <= charge * min(progs[pid].max_combined_bp for pid in paid) // BP
        if len(paid) > 1:
            assert all(progs[pid].stacks for pid in paid)
    assert all(per_voucher[v.id] <= v.amount_micros for v in vouchers)
    assert all(pool[pid] <= progs[pid].pool_micros for pid in progs)
    for (pid, _o, _m), amount in month_cap.items():
        assert progs[pid].cap_month_micros is None or amount <= progs[pid].cap_month_micros
    for (pid, _o, _y), amount in year_cap.items():
        assert progs[pid].cap_year_micros is None or amount <= progs[pid].cap_year_micros


@given(worlds())
@settings(max_examples=200, deadline=None)
def test_deterministic_and_months_allocate_in_order(world):
    progs, vouchers, pieces = world
    once = allocate(pieces, progs, vouchers, MEMBERS, Funds())
    assert allocate(list(reversed(pieces)), progs, list(reversed(vouchers)), MEMBERS, Funds()) == once
    funds = Funds()
    march = allocate([p for p in pieces if p.day.month == 3], progs, vouchers, MEMBERS, funds)
    april = allocate([p for p in pieces if p.day.month == 4], progs, vouchers, MEMBERS, funds)
    assert march + april == once


usage = st.lists(
    st.tuples(st.sampled_from(("alpha", "beta")), st.integers(1, 31), st.integers(1, 9_000_000)),
    min_size=1,
    max_size=8,
)


@given(usage, usage, st.integers(1, 30), st.sampled_from(("0.3", "0.5", "1")))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_statements_and_claims_add_up(first, late, expires, share):
    with tempfile.TemporaryDirectory() as tmp, scratch_database("sqlite", Path(tmp)) as (engine, _url):
        adopt(engine, FLAT, date(2027, 3, 1), now=NOW)
        org(engine, "alpha", 20)
        org(engine, "beta", 3)
        with engine.begin() as conn:
            spec = {
                "id": "p",
                "funder": "F",
                "pool_micros": 6_000_000,
                "share": share,
                "cap_month_micros": 4_000_000,
            }
            add_programme(conn, {**spec, "valid_from": "2027-01-01", "valid_until": "2027-12-31"}, now=NOW)
            for who in ("alpha", "beta"):
                issue_voucher(
                    conn, "p", who, 3_000_000, f"2027-03-{expires:02d}", valid_from="2027-03-01", now=NOW
                )
        write(engine, *(event(f"x{i}", o, utc(2027, 3, d, 9), prompt=n) for i, (o, d, n) in enumerate(first)))
        with engine.begin() as conn:
            close_month(conn, "2027-03", now=utc(2027, 4, 2))
        with engine.connect() as conn:
            march = statements(conn, "2027-03")
            # Pools here cover every voucher: one organization's statement is allocated alone, and must agree.
            assert [statement(conn, "2027-03", d["org"]["id"]) for d in march] == march
            claim = write_claim(conn, "p", "2027-03", Path(tmp) / "march")
            files = claim_files(conn, "p", "2027-03")
        write(engine, *(event(f"y{i}", o, utc(2027, 3, d, 10), prompt=n) for i, (o, d, n) in enumerate(late)))
        with engine.begin() as conn:
            close_month(conn, "2027-04", now=utc(2027, 5, 2))
        with engine.connect() as conn:
            assert claim_files(conn, "p", "2027-03") == files  # a closed month's claim never changes
            april = statements(conn, "2027-04")
            april_claim = write_claim(conn, "p", "2027-04", Path(tmp) / "april")
        for doc in march + april:
            owed = doc["charge_micros"] - doc["subsidy"]["amount_micros"]
            owed += sum(a["amount_micros"] for a in doc["adjustments"])
            assert doc["amount_due_micros"] + doc["vouchers"]["amount_micros"] == owed
        assert verify_claim(Path(tmp) / "march")["share_micros"] == claim["totals"]["share_micros"]
        assert verify_claim(Path(tmp) / "april")["share_micros"] == april_claim["totals"]["share_micros"]
        paid = claim["totals"]["share_micros"] + april_claim["totals"]["share_micros"]
        assert paid == sum(d["vouchers"]["amount_micros"] for d in march + april) <= 6_000_000
        for who in ("alpha", "beta"):  # each voucher within its amount, the org within the monthly cap
            spent = sum(d["vouchers"]["amount_micros"] for d in march + april if d["org"]["id"] == who)
            assert spent <= 3_000_000
