"""How far to trust a forecast: refit as of each of the last N months (rolling origin) and compare the 6- and
12-month-ahead forecasts with what was then observed.

The refits run the report's own method (``hierarchy.coherent``: the same curves, model choice, sample paths and
reconciliation) on the ledger series cut at each origin, so the figures are the method's record on this region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from aiplus.adoption.hierarchy import TOTAL, Coherent, Part, coherent
from aiplus.adoption.outlook import Grid, band_of
from aiplus.adoption.penetration import Cell, Series, month_ends, next_month_end

HORIZONS = (6, 12)  # months ahead
MEASURES: dict[str, Callable[[Cell], float]] = {
    "penetration": lambda c: c.penetration,
    "agents": lambda c: c.agent_penetration or 0.0,
}


@dataclass(slots=True)
class Accuracy:
    """Forecast errors of one series (or a pool of series) at each horizon: |forecast - truth| and whether the
    truth fell inside the 80% band."""

    errors: dict[int, list[float]] = field(default_factory=lambda: {h: [] for h in HORIZONS})
    hits: dict[int, list[bool]] = field(default_factory=lambda: {h: [] for h in HORIZONS})

    def add(self, h: int, point: float, low: float, high: float, truth: float) -> None:
        self.errors[h].append(abs(point - truth))
        self.hits[h].append(bool(low - 1e-12 <= truth <= high + 1e-12))

    def extend(self, other: Accuracy) -> None:
        for h in HORIZONS:
            self.errors[h] += other.errors[h]
            self.hits[h] += other.hits[h]

    def mae_pp(self, h: int) -> float | None:
        return 100 * float(np.mean(self.errors[h])) if self.errors[h] else None

    def coverage(self, h: int) -> float | None:
        return float(np.mean(self.hits[h])) if self.hits[h] else None

    def as_dict(self) -> dict:
        out: dict = {}
        for h in HORIZONS:
            out[f"mae_pp_{h}m"] = self.mae_pp(h)
            out[f"coverage_{h}m"] = self.coverage(h)
            out[f"n_{h}m"] = len(self.errors[h])
        return out

    def summary(self) -> str:
        """'6 mo: 1.2 pp, 9/12 in band; 12 mo: ...' for a table cell or a chart panel."""
        parts = []
        for h in HORIZONS:
            if self.errors[h]:
                hit, n = sum(self.hits[h]), len(self.hits[h])
                parts.append(f"{h} mo: ±{self.mae_pp(h):.1f} pp, {hit}/{n} in band")
        return "; ".join(parts) or "too short to back-test"


@dataclass(slots=True)
class Backtest:
    by: str
    measure: str
    origins: list[date]
    groups: dict[str, Accuracy]
    total: Accuracy
    parts: Accuracy  # every part of the cut pooled: the "sector level" (or region, size) figure

    def as_dict(self) -> dict:
        return {
            "by": self.by,
            "measure": self.measure,
            "origins": [o.isoformat()[:7] for o in self.origins],
            "horizons_months": list(HORIZONS),
            "levels": {TOTAL: self.total.as_dict(), self.by: self.parts.as_dict()},
            "groups": {k: a.as_dict() for k, a in self.groups.items()},
        }


def origin_indices(months: int, origins: int) -> list[int]:
    """The last ``origins`` month indices from which at least the shortest horizon can be checked."""
    last_checkable = months - 1 - min(HORIZONS)
    return [k for k in range(last_checkable - origins + 1, last_checkable + 1) if k >= 0]


def _cut_at(groups: dict[str, list[Cell]], months: list[date], k: int, value) -> dict[str, Part]:
    """Each group's series as it stood at month ``k``."""
    return {
        name: Part(months[: k + 1], [value(c) for c in cells[: k + 1]], value(cells[k]), cells[k].orgs)
        for name, cells in groups.items()
    }


