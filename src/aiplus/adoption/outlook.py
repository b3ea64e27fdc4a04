"""A forecast judged against dated targets: the point and 80% band from sample paths, the month a level is
reached, the status, and how many more organizations a month it would take.

The paths come from ``diffusion.project`` for a single series, or from ``hierarchy`` for parts and their sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from aiplus.adoption.diffusion import Projection, fit_series, flat_projection, project, years
from aiplus.adoption.penetration import month_end, month_ends, next_month_end

BAND = (10.0, 90.0)  # percentiles of the 80% band
HORIZON_YEAR = 2060  # the month a target is reached is searched up to here
STATUS_RULE = (
    "on track: the whole 80% band at the target date is at or above the target; "
    "off track: the whole band is below it; at risk: the target lies inside the band. "
    "A target date already past is 'met' or 'missed' on the observed figure."
)


@dataclass(slots=True)
class TargetOutlook:
    date: date
    level: float
    projected: float | None = None
    low: float | None = None
    high: float | None = None
    reached: str | None = None  # "YYYY-MM" the series or its point forecast first reaches the level
    status: str = "insufficient data"
    months_left: int = 0
    needed_per_month: int | None = None  # net new adopting orgs per month from now to hit the level on time
    trend_per_month: int | None = None  # what the forecast trend gives per month
    extra_per_month: int | None = None  # more per month than the trend: the shortfall to close

    def as_dict(self) -> dict:
        return {
            "date": self.date.isoformat(),
            "level": self.level,
            "projected": self.projected,
            "low": self.low,
            "high": self.high,
            "reached": self.reached,
            "status": self.status,
            "months_left": self.months_left,
            "needed_per_month": self.needed_per_month,
            "trend_per_month": self.trend_per_month,
            "extra_per_month": self.extra_per_month,
        }


@dataclass(slots=True)
class Forecast:
    model: str | None  # "bass", "logistic", "sum of parts" (a total), None (no forecast)
    params: dict[str, float] = field(default_factory=dict)
    holdout_rmse: dict[str, float] = field(default_factory=dict)
    origin: date | None = None
    targets: list[TargetOutlook] = field(default_factory=list)
    band: list[tuple[date, float, float, float]] = field(default_factory=list)  # (month end, point, lo, hi)
    note: str = ""
    backtest: dict | None = None  # this series' back-tested error (``backtest.Accuracy.as_dict``)

    def as_dict(self, *, band: bool = True) -> dict:
        out = {
            "model": self.model,
            "params": self.params,
            "holdout_rmse": self.holdout_rmse,
            "origin": self.origin.isoformat() if self.origin else None,
            "targets": [t.as_dict() for t in self.targets],
            "note": self.note,
            "backtest": self.backtest,
        }
        if band:
            out["band"] = [
                {"month": m.isoformat()[:7], "point": p, "low": lo, "high": hi} for m, p, lo, hi in self.band
            ]
        return out


@dataclass(frozen=True, slots=True)
class Grid:
    """The future months every series of a report is projected on: after ``last`` to the end of
    ``HORIZON_YEAR``; the band (and the sample paths) cover the first ``horizon`` of them."""

    last: date
    months: list[date]
    horizon: int

    @classmethod
    def after(cls, last: date, targets: Sequence[tuple[str, float]], horizon_months: int = 0) -> Grid:
        months = month_ends(next_month_end(last), date(HORIZON_YEAR, 12, 31))
        end = max([month_end(date.fromisoformat(d)) for d, _ in targets] + [last])
        horizon = max(horizon_months, sum(1 for m in months if m <= end))
        return cls(last, months, min(len(months), horizon))

    def times(self, origin: date) -> np.ndarray:
        return np.array([years(m, origin) for m in self.months])


def band_of(projection: Projection) -> tuple[np.ndarray, np.ndarray]:
    """The 80% band over the horizon: percentiles of the sample paths, widened to hold the point forecast."""
    low, high = np.percentile(projection.paths, BAND, axis=0)
    point = projection.point[: projection.paths.shape[1]]
    return np.minimum(low, point), np.maximum(high, point)


def judge(
    projection: Projection,
    grid: Grid,
    dates: Sequence[date],
    observed: Sequence[float],
    targets: Sequence[tuple[str, float]],
    *,
    orgs: int = 0,
    adopting: int = 0,
    model: str | None = None,
    note: str = "",
) -> Forecast:
    """The forecast of one series: band from its last observed month, and each target's outlook."""
    low, high = band_of(projection)
    fitted = projection.fit
    result = Forecast(
        model if model is not None else (fitted.model if fitted else None),
        params=fitted.named_params if fitted else {},
        holdout_rmse=fitted.holdout_rmse if fitted else {},
        origin=fitted.origin if fitted else None,
        band=[(grid.last, projection.last, projection.last, projection.last)]
        + [
            (m, float(p), float(lo), float(hi))
            for m, p, lo, hi in zip(grid.months, projection.point, low, high, strict=False)
        ],
        note=note or projection.note,
    )
    index = {m: i for i, m in enumerate(grid.months)}
    for d, level in targets:
        o = TargetOutlook(date.fromisoformat(d), float(level))
        result.targets.append(o)
        o.reached = _reached(grid, projection.point, dates, observed, o.level)
        o.months_left = _months_between(grid.last, o.date)
        if o.date <= grid.last:
            before = [v for when, v in zip(dates, observed, strict=True) if when <= o.date]
            if before:
                o.projected = o.low = o.high = float(before[-1])
                o.status = "met" if before[-1] >= o.level else "missed"
            continue
        if result.model is None:
            continue
        i = index[month_end(o.date)]
        o.projected = float(projection.point[i])
        o.low, o.high = (float(low[i]), float(high[i])) if i < len(low) else (o.projected, o.projected)
        o.status = "on track" if o.low >= o.level else "off track" if o.high < o.level else "at risk"
        if orgs:
            months = max(1, o.months_left)
            o.needed_per_month = max(0, math.ceil((math.ceil(o.level * orgs) - adopting) / months))
            o.trend_per_month = round((o.projected * orgs - adopting) / months)
            o.extra_per_month = max(0, o.needed_per_month - max(0, o.trend_per_month))
    return result


