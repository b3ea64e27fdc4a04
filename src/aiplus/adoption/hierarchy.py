"""Coherent forecasts: the total is the register-weighted sum of its parts at every month and on every sample
path, so the national line can never contradict the sectors under it.

The sectors are forecast one by one (``diffusion``), and the total is their sum (bottom-up): its point forecast
is the weighted sum of theirs, and its 80% band the percentiles of the weighted sums of their sample paths, so
it carries their uncertainty. Another cut of the same register (regions, size classes) is forecast one by one
too and then reconciled to that total by weighted least squares: each part moves by a share of the gap
proportional to its headroom (organizations not yet adopting), which is the least-squares correction when a
part's error variance grows with its headroom and shrinks with its size. Every path of every part still sums
to the same total path. Nixtla's ``hierarchicalforecast`` implements these methods (BottomUp, MinT) but works
on pandas frames and brings pandas, scikit-learn, narwhals, utilsforecast and a QP solver with it; the sum
here is one matrix product (docs/adoption.md, "Coherent forecasts").
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
    last: (
        float | None
    )  # the share the forecast starts from; None: where the fitted curve is at the grid's start
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
    """Move each part by a share of the gap to ``total`` proportional to its weighted headroom, in place:
    afterwards the weighted sum of the parts equals the total at every month and on every path."""
    keys = list(projections)
    headroom = {k: max(0.0, 1.0 - projections[k].last) for k in keys}
    room = sum(w[k] * headroom[k] for k in keys)
    share = {k: (headroom[k] / room if room > 0 else 1.0) for k in keys}
    gap_point = total.point - sum(w[k] * projections[k].point for k in keys)
    gap_paths = total.paths - sum(w[k] * projections[k].paths for k in keys)
    for k in keys:
        projections[k].point = projections[k].point + share[k] * gap_point
        projections[k].paths = projections[k].paths + share[k] * gap_paths


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
    total = bottom_up(projected, weights(sectors))
    if cut is None:
        return Coherent(projected, total, projected)
    parts = {
        k: project_part(p, grid, resamples=resamples, seed=seed_of(seed, "cut", k)) for k, p in cut.items()
    }
    _cap(parts, below.parts if below else None)
    reconcile_to(parts, weights(cut), total)
    return Coherent(parts, total, projected)
