"""The adoption report: penetration per group, its monthly series, a forecast per group and the target status.

One function builds it; the CLI (table, JSON, CSV), the chart and ``GET /admin/adoption`` all render its output.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from aiplus.adoption import snapshots
from aiplus.adoption.backtest import MEASURES, Backtest, backtest
from aiplus.adoption.hierarchy import TOTAL, Coherent, Part, coherent
from aiplus.adoption.outlook import STATUS_RULE, Forecast, Grid, judge
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
from aiplus.adoption.register import load_observations
from aiplus.config import AdoptionConfig

FIT_SOURCES = ("ledger", "observations", "both")
BACKTEST_ORIGINS = 12
SUM = "sum of parts"  # the total's model: the register-weighted sum of its parts' forecasts
MAX_ORIGINS = 120


@dataclass(slots=True)
class GroupReport:
    key: str
    series: list[Cell]
    forecast: Forecast  # penetration
    observations: list[dict] = field(default_factory=list)
    agents: Forecast | None = None  # agent use

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
    backtests: dict[str, Backtest] = field(default_factory=dict)  # per measure, when asked for

    @property
    def as_of(self) -> date | None:
        return self.months[-1] if self.months else None

    def as_dict(self, *, series: bool = True, band: bool = True) -> dict:
        def group(g: GroupReport) -> dict:
            out = {
                "key": g.key,
                **g.latest.as_dict(),
                "forecast": g.forecast.as_dict(band=band),
                "agents_forecast": g.agents.as_dict(band=band) if g.agents else None,
            }
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
            "reconciliation": RECONCILIATION,
            "fit_on": self.fit_on,
            "unregistered_tenants": self.unregistered_tenants,
            "groups": [group(g) for g in self.groups],
            "total": group(self.total),
            "backtest": {m: b.as_dict() for m, b in self.backtests.items()},
        }


RECONCILIATION = (
    "the total is the sum of the sectors' forecasts weighted by their register organizations, at every month "
    "and on every sample path (its band: percentiles of the summed paths); other cuts are reconciled to it "
    "top-down, sharing its growth in proportion to their own forecast growth; every forecast starts at the last observed month"
)


def _parts(
    months: list[date], groups: dict[str, list[Cell]], value, obs: dict[str, list[dict]], fit_on: str
) -> dict[str, Part]:
    out = {}
    for key, cells in groups.items():
        dates: list[date] = []
        shares: list[float] = []
        ledger = fit_on in ("ledger", "both") or not obs.get(key)
        if ledger:
            dates += months
            shares += [value(c) for c in cells]
        if fit_on in ("observations", "both"):
            dates += [o["date"] for o in obs.get(key, [])]
            shares += [o["penetration"] for o in obs.get(key, [])]
        latest = cells[-1] if cells else Cell()
        out[key] = Part(dates, shares, value(latest) if ledger and cells else None, latest.orgs)
    return out


def _forecasts(
    series: Series, grid: Grid, targets, fit_on: str, observations: dict[str, list[dict]], resamples: int
) -> dict[str, dict[str, Forecast]]:
    """Each measure's coherent forecasts, judged: ``{measure: {group or TOTAL: Forecast}}``."""
    months, by = series.months, series.by
    cells = {**series.groups, TOTAL: series.total}
    out: dict[str, dict[str, Forecast]] = {}
    done: dict[str, Coherent] = {}
    for measure, value in MEASURES.items():  # penetration first: agent use is capped by it
        obs = observations if measure == "penetration" else {}
        sectors = _parts(months, series.cuts["sector"], value, obs, fit_on if obs else "ledger")
        cut = None if by == "sector" else _parts(months, series.groups, value, {}, "ledger")
        result = coherent(
            grid, sectors, cut, resamples=resamples, seed=measure, below=done.get("penetration")
        )
        done[measure] = result
        count = (lambda c: c.adopting) if measure == "penetration" else (lambda c: c.agent or 0)
        fitted = any(p.fit for p in result.sectors.values())
        out[measure] = {}
        for key, projection in [*result.parts.items(), (TOTAL, result.total)]:
            latest = cells[key][-1] if cells[key] else Cell()
            out[measure][key] = judge(
                projection,
                grid,
                months,
                [value(c) for c in cells[key]],
                targets,
                orgs=latest.orgs,
                adopting=count(latest),
                model=(SUM if fitted else None) if key == TOTAL else None,
                note="" if key != TOTAL or result.sectors else "the register is empty",
            )
    return out