def _coherent_at(
    series: Series,
    measure: str,
    grid: Grid,
    k: int,
    by_cut: bool,
    resamples: int,
    below: Coherent | None = None,
) -> Coherent:
    value, months = MEASURES[measure], series.months
    return coherent(
        grid,
        _cut_at(series.cuts["sector"], months, k, value),
        _cut_at(series.groups, months, k, value) if by_cut else None,
        resamples=resamples,
        seed=measure,
        below=below,
    )


def backtest(
    series: Series, *, measures: tuple[str, ...] = tuple(MEASURES), origins: int = 12, resamples: int = 100
) -> dict[str, Backtest]:
    """Refit the coherent forecasts of ``series`` as of each of its last ``origins`` checkable months, for each
    measure (agent use capped by use, as in the report)."""
    months = series.months
    by_cut = series.by != "sector"
    picked = origin_indices(len(months), origins)
    results = {
        m: Backtest(
            series.by,
            m,
            [months[k] for k in picked],
            {g: Accuracy() for g in series.groups},
            Accuracy(),
            Accuracy(),
        )
        for m in measures
    }
    for k in picked:
        ahead = month_ends(next_month_end(months[k]), months[-1])[: max(HORIZONS)]
        grid = Grid(months[k], ahead, len(ahead))
        done: dict[str, Coherent] = {}
        for measure in MEASURES:  # penetration first: agent use is capped by it
            if measure == "agents" and "agents" not in measures:
                continue
            done[measure] = _coherent_at(series, measure, grid, k, by_cut, resamples, done.get("penetration"))
        for measure in measures:
            _score(results[measure], series, done[measure], k)
    for result in results.values():
        for accuracy in result.groups.values():
            result.parts.extend(accuracy)
    return results


def _score(result: Backtest, series: Series, forecast: Coherent, k: int) -> None:
    """Add the forecasts made at month ``k`` that can be checked against a later month."""
    value = MEASURES[result.measure]
    truths = {name: [value(c) for c in cells] for name, cells in series.groups.items()}
    truths[TOTAL] = [value(c) for c in series.total]
    for name, projection in [*forecast.parts.items(), (TOTAL, forecast.total)]:
        low, high = band_of(projection)
        into = result.total if name == TOTAL else result.groups[name]
        for h in HORIZONS:
            if k + h < len(series.months):
                point = float(projection.point[h - 1])
                into.add(h, point, float(low[h - 1]), float(high[h - 1]), truths[name][k + h])


def backtest_table(results: dict[str, Backtest]):
    """A rich ``Table``: each measure's error and band coverage per group, its cut pooled, and the total."""
    from rich.table import Table

    first = next(iter(results.values()), None)
    origins = first.origins if first else []
    span = f"{origins[0].isoformat()[:7]}..{origins[-1].isoformat()[:7]}" if origins else "none"
    by = first.by if first else "sector"
    table = Table(
        title=f"Back-test by {by}: forecasts refitted as of each of {len(origins)} months ({span})",
        caption=(
            "MAE: mean absolute error of the forecast made h months earlier, in percentage points; in band: how "
            "often the truth fell inside that forecast's 80% band (about 80% if the band is honest). "
            f"'{by} (pooled)': every {by} together."
        ),
    )
    table.add_column("measure")
    table.add_column(by)
    for h in HORIZONS:
        table.add_column(f"{h}-mo MAE (pp)", justify="right")
        table.add_column(f"{h}-mo in band", justify="right")
    for measure, result in results.items():
        rows = [*result.groups.items(), (f"{by} (pooled)", result.parts), (TOTAL, result.total)]
        for i, (name, accuracy) in enumerate(rows):
            cells = [measure if i == 0 else "", name]
            for h in HORIZONS:
                mae, hits, n = accuracy.mae_pp(h), sum(accuracy.hits[h]), len(accuracy.hits[h])
                cells += ["-", "-"] if mae is None else [f"{mae:.1f}", f"{hits}/{n} ({hits / n:.0%})"]
            table.add_row(*cells, end_section=i >= len(rows) - 3)
    return table
