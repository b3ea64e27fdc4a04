"""Usage reports: read from the daily rollups only, never from the raw events."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa

from aiplus.config import SERVICE_TIERS
from aiplus.storage.tables import orgs, usage_daily

GROUPS = ("day", "month")
_RANK = {name: i for i, name in enumerate(SERVICE_TIERS)}  # rows list service tiers from the highest
_SUMS = ("requests", "failed_requests", "tool_requests", "prompt_tokens", "completion_tokens", "cost_micros")


def parse_day(value: str | date | None, param: str) -> date | None:
    """A day from ``2026-11-29`` or a full ISO timestamp; ValueError names the parameter."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError(f"{param} must be a date like 2026-11-29, not {value!r}") from None


def query_usage(
    conn: sa.Connection,
    *,
    org_id: str | None = None,
    model: str | None = None,
    sector: str | None = None,
    tier: str | None = None,
    start: date | None = None,
    end: date | None = None,
    group_by: str = "day",
    service_tier: str | None = None,
    by_service_tier: bool = False,
) -> list[dict]:
    """Rows of (period, org, model[, service tier]) with summed counters; ``start``, ``end``: inclusive days (UTC).

    ``sector`` and ``tier`` filter by the organization's current sector and tier; ``service_tier`` by the band
    requests were served in. ``by_service_tier`` splits each row by service tier (rows then carry
    ``service_tier``).
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    if service_tier is not None and service_tier not in SERVICE_TIERS:
        raise ValueError(f"service_tier must be one of {', '.join(SERVICE_TIERS)}, not {service_tier!r}")
    d = usage_daily.c
    failed = sa.case((d.status != "ok", d.requests), else_=0)
    keys = (d.day, d.org_id, d.model, *((d.service_tier,) if by_service_tier else ()))
    query = sa.select(
        *keys,
        sa.func.sum(d.requests).label("requests"),
        sa.func.sum(failed).label("failed_requests"),
        sa.func.sum(d.tool_requests).label("tool_requests"),
        sa.func.sum(d.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(d.completion_tokens).label("completion_tokens"),
        sa.func.sum(d.cost_micros).label("cost_micros"),
    ).group_by(*keys)
    if sector or tier:
        query = query.join(orgs, orgs.c.id == d.org_id)
        if sector:
            query = query.where(orgs.c.sector == sector)
        if tier:
            query = query.where(orgs.c.tier == tier)
    if org_id:
        query = query.where(d.org_id == org_id)
    if model:
        query = query.where(d.model == model)
    if service_tier:
        query = query.where(d.service_tier == service_tier)
    if start:
        query = query.where(d.day >= start)
    if end:
        query = query.where(d.day <= end)
    rows: dict[tuple[str, str, str, int], dict] = {}
    for r in conn.execute(query):
        day = r.day if isinstance(r.day, date) else date.fromisoformat(str(r.day))
        period = day.isoformat() if group_by == "day" else day.strftime("%Y-%m")
        split = {"service_tier": r.service_tier} if by_service_tier else {}
        rank = _RANK.get(r.service_tier, len(_RANK)) if by_service_tier else 0
        row = rows.setdefault(
            (period, r.org_id, r.model, rank),
            {"period": period, "org_id": r.org_id, "model": r.model, **split, **dict.fromkeys(_SUMS, 0)},
        )
        for name in _SUMS:
            row[name] += int(getattr(r, name) or 0)
    out = [rows[k] for k in sorted(rows)]
    for row in out:
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return out


def totals(rows: list[dict]) -> dict:
    keys = (*_SUMS, "total_tokens")
    return {k: sum(r[k] for r in rows) for k in keys}


def totals_by_service_tier(rows: list[dict]) -> dict[str, dict]:
    """Totals per service tier of rows split ``by_service_tier`` (every tier, zero where unused)."""
    return {name: totals([r for r in rows if r["service_tier"] == name]) for name in SERVICE_TIERS}
