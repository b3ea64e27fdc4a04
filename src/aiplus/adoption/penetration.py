"""Penetration: the share of register organizations adopting in a month, read from the ``usage_daily`` rollups.

An organization adopts in a month when it made at least ``min_requests`` successful requests (status ``ok``)
in the ``window_days`` days ending on the month's last day, inclusive; with ``agent_use_requires_tools`` only
requests that used tool calls count. The denominator is every organization in the register, users or not.
Raw usage events are never read: one SQL aggregation per month over the rollup rows in that window.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from aiplus.adoption import snapshots
from aiplus.adoption.register import SIZE_CLASSES
from aiplus.adoption.snapshots import per_org_sums
from aiplus.config import SECTORS, AdoptionConfig
from aiplus.storage.tables import orgs, register_orgs, usage_daily

CUTS = {"sector": 0, "region": 1, "size": 2}
MAX_MONTHS = 240


@dataclass(frozen=True, slots=True)
class Definition:
    """The adoption rule, printed beside every figure."""

    min_requests: int = 10
    window_days: int = 30
    agent_use_requires_tools: bool = False

    @classmethod
    def from_config(cls, cfg: AdoptionConfig) -> Definition:
        return cls(cfg.min_requests, cfg.window_days, cfg.agent_use_requires_tools)

    @property
    def rule(self) -> str:
        kind = (
            "successful requests that used tool calls"
            if self.agent_use_requires_tools
            else "successful requests"
        )
        return (
            f"an organization adopts in a month if it made >= {self.min_requests} {kind} "
            f"in the {self.window_days} days ending on the month's last day"
        )

    @property
    def denominator(self) -> str:
        return "all organizations in the register (users or not), matched to tenants by id"

    @property
    def text(self) -> str:
        return (
            f"Penetration = adopting / register organizations; {self.rule}. Denominator: {self.denominator}."
        )

    def as_dict(self) -> dict:
        return {
            "min_requests": self.min_requests,
            "window_days": self.window_days,
            "agent_use_requires_tools": self.agent_use_requires_tools,
            "rule": self.rule,
            "denominator": self.denominator,
            "employment_weighted": "employees of adopting organizations / employees of register organizations",
            "agent_penetration": f"share with >= {self.min_requests} successful tool-call requests in the window",
            "intensity": "tokens (prompt + completion, successful requests) in the window per register employee",
            "text": self.text,
        }


@dataclass(slots=True)
class Cell:
    """Counts for one group in one month; shares are derived, never stored."""

    orgs: int = 0
    employees: int = 0
    adopting: int = 0
    adopting_employees: int = 0
    agent: int | None = 0  # None: not measured for this month (see ``window_cells(detail=False)``)
    tokens: int | None = 0

    def add(self, other: Cell) -> None:
        self.orgs += other.orgs
        self.employees += other.employees
        self.adopting += other.adopting
        self.adopting_employees += other.adopting_employees
        self.agent = None if self.agent is None or other.agent is None else self.agent + other.agent
        self.tokens = None if self.tokens is None or other.tokens is None else self.tokens + other.tokens

    @property
    def penetration(self) -> float:
        return self.adopting / self.orgs if self.orgs else 0.0

    @property
    def employment_penetration(self) -> float:
        return self.adopting_employees / self.employees if self.employees else 0.0

    @property
    def agent_penetration(self) -> float | None:
        if self.agent is None:
            return None
        return self.agent / self.orgs if self.orgs else 0.0

    @property
    def intensity(self) -> float | None:
        if self.tokens is None:
            return None
        return self.tokens / self.employees if self.employees else 0.0

    def as_dict(self) -> dict:
        return {
            "orgs": self.orgs,
            "employees": self.employees,
            "adopting": self.adopting,
            "adopting_employees": self.adopting_employees,
            "agent": self.agent,
            "tokens": self.tokens,
            "penetration": self.penetration,
            "employment_penetration": self.employment_penetration,
            "agent_penetration": self.agent_penetration,
            "intensity_tokens_per_employee": self.intensity,
        }


Key = tuple[str, str, str]  # (sector, region, size_class)


@dataclass(slots=True)
class Series:
    """Monthly figures per group of one cut, plus the total over the whole register."""

    by: str
    months: list[date]
    groups: dict[str, list[Cell]] = field(default_factory=dict)
    total: list[Cell] = field(default_factory=list)
    cuts: dict[str, dict[str, list[Cell]]] = field(default_factory=dict)  # every cut, ``groups`` among them


def month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def next_month_end(day: date) -> date:
    return month_end(month_end(day) + timedelta(days=1))


def last_complete_month_end(as_of: date) -> date:
    """``as_of`` itself if it is a month's last day, else the last day of the month before."""
    return as_of if month_end(as_of) == as_of else as_of.replace(day=1) - timedelta(days=1)