def build_report(
    conn: sa.Connection,
    config: AdoptionConfig,
    *,
    by: str = "sector",
    as_of: date | None = None,
    fit_on: str = "ledger",
    resamples: int = 200,
    backtest_origins: int = BACKTEST_ORIGINS,
) -> Report:
    """Measure every group of the cut month by month from the rollups, forecast penetration and agent use
    coherently (the total is the sum of the parts), judge each against the targets, and attach each forecast's
    back-tested error over the last ``backtest_origins`` months (0: none; it costs more than the rest)."""
    if fit_on not in FIT_SOURCES:
        raise ValueError(f"fit_on must be one of {', '.join(FIT_SOURCES)}, not {fit_on!r}")
    if not 0 <= backtest_origins <= MAX_ORIGINS:
        raise ValueError(f"back-test origins must be 0 to {MAX_ORIGINS}, not {backtest_origins}")
    definition = Definition.from_config(config)
    refresh_snapshots(conn, definition, as_of)
    series: Series = penetration_series(conn, definition, by=by, as_of=as_of, detail="all")
    observations = load_observations(conn)
    by_key: dict[str, list[dict]] = {}
    for o in observations:
        by_key.setdefault(o["sector"], []).append(o)
    months = series.months
    # no complete month since the first usage (it all began this month): the forecasts start at last month
    last = months[-1] if months else last_complete_month_end(as_of or datetime.now(UTC).date())
    grid = Grid.after(last, config.targets)
    forecasts = _forecasts(series, grid, config.targets, fit_on, by_key, resamples)
    backtests = backtest(series, origins=backtest_origins) if backtest_origins else {}
    for measure, tested in backtests.items():
        for key, accuracy in [*tested.groups.items(), (TOTAL, tested.total)]:
            forecasts[measure][key].backtest = accuracy.as_dict()
            forecasts[measure][key].backtest["summary"] = accuracy.summary()

    def group(key: str, cells: list[Cell]) -> GroupReport:
        obs = by_key.get(key, []) if (by == "sector" or key == TOTAL) else []
        return GroupReport(key, cells, forecasts["penetration"][key], obs, forecasts["agents"][key])

    groups = [group(key, cells) for key, cells in series.groups.items()]
    return Report(
        definition,
        config.targets,
        by,
        months,
        groups,
        group(TOTAL, series.total),
        fit_on,
        unregistered_tenants(conn),
        backtests,
    )


def build_backtest(
    conn: sa.Connection,
    config: AdoptionConfig,
    *,
    by: str = "sector",
    as_of: date | None = None,
    origins: int = BACKTEST_ORIGINS,
    measures: tuple[str, ...] = tuple(MEASURES),
    resamples: int = 100,
) -> dict[str, Backtest]:
    """Back-test the report's forecasts of each measure over the last ``origins`` months (rolling origin)."""
    if not 1 <= origins <= MAX_ORIGINS:
        raise ValueError(f"back-test origins must be 1 to {MAX_ORIGINS}, not {origins}")
    definition = Definition.from_config(config)
    refresh_snapshots(conn, definition, as_of)
    series = penetration_series(conn, definition, by=by, as_of=as_of, detail="all")
    return backtest(series, measures=measures, origins=origins, resamples=resamples)


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
        for prefix, fc in (("", g.forecast), ("agents_", g.agents)):
            for t in fc.targets if fc else []:
                year = t.date.isoformat()[:4]
                row[f"{prefix}projected_{year}"] = t.projected
                row[f"{prefix}low_{year}"] = t.low
                row[f"{prefix}high_{year}"] = t.high
                row[f"{prefix}status_{year}"] = t.status
                if not prefix:
                    row[f"reached_{int(t.level * 100)}pct"] = t.reached or "never"
                    row[f"extra_orgs_per_month_{year}"] = t.extra_per_month
            bt = fc.backtest if fc else None
            for key in ("mae_pp_6m", "coverage_6m", "mae_pp_12m", "coverage_12m"):
                row[f"{prefix}backtest_{key}"] = bt.get(key) if bt else None
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


