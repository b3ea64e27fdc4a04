"""Balance-forward statements per organization and month, read from the time-of-use rollup, never raw events.

An open month is computed on demand; closing a month freezes every organization's statement as JSON, byte for
byte. Usage that reaches a closed month later is never edited into it: the next statement carries it as a dated
adjustment (the month recomputed, less what its statement and earlier adjustments already billed). Closing
every month up to ``M`` in order is what makes ``M`` closed; months close one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa

from aiplus.billing.disbursement import Funder, vouchers_section, write_off
from aiplus.billing.errors import BillingError, Conflict, NotFound
from aiplus.billing.locks import serialize
from aiplus.billing.months import month_end, next_month, parse_month, prev_month
from aiplus.billing.pricing import CELL_COLUMNS, Cell, Priced, price_month
from aiplus.billing.tariff import Tariff
from aiplus.billing.versions import load_tariff, load_versions, tariff_for_month
from aiplus.config import SERVICE_TIERS
from aiplus.metering.tou import as_utc
from aiplus.storage.db import transaction
from aiplus.storage.tables import (
    billing_adjustments,
    billing_months,
    billing_statements,
    orgs,
    tariff_versions,
    usage_tou,
)


@dataclass(frozen=True, slots=True)
class OrgInfo:
    id: str
    name: str
    sector: str
    tier: str
    region: str


def statements(conn: sa.Connection, month: str | None, org_id: str | None = None) -> list[dict]:
    """The month's statements (every organization, or one), closed ones exactly as frozen, sorted by org id.

    ``month`` None: the current month in the tariff's time zone.
    """
    month = current_month(conn) if month is None else parse_month(month)
    last_closed = _last_closed(conn)
    if last_closed is not None and month <= last_closed:
        return _frozen(conn, month, org_id)
    return _compute(conn, month, org_id, last_closed, Funder(conn, load_versions(conn), last_closed, org_id))


def statement(conn: sa.Connection, month: str, org_id: str) -> dict:
    """One organization's statement for the month (NotFound for an unknown organization)."""
    return statements(conn, month, org_id)[0]


def current_month(conn: sa.Connection, now: datetime | None = None) -> str:
    """This month in the time zone of the tariff in force (UTC when none is)."""
    now = now or datetime.now(UTC)
    zone = "UTC"
    for start, tariff in sorted(_version_starts(conn), key=lambda v: v[0]):
        if start <= now:
            zone = tariff.timezone
    local = now.astimezone(ZoneInfo(zone))
    return f"{local.year:04d}-{local.month:02d}"


def document_bytes(doc: dict) -> bytes:
    """The canonical JSON of a statement: what a closed month stores and serves, byte for byte."""
    return orjson.dumps(doc)


def close_month(conn: sa.Connection, month: str, *, now: datetime | None = None) -> dict:
    """Freeze the month's statements (all organizations) and book pending adjustments; all or nothing."""
    month = parse_month(month)
    now = now or datetime.now(UTC)
    with transaction(conn):
        serialize(conn)
        last_closed = _last_closed(conn)
        if last_closed is not None and month <= last_closed:
            raise Conflict(f"{month} is already closed (months are closed up to {last_closed})", "month")
        earlier = sa.select(sa.func.min(usage_tou.c.month)).where(usage_tou.c.month < month)
        if last_closed is not None:
            earlier = earlier.where(usage_tou.c.month > last_closed)
        pending = conn.scalar(earlier)
        if pending is not None:
            raise Conflict(
                f"{pending} has usage and is still open: close months in order ({pending} first)", "month"
            )
        ends = month_end(month, _version_starts(conn))
        if now < ends:
            raise BillingError(f"{month} is not over yet: it ends at {ends.isoformat()}", "month")
        closed_at = now.astimezone(UTC).isoformat()
        conn.execute(sa.insert(billing_months), {"month": month, "closed_at": now})
        docs = _compute(conn, month, None, last_closed, Funder(conn, load_versions(conn), last_closed))
        written_off = write_off(conn, month, docs)
        rows, adjustments = [], []
        for doc in docs:
            doc["status"] = "closed"
            doc["closed_at"] = closed_at
            rows.append(
                {
                    "month": month,
                    "org_id": doc["org"]["id"],
                    "tokens": doc["tokens"],
                    "charge_micros": doc["charge_micros"] - doc["subsidy"]["amount_micros"],
                    "closing_micros": doc["closing_balance_micros"],
                    "document": document_bytes(doc).decode(),
                }
            )
            for adj in doc["adjustments"]:
                adjustments.append(
                    {
                        "month": month,
                        "org_id": doc["org"]["id"],
                        "for_month": adj["for_month"],
                        "tokens": adj["tokens"],
                        "amount_micros": adj["amount_micros"],
                    }
                )
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(billing_statements), rows[start : start + 5000])
        if adjustments:
            conn.execute(sa.insert(billing_adjustments), adjustments)
    return {
        "month": month,
        "closed_at": closed_at,
        "statements": len(docs),
        "adjustments": len(adjustments),
        "voucher_writeoffs": written_off,
        "amount_due_micros": sum(d["amount_due_micros"] for d in docs),
    }


