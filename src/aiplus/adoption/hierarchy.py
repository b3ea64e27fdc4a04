"""Coherent forecasts: the total is the register-weighted sum of its parts at every month and on every sample
path, so the national line can never contradict the sectors under it.

The sectors are forecast one by one (``diffusion``), and the total is their sum (bottom-up): its point forecast
is the weighted sum of theirs, and its 80% band the percentiles of the weighted sums of their sample paths, so
it carries their uncertainty. Another cut of the same register (regions, size classes) is forecast one by one
too and then reconciled to that total top-down by forecast proportions (Athanasopoulos, Ahmed & Hyndman 2009),
month by month and path by path: the total's change is shared among the parts in proportion to each part's own
forecast change. Every path of every part still sums to the same total path.

Nixtla's ``hierarchicalforecast`` implements these methods (and MinT) but works on pandas frames and brings
pandas, scikit-learn, narwhals, utilsforecast and a QP solver with it; the sums here are a few lines of numpy
(docs/adoption.md, "Coherent forecasts").
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from aiplus.adoption.diffusion import Projection, fit_series, flat_projection, project, years
from aiplus.adoption.outlook import Grid

TOTAL = "all"


@dataclass(slots=True)
class Part:
    """One series to forecast: what its curve is fitted on, its last observed share, and its organizations."""

    dates: Sequence[date]
    shares: Sequence[float]
    last: float | None  # where the forecast starts; None: where the fitted curve is at the grid's start
    orgs: int


def seed_of(*names: str) -> int:
    return zlib.crc32("/".join(names).encode())


def project_part(part: Part, grid: Grid, *, resamples: int, seed: int) -> Projection:
    """Fit one part and project it on ``grid`` from its last share (flat when no curve can be fitted)."""
    rows = max(1, resamples)
    fitted, note = fit_series(part.dates, part.shares)
    if fitted is None:
        last = part.last if part.last is not None else (float(part.shares[-1]) if len(part.shares) else 0.0)
        return flat_projection(last, len(grid.months), grid.horizon, rows, note)
    t_last = years(grid.last, fitted.origin)
    last = part.last if part.last is not None else float(np.clip(fitted.at(np.array(t_last)), 0.0, 1.0))
    projection = project(
        fitted, last, grid.times(fitted.origin), grid.horizon, resamples=resamples, seed=seed, t_last=t_last
    )
    if projection.paths.shape[0] != rows:  # resamples == 0: one path, the point; repeat to a common shape
        projection.paths = np.repeat(projection.paths, rows, axis=0)
    return projection


def weights(parts: dict[str, Part]) -> dict[str, float]:
    total = sum(p.orgs for p in parts.values())
    return {k: (p.orgs / total if total else 0.0) for k, p in parts.items()}


def bottom_up(projections: dict[str, Projection], w: dict[str, float]) -> Projection:
    """The weighted sum of the parts: point, start and every sample path."""
    keys = list(projections)
    return Projection(
        last=float(sum(w[k] * projections[k].last for k in keys)),
        point=sum(w[k] * projections[k].point for k in keys),
        paths=sum(w[k] * projections[k].paths for k in keys),
        note="sum of the parts' forecasts, weighted by their register organizations",
    )


def reconcile_to(projections: dict[str, Projection], w: dict[str, float], total: Projection) -> None:
    """Share each month's growth of ``total`` among the parts in proportion to their own forecast growth that
    month, in place (top-down by forecast proportions, path by path): afterwards the weighted sum of the parts
    equals the total at every month and on every path, each part rises when the total does, and none passes
    100%."""
    keys = list(projections)
    weight = np.array([w[k] for k in keys])
    last = np.array([projections[k].last for k in keys])
    for attr in ("point", "paths"):
        forecast = np.stack([getattr(projections[k], attr) for k in keys])
        extra = (slice(None),) + (None,) * (forecast.ndim - 2)
        reconciled = _share_growth(forecast, getattr(total, attr), weight[extra], last[extra], total.last)
        for i, k in enumerate(keys):
            setattr(projections[k], attr, reconciled[i])


def _share_growth(
    forecast: np.ndarray, total: np.ndarray, w: np.ndarray, last: np.ndarray, start: float
) -> np.ndarray:
    """Parts on the first axis, months on the last: month by month, the total's change is split in proportion
    to each part's own forecast change (or, when none changes, to its room left), a part that would pass 100%
    is held there and the rest shared among the others."""
    out = np.empty_like(forecast)
    current = np.broadcast_to(last, forecast.shape[:-1]).astype(float)
    before_own = current.copy()
    before_total = start
    for t in range(forecast.shape[-1]):
        own = forecast[..., t]
        growth = np.maximum(own - before_own, 0.0)
        growth = np.where(np.sum(w * growth, axis=0) > 1e-12, growth, 1.0 - current)
        gain = total[..., t] - before_total
        full = np.zeros(current.shape, dtype=bool)
        for _ in range(len(forecast)):
            held = np.sum(np.where(full, w * (1.0 - current), 0.0), axis=0)
            spread = np.sum(np.where(full, 0.0, w * growth), axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                k = np.where(spread > 1e-12, (gain - held) / spread, 0.0)
            step = np.where(full, 1.0 - current, k * growth)
            over = (current + step > 1.0 + 1e-12) & ~full
            if not over.any():
                break
            full |= over
        current = current + step
        out[..., t] = current
        before_own, before_total = own, total[..., t]
    return out


@dataclass(slots=True)
class Coherent:
    """Projections of the cut's parts, of the total (the sectors' sum) and of the sectors themselves."""

    parts: dict[str, Projection]
    total: Projection
    sectors: dict[str, Projection]


def _cap(projections: dict[str, Projection], below: dict[str, Projection] | None) -> None:
    """Hold each projection at or under ``below``'s (agent use is a part of use: it cannot forecast higher)."""
    for k, projection in projections.items():
        if below and k in below:
            projection.point = np.minimum(projection.point, below[k].point)
            projection.paths = np.minimum(projection.paths, below[k].paths)


def coherent(
    grid: Grid,
    sectors: dict[str, Part],
    cut: dict[str, Part] | None = None,
    *,
    resamples: int = 200,
    seed: str = "",
    below: Coherent | None = None,
) -> Coherent:
    """Projections of the cut's parts (the sectors when ``cut`` is None) and of the total, coherent; with
    ``below``, no part forecasts above the same part there.

    The total is the bottom-up sum of the sectors whatever the cut, so it is the same line in every report.
    """
    projected = {
        k: project_part(p, grid, resamples=resamples, seed=seed_of(seed, "sector", k))
        for k, p in sectors.items()
    }
    _cap(projected, below.sectors if below else None)
    if not projected:  # an empty register: nothing to add up
        empty = flat_projection(
            0.0, len(grid.months), grid.horizon, max(1, resamples), "the register is empty"
        )
        return Coherent({}, empty, {})
    total = bottom_up(projected, weights(sectors))
    if cut is None:
        return Coherent(projected, total, projected)
    parts = {
        k: project_part(p, grid, resamples=resamples, seed=seed_of(seed, "cut", k)) for k, p in cut.items()
    }
    _cap(parts, below.parts if below else None)
    reconcile_to(parts, weights(cut), total)
    return Coherent(parts, total, projected)
