"""A programme's claim for a month, and its own monthly statement: what a funder pays against, auditable.

A claim pack is three kinds of file, each a pure function of the month's statements (frozen once the month is
closed, so a closed month's claim is the same bytes every time):

- ``usage.csv``: one row per voucher payment: the day, organization and model of the charge, its tokens, the
  charge and the programme's share (a payment for late usage of a closed month carries that ``for_month``);
- ``statements/<org>.json``: the statements the rows rest on, byte for byte as served;
- ``manifest.json``: the SHA-256 of every other file, the totals, and a hash chain over the daily totals.

A claim for month M holds the payments M's statements booked (late usage of earlier months included), so a
payment is in exactly one claim. ``verify_claim`` is what an auditor runs: it recomputes everything from the
files alone (docs/vouchers.md says how to do the same by hand).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import orjson
import sqlalchemy as sa

from aiplus.billing.disbursement import Funder
from aiplus.billing.errors import BillingError
from aiplus.billing.months import first_day, next_month, parse_month
from aiplus.billing.programmes import list_vouchers, load_programmes, show_programme
from aiplus.billing.statements import document_bytes, statements
from aiplus.billing.versions import load_versions
from aiplus.storage.tables import billing_months, orgs, voucher_writeoffs

USAGE_COLUMNS = (
    "for_month",
    "day",
    "org_id",
    "sector",
    "region",
    "model",
    "tokens",
    "charge_micros",
    "voucher",
    "share_micros",
)


def claim_files(conn: sa.Connection, programme_id: str, month: str) -> dict[str, bytes]:
    """The claim pack of ``programme_id`` for ``month`` as file name -> bytes (manifest.json included)."""
    month = parse_month(month)
    programme = show_programme(conn, programme_id)
    docs = [d for d in statements(conn, month) if _payments(d, programme_id)]
    files = {f"statements/{d['org']['id']}.json": document_bytes(d) for d in docs}
    files["usage.csv"] = _usage_csv(docs, programme_id)
    rows = list(csv.DictReader(io.StringIO(files["usage.csv"].decode())))
    closed = bool(docs) and all(d["status"] == "closed" for d in docs)
    if not docs:
        closed = (
            conn.scalar(sa.select(billing_months.c.month).where(billing_months.c.month == month)) is not None
        )
    manifest = {
        "object": "voucher_claim",
        "programme": {k: programme[k] for k in ("id", "name", "funder", "share_bp")},
        "month": month,
        "status": "closed" if closed else "open",
        "currency": docs[0]["currency"] if docs else "",
        "files": [
            {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        ],
        **_totals(rows, programme_id, month),
    }
    files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    return files


def write_claim(conn: sa.Connection, programme_id: str, month: str, out: str | Path) -> dict:
    """Write the claim pack into directory ``out`` (created); returns the manifest."""
    files = claim_files(conn, programme_id, month)
    root = Path(out)
    for name, data in files.items():
        path = root.joinpath(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return orjson.loads(files["manifest.json"])


def verify_claim(directory: str | Path) -> dict:
    """Recompute a claim pack from its files alone; BillingError names the first thing that does not add up."""
    root = Path(directory)
    try:
        manifest = orjson.loads(root.joinpath("manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BillingError(f"no readable manifest.json in {root}: {exc}", "manifest.json") from None
    for entry in manifest["files"]:
        data = root.joinpath(entry["name"]).read_bytes() if root.joinpath(entry["name"]).is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BillingError(f"{entry['name']} is missing or differs from its SHA-256", entry["name"])
    rows = list(csv.DictReader(io.StringIO(root.joinpath("usage.csv").read_text())))
    programme = manifest["programme"]["id"]
    recomputed = _totals(rows, programme, manifest["month"])
    for key, value in recomputed.items():
        if manifest[key] != value:
            raise BillingError(f"the manifest's {key} does not recompute from usage.csv", key)
    proof: dict[tuple, int] = defaultdict(int)
    for path in sorted(root.joinpath("statements").glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        for p in _payments(doc, programme):
            proof[(doc["org"]["id"], p["for_month"], p["day"], p["model"], str(p["voucher"]))] += p[
                "amount_micros"
            ]
        if doc["amount_due_micros"] + doc["vouchers"]["amount_micros"] != _owed(doc):
            raise BillingError(f"{path.name}: due plus vouchers is not the charge", path.name)
    claimed: dict[tuple, int] = defaultdict(int)
    for r in rows:
        claimed[(r["org_id"], r["for_month"], r["day"], r["model"], r["voucher"])] += int(r["share_micros"])
    if claimed != proof:
        raise BillingError("usage.csv and the statements' voucher payments differ", "usage.csv")
    return {"ok": True, "month": manifest["month"], "programme": programme, **recomputed["totals"]}


def _owed(doc: dict) -> int:
    return (
        doc["charge_micros"]
        - doc["subsidy"]["amount_micros"]
        + sum(a["amount_micros"] for a in doc["adjustments"])
    )


def _payments(doc: dict, programme_id: str) -> list[dict]:
    """The programme's payments on a statement (none on one frozen before vouchers existed)."""
    return [p for p in doc.get("vouchers", {}).get("payments", ()) if p["programme"] == programme_id]


