"""``aiplus vouchers`` and ``aiplus bill claims`` on the demo region, whose seed adds two stacking programmes and
vouchers for small firms: funders' shares on statements, a claim pack that verifies and never changes once its
month is closed."""

from __future__ import annotations

import json

from aiplus.adoption.demo import demo_month_ends


def test_demo_vouchers_statements_and_claims(aiplus, tmp_path):
    r = aiplus("demo", "seed", "--orgs", "300", "--months", "3")
    assert r.code == 0 and "vouchers: programmes demo-city and demo-capital" in r.out, r.err
    months = [m.isoformat()[:7] for m in demo_month_ends(3)]
    r = aiplus("vouchers", "programme", "list")
    assert r.code == 0 and "demo-city" in r.out and "demo-capital" in r.out
    r = aiplus("vouchers", "list", "--programme", "demo-city")
    assert r.code == 0 and "demo-city" in r.out
    r = aiplus("bill", "--month", months[0], "--format", "json")
    docs = json.loads(r.out)["data"]
    paid = [d for d in docs if d["vouchers"]["amount_micros"] > 0]
    assert paid, "the demo's small firms have funders' shares on their statements"
    for d in docs:
        owed = d["charge_micros"] - d["subsidy"]["amount_micros"]
        assert d["amount_due_micros"] + d["vouchers"]["amount_micros"] == owed
    r = aiplus("vouchers", "programme", "show", "demo-city", "--month", months[0], "--format", "json")
    report = json.loads(r.out)
    city = sum(
        p["amount_micros"]
        for d in docs
        for p in d["vouchers"]["by_programme"]
        if p["programme"] == "demo-city"
    )
    assert r.code == 0 and report["disbursed_micros"] == city > 0

    r = aiplus("bill", "close", "--month", months[0])
    assert r.code == 0, r.err
    out = tmp_path / "claim"
    r = aiplus("bill", "claims", "--programme", "demo-city", "--month", months[0], "--out", str(out))
    assert r.code == 0 and r.out.startswith("wrote the closed claim of demo-city"), r.err
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = aiplus("bill", "claims", "--verify", str(out))
    assert r.code == 0 and "verified" in r.out
    again = tmp_path / "again"
    aiplus("bill", "claims", "--programme", "demo-city", "--month", months[0], "--out", str(again))
    assert {p.name: p.read_bytes() for p in again.rglob("*") if p.is_file()} == first  # byte for byte
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["share_micros"] == city

    r = aiplus("vouchers", "revoke", "999999")
    assert r.code == 1 and r.err.startswith("aiplus: error: no voucher 999999")
    r = aiplus("bill", "claims", "--programme", "nowhere", "--month", months[0], "--out", str(tmp_path / "x"))
    assert r.code == 1 and "no voucher programme 'nowhere'" in r.err and "Traceback" not in r.err
    r = aiplus(
        "vouchers",
        "issue",
        "--programme",
        "demo-city",
        "--org",
        paid[0]["org"]["id"],
        "--amount",
        "1.0000001",
        "--expires",
        "2099-01-01",
    )
    assert r.code == 2 and "more than six decimals" in r.err