def month_ends(first: date, last: date) -> list[date]:
    out, m = [], month_end(first)
    while m <= last:
        out.append(m)
        m = next_month_end(m)
    return out


def register_cells(conn: sa.Connection) -> dict[Key, Cell]:
    """Denominators: organizations and employees per (sector, region, size class)."""
    r = register_orgs
    query = sa.select(
        r.c.sector,
        r.c.region,
        r.c.size_class,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(r.c.employees), 0),
    ).group_by(r.c.sector, r.c.region, r.c.size_class)
    return {(s, g, z): Cell(orgs=n, employees=int(e)) for s, g, z, n, e in conn.execute(query)}


def window_cells(
    conn: sa.Connection, definition: Definition, end: date, *, detail: bool = True
) -> dict[Key, Cell]:
    """Numerators for the window ending on ``end``: adopting orgs and their employees; with ``detail`` also
    agent users and tokens (reading two more columns of every rollup row costs about a third more time)."""
    d, r = usage_daily, register_orgs
    start = end - timedelta(days=definition.window_days)
    window = (d.c.day > start, d.c.day <= end, d.c.status == "ok")
    counted_column = d.c.tool_requests if definition.agent_use_requires_tools else d.c.requests
    group = (r.c.sector, r.c.region, r.c.size_class)
    if not detail:
        per_org = (
            sa.select(d.c.org_id)
            .where(*window)
            .group_by(d.c.org_id)
            .having(sa.func.sum(counted_column) >= definition.min_requests)
            .subquery()
        )
        query = (
            sa.select(*group, sa.func.count(), sa.func.sum(r.c.employees))
            .select_from(per_org.join(r, r.c.id == per_org.c.org_id))
            .group_by(*group)
        )
        return {
            (s, g, z): Cell(adopting=int(a), adopting_employees=int(ae or 0), agent=None, tokens=None)
            for s, g, z, a, ae in conn.execute(query)
        }
    found = conn.execute(_counts(per_org_sums(definition.window_days, end).subquery(), definition))
    return {
        (s, g, z): Cell(adopting=int(a), adopting_employees=int(ae), agent=int(ag), tokens=int(tok or 0))
        for s, g, z, a, ae, ag, tok in found
    }


def _counts(per_org: sa.Subquery, definition: Definition, *, by_month: bool = False) -> sa.Select:
    """Adopting orgs, their employees, agent users and tokens per group, from per-org sums ``n``, ``t``, ``tok``."""
    r = register_orgs
    counted = per_org.c.t if definition.agent_use_requires_tools else per_org.c.n
    adopting = counted >= definition.min_requests
    group = [r.c.sector, r.c.region, r.c.size_class]
    if by_month:
        group.insert(0, per_org.c.month_end)
    return (
        sa.select(
            *group,
            sa.func.sum(sa.case((adopting, 1), else_=0)),
            sa.func.sum(sa.case((adopting, r.c.employees), else_=0)),
            sa.func.sum(sa.case((per_org.c.t >= definition.min_requests, 1), else_=0)),
            sa.func.sum(per_org.c.tok),
        )
        .select_from(per_org.join(r, r.c.id == per_org.c.org_id))
        .group_by(*group)
    )


