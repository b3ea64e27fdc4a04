"""The adoption report: penetration per group, its monthly series, a forecast per group and the target status.

One function builds it; the CLI (table, JSON, CSV), the chart and ``GET /admin/adoption`` all render its output.
"""

from __future__ import annotations

import csv
import io
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from aiplus.adoption import snapshots
from aiplus.adoption.diffusion import STATUS_RULE, Forecast, forecast
from aiplus.adoption.penetration import (
    MAX_MONTHS,
    Cell,
    Definition,
    Series,
    first_usage_day,
    last_complete_month_end,
    month_ends,
    penetration_series,
    unregistered_tenants,
)
from aiplus.adoption.register import ALL_SECTORS, load_observations
from aiplus.config import AdoptionConfig

FIT_SOURCES = ("ledger", "observations", "both")
TOTAL = "all"


@dataclass(slots=True)
class GroupReport:
    key: str
    series: list[Cell]
    forecast: Forecast
    observations: list[dict] = field(default_factory=list)

    @property
    def latest(self) -> Cell:
        return self.series[-1] if self.series else Cell()


@dataclass(slots=True)
class Report:
    definition: Definition
    targets: tuple[tuple[str, float], ...]
    by: str
    months: list[date]
    groups: list[GroupReport]
    total: GroupReport
    fit_on: str
    unregistered_tenants: int

    @property
    def as_of(self) -> date | None:
        return self.months[-1] if self.months else None

    def as_dict(self, *, series: bool = True, band: bool = True) -> dict:
        def group(g: GroupReport) -> dict:
            out = {"key": g.key, **g.latest.as_dict(), "forecast": g.forecast.as_dict(band=band)}
            if series:
                out["series"] = [
                    {"month": m.isoformat()[:7], **c.as_dict()}
                    for m, c in zip(self.months, g.series, strict=True)
                ]
                out["observations"] = [{**o, "date": o["date"].isoformat()} for o in g.observations]
            return out

        return {
            "definition": self.definition.as_dict(),
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "by": self.by,
            "targets": [{"date": d, "level": level} for d, level in self.targets],
            "status_rule": STATUS_RULE,
            "fit_on": self.fit_on,
            "unregistered_tenants": self.unregistered_tenants,
            "groups": [group(g) for g in self.groups],
            "total": group(self.total),
        }


def _seed(key: str) -> int:
    return zlib.crc32(key.encode())


def build_report(
    conn: sa.Connection,
    config: AdoptionConfig,
    *,
    by: str = "sector",
    as_of: date | None = None,
    fit_on: str = "ledger",
    resamples: int = 200,
    detail: str = "latest",
) -> Report:
    """Measure every group of the cut month by month from the rollups, then forecast each against the targets."""
    if fit_on not in FIT_SOURCES:
        raise ValueError(f"fit_on must be one of {', '.join(FIT_SOURCES)}, not {fit_on!r}")
    definition = Definition.from_config(config)
    refresh_snapshots(conn, definition, as_of)
    series: Series = penetration_series(conn, definition, by=by, as_of=as_of, detail=detail)
    observations = load_observations(conn)

    def make(key: str, cells: list[Cell], obs: list[dict]) -> GroupReport:
        dates: list[date] = []
        shares: list[float] = []
        if fit_on in ("ledger", "both"):
            dates += series.months
            shares += [c.penetration for c in cells]
        if fit_on in ("observations", "both"):
            dates += [o["date"] for o in obs]
            shares += [o["penetration"] for o in obs]
        latest = cells[-1] if cells else Cell()
        result = forecast(
            dates,
            shares,
            config.targets,
            orgs=latest.orgs,
            adopting=latest.adopting,
            resamples=resamples,
            seed=_seed(key),
        )
        return GroupReport(key, cells, result, obs)

    by_sector = by == "sector"
    groups = [
        make(key, cells, [o for o in observations if by_sector and o["sector"] == key])
        for key, cells in series.groups.items()
    ]
    total = make(TOTAL, series.total, [o for o in observations if o["sector"] == ALL_SECTORS])
    return Report(
        definition, config.targets, by, series.months, groups, total, fit_on, unregistered_tenants(conn)
    )


