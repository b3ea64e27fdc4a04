"""Funders' voucher programmes and the vouchers issued under them: validated, stored, listed, revoked.

The CLI (``aiplus vouchers``) and the admin API call these same functions. Input arrives as plain values (money
as integer micro-units, shares as decimals like ``"0.3"``, days as ``YYYY-MM-DD``); every error names its field
and nothing is written unless everything is valid. Days are local days of the tariff's time zone, inclusive.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa

from aiplus.billing.errors import BillingError, Conflict, NotFound
from aiplus.billing.funding import Programme, Voucher
from aiplus.billing.locks import serialize
from aiplus.billing.tariff import BP, _share_bp
from aiplus.config import SECTORS
from aiplus.storage.db import transaction
from aiplus.storage.tables import billing_months, orgs, voucher_programmes, voucher_writeoffs, vouchers
from aiplus.tenancy.orgs import SIZE_CLASSES

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ELIGIBILITY = ("sectors", "sizes", "regions", "models")


def parse_day(value, field: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise BillingError(f"{field} must be a date like 2027-01-31, not {value!r}", field) from None


def parse_micros(value, field: str, *, allow_none: bool = False) -> int | None:
    """Integer micro-units, not negative (``None`` allowed where a limit may be absent)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillingError(f"{field} must be a whole number of micro-units, not {value!r}", field)
    if value < 0:
        raise BillingError(f"{field} must not be negative ({value})", field)
    return value


def parse_share(value, field: str) -> int:
    """A share written as a decimal (``Decimal("0.3")``, ``"0.30"``) as basis points, at most 1.0 (100%)."""
    if isinstance(value, str):
        try:
            value = Decimal(value)
        except ArithmeticError:
            raise BillingError(f"{field} must be a decimal share like 0.3, not {value!r}", field) from None
    return _share_bp(value, field, at_most=BP)