def stored_cells(
    conn: sa.Connection, definition: Definition, months: list[date]
) -> dict[date, dict[Key, Cell]]:
    """The same numerators as ``window_cells``, read from stored window sums (see ``snapshots``)."""
    w = snapshots.window_sums
    per_org = (
        sa.select(
            w.c.month_end,
            w.c.org_id,
            w.c.requests.label("n"),
            w.c.tool_requests.label("t"),
            w.c.tokens.label("tok"),
        )
        .where(w.c.window_days == definition.window_days, w.c.month_end.in_(months))
        .subquery()
    )
    out: dict[date, dict[Key, Cell]] = {m: {} for m in months}
    for m, s, g, z, a, ae, ag, tok in conn.execute(_counts(per_org, definition, by_month=True)):
        m = date.fromisoformat(m) if isinstance(m, str) else m
        out[m][(s, g, z)] = Cell(
            adopting=int(a), adopting_employees=int(ae), agent=int(ag), tokens=int(tok or 0)
        )
    return out


def first_usage_day(conn: sa.Connection) -> date | None:
    day = conn.scalar(sa.select(sa.func.min(usage_daily.c.day)))
    if isinstance(day, str):  # SQLite through a raw aggregate
        day = date.fromisoformat(day)
    return day


def group_order(by: str, keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    if by == "sector":
        return [s for s in SECTORS if s in keys] + sorted(keys - set(SECTORS))
    if by == "size":
        return [s for s in SIZE_CLASSES if s in keys] + sorted(keys - set(SIZE_CLASSES))
    return sorted(keys)


def penetration_series(
    conn: sa.Connection,
    definition: Definition,
    *,
    by: str = "sector",
    as_of: date | None = None,
    first: date | None = None,
    detail: str = "latest",
) -> Series:
    """Monthly figures from the first month with usage (or ``first``) to the last complete month at ``as_of``.

    Months with stored window sums (``snapshots``) are read from them; the others are measured live, where
    ``detail="latest"`` measures agent use and tokens for the last month only (the series needs only
    penetration, and this is a third faster) and ``"all"`` measures them every month.
    """
    if detail not in ("latest", "all"):
        raise ValueError(f"detail must be 'latest' or 'all', not {detail!r}")
    if by not in CUTS:
        raise ValueError(f"by must be one of {', '.join(CUTS)}, not {by!r}")
    as_of = as_of or datetime.now(UTC).date()
    last = last_complete_month_end(as_of)
    first = first or first_usage_day(conn) or last
    months = month_ends(first, last)[-MAX_MONTHS:]
    base = register_cells(conn)
    cuts = {cut: {n: [] for n in group_order(cut, {key[axis] for key in base})} for cut, axis in CUTS.items()}
    series = Series(by=by, months=months, groups=cuts[by], cuts=cuts)
    stored = stored_cells(
        conn, definition, sorted(snapshots.stored_months(conn, definition.window_days, months))
    )
    for end in months:
        detailed = detail == "all" or end == months[-1] or end in stored
        found = stored[end] if end in stored else window_cells(conn, definition, end, detail=detailed)
        zero = 0 if detailed else None
        cells = {cut: {n: Cell(agent=zero, tokens=zero) for n in names} for cut, names in cuts.items()}
        total = Cell(agent=zero, tokens=zero)
        for key, denominator in base.items():
            cell = Cell(orgs=denominator.orgs, employees=denominator.employees, agent=zero, tokens=zero)
            if key in found:
                cell.add(found[key])
            for cut, axis in CUTS.items():
                cells[cut][key[axis]].add(cell)
            total.add(cell)
        for cut, names in cuts.items():
            for name in names:
                names[name].append(cells[cut][name])
        series.total.append(total)
    return series


def unregistered_tenants(conn: sa.Connection) -> int:
    """Tenant organizations missing from the register: their usage is not counted in any penetration figure."""
    query = (
        sa.select(sa.func.count())
        .select_from(orgs.outerjoin(register_orgs, register_orgs.c.id == orgs.c.id))
        .where(register_orgs.c.id.is_(None))
    )
    return int(conn.scalar(query) or 0)