def _last_closed(conn: sa.Connection) -> str | None:
    return conn.scalar(sa.select(sa.func.max(billing_months.c.month)))


def _version_starts(conn: sa.Connection) -> list[tuple[datetime, Tariff]]:
    t = tariff_versions.c
    return [
        (as_utc(r.effective_from), load_tariff(r.document))
        for r in conn.execute(sa.select(t.effective_from, t.document))
    ]


def _orgs(conn: sa.Connection, org_id: str | None) -> list[OrgInfo]:
    o = orgs.c
    query = sa.select(o.id, o.name, o.sector, o.tier, o.region).order_by(o.id)
    if org_id is not None:
        query = query.where(o.id == org_id)
    found = [OrgInfo(*row) for row in _fetch(conn, query)]
    if org_id is not None and not found:
        raise NotFound(f"no organization {org_id!r}", "org_id")
    return found


def _cells(conn: sa.Connection, month: str, org_id: str | None) -> dict[str, list[Cell]]:
    """The month's rollup rows per organization (ordered by org only to group them; pricing sorts the cells)."""
    u = usage_tou.c
    query = sa.select(u.org_id, *CELL_COLUMNS)
    query = query.where(u.month == month).order_by(u.org_id)
    if org_id is not None:
        query = query.where(u.org_id == org_id)
    return {org: [row[1:] for row in rows] for org, rows in groupby(_fetch(conn, query), key=itemgetter(0))}


def _fetch(conn: sa.Connection, query: sa.Select) -> list[tuple]:
    """Plain tuples straight from the driver, in this connection's transaction: a month of every organization is
    half a million rows, and SQLAlchemy's row objects cost about a third more than the driver's tuples."""
    compiled = query.compile(dialect=conn.dialect)
    params = compiled.params
    if compiled.positiontup is not None:  # SQLite's qmark style
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _frozen(conn: sa.Connection, month: str, org_id: str | None) -> list[dict]:
    s = billing_statements.c
    query = sa.select(s.document).where(s.month == month).order_by(s.org_id)
    if org_id is not None:
        _orgs(conn, org_id)  # NotFound for an unknown organization
        query = query.where(s.org_id == org_id)
    docs = [orjson.loads(doc) for doc in conn.execute(query).scalars()]
    if org_id is not None and not docs:
        raise NotFound(
            f"{org_id!r} has no statement for {month}, a closed month it was not billed in", "org_id"
        )
    return docs


def _compute(
    conn: sa.Connection, month: str, org_id: str | None, last_closed: str | None, funder: Funder
) -> list[dict]:
    tariffs = funder.tariffs
    in_force = tariff_for_month(conn, month)  # currency and time zone of a statement without usage
    members = _orgs(conn, org_id)
    cells = _cells(conn, month, org_id)
    known = {o.id for o in members}
    members += [OrgInfo(oid, "", "", "", "") for oid in sorted(set(cells) - known)]  # usage of a vanished org
    opening = _opening(conn, month, org_id, last_closed, funder)
    first_open = last_closed is not None and month == next_month(last_closed)
    adjustments = _pending_adjustments(conn, month, org_id, last_closed, tariffs) if first_open else {}
    docs = []
    for org in sorted(members, key=lambda o: o.id):
        priced = price_month(cells.get(org.id, []), tariffs, org.tier, org.sector)
        doc = _document(
            org, month, priced, tariffs, opening.get(org.id, 0), adjustments.get(org.id, []), in_force
        )
        docs.append(_funded(doc, vouchers_section(funder, month, org.id)))
    return docs


def _opening(
    conn: sa.Connection, month: str, org_id: str | None, last_closed: str | None, funder: Funder
) -> dict[str, int]:
    """Each organization's opening balance: the closing balance of the month before (computed if still open)."""
    previous = prev_month(month)
    s = billing_statements.c
    if last_closed is not None and previous <= last_closed:
        query = sa.select(s.org_id, s.closing_micros).where(s.month == last_closed)
        if org_id is not None:
            query = query.where(s.org_id == org_id)
        return {org: int(micros) for org, micros in conn.execute(query)}
    earliest = conn.scalar(sa.select(sa.func.min(usage_tou.c.month)))
    if earliest is None or previous < earliest:
        return {}
    return {
        d["org"]["id"]: d["closing_balance_micros"]
        for d in _compute(conn, previous, org_id, last_closed, funder)
    }


