"""Usage reports: read from the daily rollups only, never from the raw events."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa

from aiplus.storage.tables import orgs, usage_daily

GROUPS = ("day", "month")
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
) -> list[dict]:
    """Rows of (period, org, model) with summed counters; ``start`` and ``end`` are inclusive days (UTC).

    ``sector`` and ``tier`` filter by the organization's current sector and tier.
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    d = usage_daily.c
    failed = sa.case((d.status != "ok", d.requests), else_=0)
    query = sa.select(
        d.day,
        d.org_id,
        d.model,
        sa.func.sum(d.requests).label("requests"),
        sa.func.sum(failed).label("failed_requests"),
        sa.func.sum(d.tool_requests).label("tool_requests"),
        sa.func.sum(d.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(d.completion_tokens).label("completion_tokens"),
        sa.func.sum(d.cost_micros).label("cost_micros"),
    ).group_by(d.day, d.org_id, d.model)
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
    if start:
        query = query.where(d.day >= start)
    if end:
        query = query.where(d.day <= end)
    rows: dict[tuple[str, str, str], dict] = {}
    for r in conn.execute(query):
        day = r.day if isinstance(r.day, date) else date.fromisoformat(str(r.day))
        period = day.isoformat() if group_by == "day" else day.strftime("%Y-%m")
        row = rows.setdefault(
            (period, r.org_id, r.model),
            {"period": period, "org_id": r.org_id, "model": r.model, **dict.fromkeys(_SUMS, 0)},
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