def refresh_snapshots(
    conn: sa.Connection, definition: Definition, as_of: date | None = None, *, rebuild: bool = False
) -> int:
    """Store the settled months' window sums not stored yet (a no-op until the snapshot tables exist).

    Runs on connections of its own before ``conn`` reads anything: a read transaction already open on
    ``conn`` could not see what they store, so then it does nothing (the report measures those months live).
    """
    if conn.in_transaction():
        return 0
    engine = conn.engine
    with engine.connect() as other:
        first = first_usage_day(other)
    if first is None:
        return 0
    last = last_complete_month_end(as_of or datetime.now(UTC).date())
    months = month_ends(first, last)[-MAX_MONTHS:]
    return snapshots.refresh(engine, definition.window_days, months, rebuild=rebuild)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def rows(report: Report) -> list[dict]:
    """One flat row per group (and the total), the same columns for the table and the CSV."""
    out = []
    for g in [*report.groups, report.total]:
        c = g.latest
        row = {
            report.by: g.key,
            "orgs": c.orgs,
            "adopting": c.adopting,
            "penetration": c.penetration,
            "employment_penetration": c.employment_penetration,
            "agent_penetration": c.agent_penetration,
            "tokens_per_employee": c.intensity,
            "model": g.forecast.model or "-",
        }
        for t in g.forecast.targets:
            year = t.date.isoformat()[:4]
            row[f"projected_{year}"] = t.projected
            row[f"low_{year}"] = t.low
            row[f"high_{year}"] = t.high
            row[f"status_{year}"] = t.status
            row[f"reached_{int(t.level * 100)}pct"] = t.reached or "never"
            row[f"extra_orgs_per_month_{year}"] = t.extra_per_month
        out.append(row)
    return out


def to_csv(report: Report) -> str:
    table = rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*table[0], "as_of", "definition"], lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({**row, "as_of": report.as_of, "definition": report.definition.text})
    return buf.getvalue()


def to_rich_table(report: Report):
    """A rich ``Table`` with the definition as its caption."""
    from rich.table import Table

    month = report.as_of.isoformat()[:7] if report.as_of else "no data"
    table = Table(title=f"AI adoption by {report.by}, {month}", caption=definition_caption(report))
    table.add_column(report.by)
    for name in ("orgs", "adopting", "penetration", "empl.-weighted", "agent use", "tokens/empl.", "model"):
        table.add_column(name, justify="right")
    for d, level in report.targets:
        year = d[:4]
        table.add_column(f"{year} forecast [80%]", justify="right")
        table.add_column(f"{year} status")
        table.add_column(f"{int(level * 100)}% reached", justify="right")
        table.add_column(f"+orgs/mo for {year}", justify="right")
    for g in [*report.groups, report.total]:
        c = g.latest
        cells = [
            g.key,
            f"{c.orgs:,}",
            f"{c.adopting:,}",
            _pct(c.penetration),
            _pct(c.employment_penetration),
            _pct(c.agent_penetration),
            f"{c.intensity:,.0f}",
            g.forecast.model or "-",
        ]
        for t in g.forecast.targets:
            band = "-" if t.projected is None else f"{_pct(t.projected)} [{_pct(t.low)}-{_pct(t.high)}]"
            extra = "-" if t.extra_per_month is None else f"{t.extra_per_month:,}"
            cells += [band, t.status, t.reached or "never", extra]
        table.add_row(*cells, end_section=bool(report.groups) and g is report.groups[-1])
    return table


def definition_caption(report: Report) -> str:
    targets = ", ".join(f">= {int(level * 100)}% by {d}" for d, level in report.targets)
    return (
        f"{report.definition.text} Targets: {targets}. Forecast: Bass (or logistic when its hold-out error is "
        f"10% lower) least-squares fit on the {report.fit_on} series; 80% band by bootstrap. Status: {STATUS_RULE} "
        f"'+orgs/mo': organizations per month that must start beyond the forecast trend to meet the target on time."
        + (
            f" {report.unregistered_tenants} tenant org(s) are not in the register and are not counted."
            if report.unregistered_tenants
            else ""
        )
    )