def _usage_csv(docs: list[dict], programme_id: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(USAGE_COLUMNS)
    rows = []
    for doc in docs:
        org = doc["org"]
        tokens = {(p["for_month"], p["day"], p["model"]): p["tokens"] for p in doc["vouchers"]["pieces"]}
        for p in _payments(doc, programme_id):
            key = (p["for_month"], p["day"], p["model"])
            rows.append(
                (p["day"], org["id"], p["model"], p["voucher"], p["for_month"], org["sector"], org["region"])
                + (tokens.get(key, 0), p["charge_micros"], p["amount_micros"])
            )
    for day, org_id, model, voucher, for_month, sector, region, n, charge, share in sorted(rows):
        writer.writerow([for_month, day, org_id, sector, region, model, n, charge, voucher, share])
    return out.getvalue().encode()


def _totals(rows: list[dict], programme_id: str, month: str) -> dict:
    """Daily totals (each charge once, however many of the programme's vouchers paid on it) and their chain."""
    charges: dict[str, dict[tuple, int]] = defaultdict(dict)
    shares: dict[str, int] = defaultdict(int)
    for r in rows:
        charges[r["day"]][(r["org_id"], r["for_month"], r["model"])] = int(r["charge_micros"])
        shares[r["day"]] += int(r["share_micros"])
    chain = hashlib.sha256(f"aiplus-claim|{programme_id}|{month}".encode()).hexdigest()
    daily = []
    for day in sorted(shares):
        charge = sum(charges[day].values())
        chain = hashlib.sha256(f"{chain}|{day}|{charge}|{shares[day]}".encode()).hexdigest()
        daily.append({"day": day, "charge_micros": charge, "share_micros": shares[day], "chain": chain})
    return {
        "totals": {
            "organizations": len({r["org_id"] for r in rows}),
            "rows": len(rows),
            "charge_micros": sum(d["charge_micros"] for d in daily),
            "share_micros": sum(shares.values()),
        },
        "daily": daily,
        "chain": chain,
    }


def programme_statement(conn: sa.Connection, programme_id: str, month: str) -> dict:
    """A programme's month: disbursement by organization, sector, region and size, the pool left after the
    month, and its vouchers expiring this month or the next."""
    month = parse_month(month)
    programme = show_programme(conn, programme_id)
    docs = [d for d in statements(conn, month) if _payments(d, programme_id)]
    ids = [d["org"]["id"] for d in docs]
    sizes = (
        {
            oid: size
            for oid, size in conn.execute(sa.select(orgs.c.id, orgs.c.size_class).where(orgs.c.id.in_(ids)))
        }
        if ids
        else {}
    )
    by: dict[str, dict[str, list[int]]] = {
        k: defaultdict(lambda: [0, 0]) for k in ("org", "sector", "region", "size")
    }
    for doc in docs:
        org = doc["org"]
        paid = sum(p["amount_micros"] for p in _payments(doc, programme_id))
        keys = {
            "org": org["id"],
            "sector": org["sector"],
            "region": org["region"],
            "size": sizes.get(org["id"]) or "",
        }
        for dim, key in keys.items():
            by[dim][key][0] += 1
            by[dim][key][1] += paid
    total = sum(v[1] for v in by["org"].values())
    horizon = first_day(next_month(next_month(month))) - timedelta(days=1)
    expiring = [
        v
        for v in list_vouchers(conn, programme_id=programme_id)
        if first_day(month) <= date.fromisoformat(v["expires_on"]) <= horizon and not v["revoked_on"]
    ]
    return {
        "object": "voucher_programme.statement",
        "programme": programme,
        "month": month,
        "status": docs[0]["status"] if docs else "",
        "disbursed_micros": total,
        "pool_left_micros": programme["pool_micros"] - _spent_through(conn, programme_id, month),
        **{
            f"by_{dim}": [
                {dim: key, "organizations": n, "amount_micros": amount}
                for key, (n, amount) in sorted(rows.items())
            ]
            for dim, rows in by.items()
        },
        "expiring": expiring,
    }


def _spent_through(conn: sa.Connection, programme_id: str, month: str) -> int:
    """What the programme paid in statements up to ``month``: written off, plus open months' live payments."""
    w = voucher_writeoffs.c
    spent = conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(w.amount_micros), 0)).where(
            w.programme_id == programme_id, w.month <= month
        )
    )
    last_closed = conn.scalar(sa.select(sa.func.max(billing_months.c.month)))
    if last_closed is not None and month <= last_closed:
        return int(spent)
    if programme_id not in load_programmes(conn):
        return int(spent)
    funder = Funder(conn, load_versions(conn), last_closed)
    current = (
        next_month(last_closed)
        if last_closed
        else min((v.valid_from.strftime("%Y-%m") for v in funder.vouchers), default=month)
    )
    while current <= month:
        for payments in funder.month(current).payments.values():
            spent += sum(p.amount_micros for _m, p in payments if p.programme_id == programme_id)
        current = next_month(current)
    return int(spent)