def _months_between(start: date, end: date) -> int:
    return max(0, (end.year - start.year) * 12 + end.month - start.month)


def _reached(grid: Grid, point: np.ndarray, dates, observed, level: float) -> str | None:
    """The first month the observed series, then the point forecast, is at or above ``level``."""
    for d, v in sorted(zip(dates, observed, strict=True)):
        if v >= level:
            return d.isoformat()[:7]
    hit = np.nonzero(point >= level)[0]
    return grid.months[hit[0]].isoformat()[:7] if len(hit) else None


def forecast(
    dates: Sequence[date],
    shares: Sequence[float],
    targets: Sequence[tuple[str, float]],
    *,
    orgs: int = 0,
    adopting: int = 0,
    resamples: int = 200,
    seed: int = 0,
) -> Forecast:
    """One series on its own: fit, project from its last observation with sample paths, judge the targets.

    ``orgs`` (the denominator) and ``adopting`` (now) turn shares into organizations per month.
    """
    order = sorted(range(len(dates)), key=lambda i: dates[i])
    dates = [dates[i] for i in order]
    shares = [float(min(1.0, max(0.0, shares[i]))) for i in order]
    if not dates:
        return Forecast(None, targets=[TargetOutlook(date.fromisoformat(d), float(v)) for d, v in targets])
    grid = Grid.after(month_end(dates[-1]), targets)
    fitted, note = fit_series(dates, shares)
    if fitted is None:
        flat = flat_projection(shares[-1], len(grid.months), grid.horizon, 1, note)
        return judge(flat, grid, dates, shares, targets, orgs=orgs, adopting=adopting, model=None, note=note)
    projection = project(
        fitted, shares[-1], grid.times(fitted.origin), grid.horizon, resamples=resamples, seed=seed
    )
    return judge(projection, grid, dates, shares, targets, orgs=orgs, adopting=adopting)