def _band(t) -> str:
    return "-" if t.projected is None else f"{_pct(t.projected)} [{_pct(t.low)}-{_pct(t.high)}]"


def _trust(fc: Forecast | None) -> str:
    bt = fc.backtest if fc else None
    if not bt or bt.get("mae_pp_12m") is None and bt.get("mae_pp_6m") is None:
        return "-"
    h = 12 if bt.get("mae_pp_12m") is not None else 6
    return f"±{bt[f'mae_pp_{h}m']:.1f} pp, {100 * bt[f'coverage_{h}m']:.0f}% in band ({h} mo)"


def to_rich_table(report: Report):
    """A rich ``Table`` with the definition as its caption."""
    from rich.table import Table

    month = report.as_of.isoformat()[:7] if report.as_of else "no data"
    table = Table(title=f"AI adoption by {report.by}, {month}", caption=definition_caption(report))
    table.add_column(report.by)
    for name in ("orgs", "adopting", "penetration", "empl.-weighted", "tokens/empl.", "model"):
        table.add_column(name, justify="right")
    for d, level in report.targets:
        year = d[:4]
        table.add_column(f"{year} forecast [80%]", justify="right")
        table.add_column(f"{year} status")
        table.add_column(f"{int(level * 100)}% reached", justify="right")
        table.add_column(f"+orgs/mo for {year}", justify="right")
    backtested = bool(report.backtests)
    if backtested:
        table.add_column("back-test error", justify="right")
    table.add_column("agent use", justify="right")
    for d, _ in report.targets:
        table.add_column(f"agents {d[:4]} [80%]", justify="right")
        table.add_column(f"agents {d[:4]}")
    if backtested:
        table.add_column("agents back-test", justify="right")
    for g in [*report.groups, report.total]:
        c = g.latest
        cells = [
            g.key,
            f"{c.orgs:,}",
            f"{c.adopting:,}",
            _pct(c.penetration),
            _pct(c.employment_penetration),
            "-" if c.intensity is None else f"{c.intensity:,.0f}",
            g.forecast.model or "-",
        ]
        for t in g.forecast.targets:
            extra = "-" if t.extra_per_month is None else f"{t.extra_per_month:,}"
            cells += [_band(t), t.status, t.reached or "never", extra]
        if backtested:
            cells.append(_trust(g.forecast))
        cells.append(_pct(c.agent_penetration))
        for t in g.agents.targets if g.agents else []:
            cells += [_band(t), t.status]
        if backtested:
            cells.append(_trust(g.agents))
        table.add_row(*cells, end_section=bool(report.groups) and g is report.groups[-1])
    return table


def definition_caption(report: Report) -> str:
    targets = ", ".join(f">= {int(level * 100)}% by {d}" for d, level in report.targets)
    origins = {len(b.origins) for b in report.backtests.values()}
    trust = (
        f" Back-test: mean absolute error of the forecasts made 6 and 12 months earlier, refitted as of each of "
        f"the last {max(origins)} months, and the share of those that held the truth in their 80% band."
        if origins
        else ""
    )
    return (
        f"{report.definition.text} Targets: {targets}. Forecast: Bass (or logistic when its hold-out error is "
        f"10% lower) least-squares fit on the {report.fit_on} series of each part, starting at the last observed "
        f"month; {RECONCILIATION}; 80% band from sample paths of each part's curve. Agent use: {report.definition.as_dict()['agent_penetration']}, "
        f"forecast the same way. Status: {STATUS_RULE}{trust} "
        f"'+orgs/mo': organizations per month that must start beyond the forecast trend to meet the target on time."
        + (
            f" {report.unregistered_tenants} tenant org(s) are not in the register and are not counted."
            if report.unregistered_tenants
            else ""
        )
    )