def _pending_adjustments(
    conn: sa.Connection, month: str, org_id: str | None, last_closed: str, tariffs: dict[int, Tariff]
) -> dict[str, list[dict]]:
    """Usage that reached closed months after they closed, as adjustments for the first open month."""
    u, s, a = usage_tou.c, billing_statements.c, billing_adjustments.c
    current = sa.select(u.org_id, u.month, sa.func.sum(u.prompt_tokens + u.completion_tokens))
    current = current.where(u.month <= last_closed).group_by(u.org_id, u.month)
    billed_q = sa.select(s.org_id, s.month, s.tokens, s.charge_micros).where(s.month <= last_closed)
    booked_q = sa.select(a.org_id, a.for_month, sa.func.sum(a.tokens), sa.func.sum(a.amount_micros))
    booked_q = booked_q.where(a.month <= last_closed).group_by(a.org_id, a.for_month)
    if org_id is not None:
        current, billed_q, booked_q = (
            q.where(col == org_id)
            for q, col in ((current, u.org_id), (billed_q, s.org_id), (booked_q, a.org_id))
        )
    billed: dict[tuple[str, str], list[int]] = {}
    for org, closed, tokens, amount in conn.execute(billed_q):
        billed[(org, closed)] = [int(tokens), int(amount)]
    for org, closed, tokens, amount in conn.execute(booked_q):
        acc = billed.setdefault((org, closed), [0, 0])
        acc[0] += int(tokens)
        acc[1] += int(amount)
    out: dict[str, list[dict]] = {}
    for org, closed, tokens in sorted(conn.execute(current)):
        tokens = int(tokens)
        was_tokens, was_amount = billed.get((org, closed), (0, 0))
        if tokens == was_tokens:
            continue
        tier, sector = _frozen_class(conn, closed, org)
        priced = price_month(_cells(conn, closed, org).get(org, []), tariffs, tier, sector)
        out.setdefault(org, []).append(
            {
                "for_month": closed,
                "booked_in": month,
                "note": f"usage of {closed} recorded after {closed} was closed",
                "tokens": tokens - was_tokens,
                "amount_micros": priced.net_micros - was_amount,
            }
        )
    return out


def _frozen_class(conn: sa.Connection, month: str, org_id: str) -> tuple[str, str]:
    """The tier and sector a closed statement billed the organization in (its current ones if it had none)."""
    s = billing_statements.c
    doc = conn.scalar(sa.select(s.document).where(s.month == month, s.org_id == org_id))
    if doc is not None:
        org = orjson.loads(doc)["org"]
        return org["tier"], org["sector"]
    row = conn.execute(sa.select(orgs.c.tier, orgs.c.sector).where(orgs.c.id == org_id)).first()
    return (row.tier, row.sector) if row else ("", "")


def _document(
    org: OrgInfo,
    month: str,
    priced: Priced,
    tariffs: dict[int, Tariff],
    opening: int,
    adjustments: list[dict],
    in_force: Tariff | None,
) -> dict:
    used = [tariffs[v] for v in priced.versions if v in tariffs]
    latest = used[-1] if used else in_force
    share = latest.subsidy_bp.get(org.sector, 0) if latest else 0
    adjusted = sum(adj["amount_micros"] for adj in adjustments)
    due = priced.charge_micros - priced.subsidy_micros + adjusted
    return {
        "object": "billing.statement",
        "month": month,
        "status": "open",
        "org": {"id": org.id, "name": org.name, "sector": org.sector, "tier": org.tier, "region": org.region},
        "currency": latest.currency if latest else "",
        "timezone": latest.timezone if latest else "UTC",
        "tariff_versions": priced.versions,
        "opening_balance_micros": opening,
        "lines": priced.lines,
        "tokens": priced.tokens,
        "lifeline_tokens": priced.lifeline_tokens,
        "lifeline_value_micros": priced.lifeline_value_micros,
        "charge_micros": priced.charge_micros,
        "charge_by_service_tier": _by_service_tier(priced.lines),
        "subsidy": {"sector": org.sector, "share_bp": share, "amount_micros": priced.subsidy_micros},
        "adjustments": adjustments,
        "amount_due_micros": due,
        "closing_balance_micros": opening + due,
    }


def _by_service_tier(lines: list[dict]) -> list[dict]:
    """The charge split by service tier, when a tariff prices them differently (else empty: nothing to split).

    Lines of a version that prices every tier alike (``service_tier`` "") stay together as one entry "", so
    the entries always add up to the charge."""
    if all(not line["service_tier"] for line in lines):
        return []
    sums: dict[str, list[int]] = {}
    for line in lines:
        acc = sums.setdefault(line["service_tier"], [0, 0])
        acc[0] += line["prompt_tokens"] + line["completion_tokens"]
        acc[1] += line["amount_micros"]
    return [
        {"service_tier": name, "tokens": sums[name][0], "amount_micros": sums[name][1]}
        for name in (*SERVICE_TIERS, "")
        if name in sums
    ]


def _funded(doc: dict, vouchers: dict) -> dict:
    """The statement with what vouchers paid: a voucher section before the amount due, which it lowers."""
    due, closing = doc.pop("amount_due_micros"), doc.pop("closing_balance_micros")
    doc["vouchers"] = vouchers
    doc["amount_due_micros"] = due - vouchers["amount_micros"]
    doc["closing_balance_micros"] = closing - vouchers["amount_micros"]
    return doc
