"""Claim packs: totals recompute from the files alone, a closed month's claim is the same bytes after late usage,
a tampered file is caught, and a payment is in exactly one claim. Plus a programme's monthly statement."""

import hashlib

import pytest

from aiplus.billing.claims import claim_files, programme_statement, verify_claim, write_claim
from aiplus.billing.errors import BillingError
from aiplus.billing.statements import close_month

from .conftest import event, utc, write
from .test_vouchers import M, funded  # noqa: F401  (the fixture)


def test_claim_pack_recomputes_and_a_closed_claim_never_changes(funded, tmp_path):  # noqa: F811
    db, v = funded
    with db.connect() as conn:
        open_files = claim_files(conn, "city", "2027-03")
    with db.begin() as conn:
        close_month(conn, "2027-03", now=utc(2027, 4, 2))
    with db.connect() as conn:
        manifest = write_claim(conn, "city", "2027-03", tmp_path / "march")
        first = claim_files(conn, "city", "2027-03")
    assert manifest["status"] == "closed" and b'"status": "open"' in open_files["manifest.json"]
    # city paid alpha 3.00 + 2.00 and delta 0.60; the charges it paid on: 10.00 + 10.00 + 2.00.
    assert manifest["totals"] == {
        "organizations": 2,
        "rows": 3,
        "charge_micros": 22 * M,
        "share_micros": 5_600_000,
    }
    assert [d["day"] for d in manifest["daily"]] == ["2027-03-05", "2027-03-10", "2027-03-20"]
    chain = hashlib.sha256(b"aiplus-claim|city|2027-03").hexdigest()  # by hand, as docs/vouchers.md says
    for d in manifest["daily"]:
        chain = hashlib.sha256(
            f"{chain}|{d['day']}|{d['charge_micros']}|{d['share_micros']}".encode()
        ).hexdigest()
    assert manifest["chain"] == chain == manifest["daily"][-1]["chain"]
    files = {f["name"]: f["sha256"] for f in manifest["files"]}
    assert files["usage.csv"] == hashlib.sha256((tmp_path / "march" / "usage.csv").read_bytes()).hexdigest()
    assert sorted(first) == ["manifest.json", "statements/alpha.json", "statements/delta.json", "usage.csv"]
    assert verify_claim(tmp_path / "march")["share_micros"] == 5_600_000
    write(db, event("d-late", "delta", utc(2027, 3, 28, 9), prompt=1 * M))
    with db.connect() as conn:
        assert claim_files(conn, "city", "2027-03") == first  # byte for byte
    with db.begin() as conn:
        close_month(conn, "2027-04", now=utc(2027, 5, 2))
    with db.connect() as conn:
        april = write_claim(conn, "city", "2027-04", tmp_path / "april")
    assert april["totals"]["share_micros"] == 300_000  # the late March usage, claimed once, in April's claim
    assert verify_claim(tmp_path / "april")["rows"] == 1
    usage = (tmp_path / "march" / "usage.csv").read_text()
    (tmp_path / "march" / "usage.csv").write_text(usage.replace(",2000000,", ",2000001,"))
    with pytest.raises(BillingError) as err:
        verify_claim(tmp_path / "march")
    assert err.value.field == "usage.csv"


def test_programme_statement(funded):  # noqa: F811
    db, v = funded
    with db.connect() as conn:
        report = programme_statement(conn, "district", "2027-03")
    assert report["disbursed_micros"] == 3_500_000 and report["pool_left_micros"] == 0
    assert [(r["org"], r["amount_micros"]) for r in report["by_org"]] == [("alpha", 3 * M), ("beta", 500_000)]
    assert [(r["size"], r["organizations"]) for r in report["by_size"]] == [("small", 2)]
    assert [x["id"] for x in report["expiring"]] == [v["v2"]]  # expires on March 15