def _names(value, field: str, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BillingError(f"{field} must be a list of names", field)
    names = tuple(sorted({v.strip() for v in value}))
    for name in names:
        if allowed is not None and name not in allowed:
            raise BillingError(f"{field}: unknown {name!r}; known: {', '.join(allowed)}", field)
    return names


def validate_programme(spec: dict) -> Programme:
    """A programme from its fields; BillingError names the first wrong one."""
    known = {
        "id",
        "name",
        "funder",
        "pool_micros",
        "share",
        "cap_month_micros",
        "cap_year_micros",
        "valid_from",
        "valid_until",
        "stacks",
        "max_combined_share",
        *_ELIGIBILITY,
    }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise BillingError(f"unknown field(s) {', '.join(unknown)}", unknown[0])
    pid = spec.get("id")
    if not isinstance(pid, str) or not _ID.match(pid):
        raise BillingError(f"id must be lower-case letters, digits, '.', '_' or '-', not {pid!r}", "id")
    texts = {}
    for key in ("name", "funder"):
        value = spec.get(key) or (pid if key == "name" else None)
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise BillingError(f"{key} is required (a string of at most 200 characters)", key)
        texts[key] = value.strip()
    pool = parse_micros(spec.get("pool_micros"), "pool_micros")
    share = parse_share(spec.get("share"), "share")
    if share == 0:
        raise BillingError("share must be above 0 (a programme that pays nothing)", "share")
    cap_month = parse_micros(spec.get("cap_month_micros"), "cap_month_micros", allow_none=True)
    cap_year = parse_micros(spec.get("cap_year_micros"), "cap_year_micros", allow_none=True)
    if cap_month is not None and cap_year is not None and cap_month > cap_year:
        raise BillingError("cap_month_micros must not exceed cap_year_micros", "cap_month_micros")
    start = parse_day(spec.get("valid_from"), "valid_from")
    end = parse_day(spec.get("valid_until"), "valid_until")
    if end < start:
        raise BillingError("valid_until must not be before valid_from", "valid_until")
    stacks = spec.get("stacks", False)
    if not isinstance(stacks, bool):
        raise BillingError(f"stacks must be true or false, not {stacks!r}", "stacks")
    combined = spec.get("max_combined_share")
    combined_bp = share if combined is None else parse_share(combined, "max_combined_share")
    if combined_bp < share:
        raise BillingError(
            "max_combined_share must be at least the programme's own share", "max_combined_share"
        )
    if not stacks and combined_bp != share:
        raise BillingError("max_combined_share applies only to a programme that stacks", "max_combined_share")
    return Programme(
        id=pid,
        name=texts["name"],
        funder=texts["funder"],
        pool_micros=pool,
        share_bp=share,
        cap_month_micros=cap_month,
        cap_year_micros=cap_year,
        valid_from=start,
        valid_until=end,
        sectors=_names(spec.get("sectors"), "sectors", SECTORS),
        sizes=_names(spec.get("sizes"), "sizes", SIZE_CLASSES),
        regions=_names(spec.get("regions"), "regions", None),
        models=_names(spec.get("models"), "models", None),
        stacks=stacks,
        max_combined_bp=combined_bp,
    )


def add_programme(conn: sa.Connection, spec: dict, *, now: datetime | None = None) -> dict:
    """Validate and store a programme (its id must be new)."""
    p = validate_programme(spec)
    with transaction(conn):
        serialize(conn)
        if conn.scalar(sa.select(voucher_programmes.c.id).where(voucher_programmes.c.id == p.id)):
            raise Conflict(f"a programme {p.id!r} exists already", "id")
        conn.execute(
            sa.insert(voucher_programmes),
            {
                "id": p.id,
                "name": p.name,
                "funder": p.funder,
                "pool_micros": p.pool_micros,
                "share_bp": p.share_bp,
                "cap_month_micros": p.cap_month_micros,
                "cap_year_micros": p.cap_year_micros,
                "valid_from": p.valid_from,
                "valid_until": p.valid_until,
                "eligibility": json.dumps({k: list(getattr(p, k)) for k in _ELIGIBILITY}),
                "stacks": p.stacks,
                "max_combined_bp": p.max_combined_bp,
                "created_at": now or datetime.now(UTC),
            },
        )
    return show_programme(conn, p.id)


def load_programmes(conn: sa.Connection) -> dict[str, Programme]:
    out = {}
    for row in conn.execute(sa.select(voucher_programmes).order_by(voucher_programmes.c.id)):
        rules = json.loads(row.eligibility)
        out[row.id] = Programme(
            id=row.id,
            name=row.name,
            funder=row.funder,
            pool_micros=int(row.pool_micros),
            share_bp=row.share_bp,
            cap_month_micros=None if row.cap_month_micros is None else int(row.cap_month_micros),
            cap_year_micros=None if row.cap_year_micros is None else int(row.cap_year_micros),
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            stacks=bool(row.stacks),
            max_combined_bp=row.max_combined_bp,
            **{k: tuple(rules[k]) for k in _ELIGIBILITY},
        )
    return out


def programme_dict(p: Programme, spent: int) -> dict:
    return {
        "object": "voucher_programme",
        "id": p.id,
        "name": p.name,
        "funder": p.funder,
        "pool_micros": p.pool_micros,
        "pool_left_micros": p.pool_micros - spent,
        "share_bp": p.share_bp,
        "cap_month_micros": p.cap_month_micros,
        "cap_year_micros": p.cap_year_micros,
        "valid_from": p.valid_from.isoformat(),
        "valid_until": p.valid_until.isoformat(),
        **{k: list(getattr(p, k)) for k in _ELIGIBILITY},
        "stacks": p.stacks,
        "max_combined_bp": p.max_combined_bp,
    }


def list_programmes(conn: sa.Connection) -> list[dict]:
    """Every programme with its pool left after the write-offs of closed months."""
    spent = _written_off(conn, "programme_id")
    return [programme_dict(p, spent.get(p.id, 0)) for p in load_programmes(conn).values()]


def show_programme(conn: sa.Connection, programme_id: str) -> dict:
    found = [p for p in list_programmes(conn) if p["id"] == programme_id]
    if not found:
        raise NotFound(f"no voucher programme {programme_id!r}", "programme")
    return found[0]


def _written_off(conn: sa.Connection, key: str) -> dict:
    w = voucher_writeoffs.c
    rows = conn.execute(sa.select(w[key], sa.func.sum(w.amount_micros)).group_by(w[key]))
    return {k: int(v) for k, v in rows}


def load_vouchers(conn: sa.Connection, org_ids: list[str] | None = None) -> list[Voucher]:
    query = sa.select(vouchers).order_by(vouchers.c.id)
    if org_ids is not None:
        query = query.where(vouchers.c.org_id.in_(org_ids))
    return [
        Voucher(
            r.id,
            r.programme_id,
            r.org_id,
            int(r.amount_micros),
            r.priority,
            r.valid_from,
            r.expires_on,
            r.revoked_on,
        )
        for r in conn.execute(query)
    ]


def issue_voucher(
    conn: sa.Connection,
    programme_id: str,
    org_id: str,
    amount_micros,
    expires_on,
    *,
    priority=0,
    valid_from=None,
    note: str = "",
    now: datetime | None = None,
) -> dict:
    """Issue a voucher; refused (naming the field) for an unknown programme or organization, validity outside the
    programme's or inside a closed month, or an amount that with the organization's overlapping vouchers of the
    programme would exceed its yearly cap."""
    now = now or datetime.now(UTC)
    amount = parse_micros(amount_micros, "amount_micros")
    if amount == 0:
        raise BillingError("amount_micros must be above 0", "amount_micros")
    if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
        raise BillingError(f"priority must be a whole number -1000..1000, not {priority!r}", "priority")
    if not isinstance(note, str) or len(note) > 200:
        raise BillingError("note must be a string of at most 200 characters", "note")
    with transaction(conn):
        serialize(conn)
        programme = load_programmes(conn).get(programme_id)
        if programme is None:
            raise NotFound(f"no voucher programme {programme_id!r}", "programme")
        if conn.scalar(sa.select(orgs.c.id).where(orgs.c.id == org_id)) is None:
            raise NotFound(f"no organization {org_id!r}", "org_id")
        start = parse_day(valid_from, "valid_from") if valid_from is not None else now.date()
        start = max(start, programme.valid_from)
        end = parse_day(expires_on, "expires_on")
        if end < start:
            raise BillingError(
                f"expires_on ({end}) is before the voucher becomes valid ({start})", "expires_on"
            )
        if end > programme.valid_until:
            raise BillingError(
                f"expires_on ({end}) is after the programme ends ({programme.valid_until})", "expires_on"
            )
        closed = conn.scalar(sa.select(sa.func.max(billing_months.c.month)))
        if closed is not None and start.strftime("%Y-%m") <= closed:
            raise Conflict(
                f"{closed} is closed: a voucher cannot start in or before a closed month", "valid_from"
            )
        if programme.cap_year_micros is not None:
            overlapping = sum(
                v.amount_micros
                for v in load_vouchers(conn, [org_id])
                if v.programme_id == programme_id
                and v.revoked_on is None
                and v.valid_from <= end
                and start <= v.expires_on
            )
            if overlapping + amount > programme.cap_year_micros:
                raise Conflict(
                    f"with the organization's overlapping vouchers of {programme_id} ({overlapping} micro-units) "
                    f"this voucher would exceed the programme's yearly cap of {programme.cap_year_micros}",
                    "amount_micros",
                )
        voucher_id = conn.execute(
            sa.insert(vouchers).returning(vouchers.c.id),
            {
                "programme_id": programme_id,
                "org_id": org_id,
                "amount_micros": amount,
                "priority": priority,
                "valid_from": start,
                "expires_on": end,
                "issued_at": now,
                "revoked_on": None,
                "note": note,
            },
        ).scalar_one()
    return show_voucher(conn, voucher_id)


def list_vouchers(
    conn: sa.Connection, *, programme_id: str | None = None, org_id: str | None = None
) -> list[dict]:
    """Vouchers (optionally of one programme or organization) with what closed months wrote off from each."""
    used = _written_off(conn, "voucher_id")
    out = []
    for v in load_vouchers(conn, None if org_id is None else [org_id]):
        if programme_id is not None and v.programme_id != programme_id:
            continue
        out.append(voucher_dict(v, used.get(v.id, 0)))
    return out


def voucher_dict(v: Voucher, used: int) -> dict:
    return {
        "object": "voucher",
        "id": v.id,
        "programme": v.programme_id,
        "org_id": v.org_id,
        "amount_micros": v.amount_micros,
        "written_off_micros": used,
        "remaining_micros": v.amount_micros - used,
        "priority": v.priority,
        "valid_from": v.valid_from.isoformat(),
        "expires_on": v.expires_on.isoformat(),
        "revoked_on": v.revoked_on.isoformat() if v.revoked_on else None,
    }


def show_voucher(conn: sa.Connection, voucher_id) -> dict:
    try:
        wanted = int(voucher_id)
    except (TypeError, ValueError):
        raise BillingError(f"a voucher id is a number, not {voucher_id!r}", "id") from None
    found = [v for v in list_vouchers(conn) if v["id"] == wanted]
    if not found:
        raise NotFound(f"no voucher {wanted}", "id")
    return found[0]


def revoke_voucher(conn: sa.Connection, voucher_id, *, on=None, now: datetime | None = None) -> dict:
    """Revoke a voucher from a day on (default today): it pays nothing for charges from then; what closed months
    wrote off stays written off. A day inside a closed month is refused."""
    voucher = show_voucher(conn, voucher_id)
    day = parse_day(on, "on") if on is not None else (now or datetime.now(UTC)).date()
    with transaction(conn):
        serialize(conn)
        if voucher["revoked_on"] is not None:
            raise Conflict(f"voucher {voucher['id']} is revoked already (from {voucher['revoked_on']})", "id")
        closed = conn.scalar(sa.select(sa.func.max(billing_months.c.month)))
        if closed is not None and day.strftime("%Y-%m") <= closed:
            raise Conflict(f"{closed} is closed: revoke from a day after it", "on")
        conn.execute(sa.update(vouchers).where(vouchers.c.id == voucher["id"]).values(revoked_on=day))
    return show_voucher(conn, voucher["id"])
