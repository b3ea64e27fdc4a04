"""Diffusion forecasts: Bass and logistic curves fitted by least squares, chosen by hold-out error,
with an 80% band from a residual bootstrap, checked against dated penetration targets.

Time is measured in years from the start of the diffusion (the first observed month's first day), so Bass
``p`` and ``q`` are per year and comparable with the literature (p ~ 0.03, q ~ 0.38).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from aiplus.adoption.penetration import month_end, month_ends, next_month_end

BAND = (10.0, 90.0)  # percentiles of the 80% band
HORIZON_YEAR = 2060  # the month a target is reached is searched up to here
STATUS_RULE = (
    "on track: the whole 80% band at the target date is at or above the target; "
    "off track: the whole band is below it; at risk: the target lies inside the band. "
    "A target date already past is 'met' or 'missed' on the observed figure."
)
MIN_POINTS = 5
PREFER_BASS = 0.9  # the logistic is chosen only when its hold-out RMSE is at least 10% below Bass's


def bass(t: np.ndarray, p: float, q: float, m: float) -> np.ndarray:
    """Cumulative adopters' share under Bass: m (1 - e^{-(p+q)t}) / (1 + (q/p) e^{-(p+q)t})."""
    e = np.exp(-(p + q) * np.asarray(t, dtype=float))
    return m * (1.0 - e) / (1.0 + (q / p) * e)


def bass_jacobian(t: np.ndarray, p, q, m) -> np.ndarray:
    """d bass / d (p, q, m), stacked on the last axis; p, q, m may be arrays of shape (B, 1) for a batch."""
    e = np.exp(-(p + q) * t)
    a = q / p
    den = (1.0 + a * e) ** 2
    f = (1.0 - e) / (1.0 + a * e)
    d_e = -(1.0 + a) / den * (-t * e)
    d_a = -(1.0 - e) * e / den
    return np.stack([m * (d_e + d_a * (-q / p**2)), m * (d_e + d_a / p), f + 0 * p], axis=-1)


def logistic(t: np.ndarray, k: float, r: float, t0: float) -> np.ndarray:
    """K / (1 + e^{-r (t - t0)})."""
    return k / (1.0 + np.exp(-r * (np.asarray(t, dtype=float) - t0)))


def logistic_jacobian(t: np.ndarray, k, r, t0) -> np.ndarray:
    e = np.exp(np.clip(-r * (t - t0), -700, 700))
    den = (1.0 + e) ** 2
    return np.stack([1.0 / (1.0 + e) + 0 * k, k * e * (t - t0) / den, -k * e * r / den], axis=-1)


MODELS = {
    "bass": (bass, ("p", "q", "m"), ([1e-5, 0.0, 1e-3], [1.0, 10.0, 1.0])),
    "logistic": (logistic, ("k", "r", "t0"), ([1e-3, 1e-3, -30.0], [1.0, 20.0, 60.0])),
}
JACOBIANS = {"bass": bass_jacobian, "logistic": logistic_jacobian}


def _starts(model: str, t: np.ndarray, y: np.ndarray) -> list[list[float]]:
    top = float(min(1.0, max(0.05, y.max() * 1.3)))
    if model == "bass":
        return [[0.01, 0.5, top], [0.003, 2.0, min(1.0, top * 1.5)]]
    mid = float(t[np.argmin(np.abs(y - y.max() / 2))])
    return [[top, 1.5, mid], [min(1.0, top * 1.5), 1.0, mid + 1.0]]


def _logit(v: float) -> float:
    v = min(max(v, 1e-3), 1 - 1e-3)  # a start on the bound would freeze the ceiling there
    return math.log(v / (1 - v))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Unbounded coordinates for the fast unconstrained solver: log for rates, logit for ceilings (shares <= 1).
UNBOUNDED = {
    "bass": (
        lambda t, a, b, c: bass(t, np.exp(a), np.exp(b), _sigmoid(c)),
        lambda p, q, m: [math.log(p), math.log(max(q, 1e-6)), _logit(m)],
        lambda a, b, c: [np.exp(a), np.exp(b), _sigmoid(c)],
    ),
    "logistic": (
        lambda t, a, b, t0: logistic(t, _sigmoid(a), np.exp(b), t0),
        lambda k, r, t0: [_logit(k), math.log(r), t0],
        lambda a, b, t0: [_sigmoid(a), np.exp(b), t0],
    ),
}


def _fit_once(model: str, t: np.ndarray, y: np.ndarray, start: list[float]) -> np.ndarray | None:
    """One ``curve_fit`` from ``start``, Levenberg-Marquardt in unbounded coordinates; None if it fails."""
    wrapped, forward, back = UNBOUNDED[model]
    lower, upper = MODELS[model][2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
        try:
            u, _ = curve_fit(wrapped, t, y, p0=forward(*start), method="lm", maxfev=800)
        except (RuntimeError, ValueError, OverflowError):
            return None
    with np.errstate(over="ignore"):
        params = np.array(back(*u), dtype=float)
    if not np.all(np.isfinite(params)):
        return None
    return np.clip(params, lower, upper)


def fit(
    model: str, t: np.ndarray, y: np.ndarray, starts: Sequence[Sequence[float]] = ()
) -> np.ndarray | None:
    """Least-squares parameters of ``model`` (scipy ``curve_fit``), the best over a few starting points."""
    fn, _, bounds = MODELS[model]
    best, best_sse = None, math.inf
    for start in [*starts, *_starts(model, t, y)]:
        start = [float(v) for v in np.clip(start, bounds[0], bounds[1])]
        params = _fit_once(model, t, y, start)
        if params is None:
            continue
        sse = float(np.sum((fn(t, *params) - y) ** 2))
        if sse < best_sse:
            best, best_sse = params, sse
    return best


def refit_batch(
    model: str, t: np.ndarray, ys: np.ndarray, start: np.ndarray, iterations: int = 60
) -> np.ndarray:
    """Least-squares parameters for many series at once (rows of ``ys``), from one nearby start.

    Bounded Levenberg-Marquardt in numpy, used for bootstrap replicates: each replicate lies close to the
    curve_fit solution it starts from, and fitting them as one batch costs milliseconds instead of seconds.
    """
    fn, _, (lower, upper) = MODELS[model]
    jac = JACOBIANS[model]
    lower, upper = np.asarray(lower), np.asarray(upper)
    params = np.tile(np.asarray(start, dtype=float), (len(ys), 1))
    damping = np.full(len(ys), 1e-3)

    t = np.broadcast_to(t, ys.shape)  # one time axis for all, or one per replicate (pairs bootstrap)
    with np.errstate(all="ignore"):
        current = np.sum((fn(t, *(params[:, [i]] for i in range(3))) - ys) ** 2, axis=1)
    current = np.where(np.isfinite(current), current, np.inf)
    eye = np.eye(3)
    active = np.arange(len(ys))
    for _ in range(iterations):
        if not len(active):
            break
        ps, y_act, t_act, lam = params[active], ys[active], t[active], damping[active]
        cols = [ps[:, [i]] for i in range(3)]
        with np.errstate(all="ignore"):
            residual = fn(t_act, *cols) - y_act
            j = jac(t_act, *cols)
        jt = j.transpose(0, 2, 1)
        jtj = jt @ j
        jtr = (jt @ residual[..., None])[..., 0]
        scaled = jtj + lam[:, None, None] * (jtj * eye + 1e-12 * eye)
        try:
            step = np.linalg.solve(scaled, -jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        trial = np.clip(ps + np.nan_to_num(step), lower, upper)
        with np.errstate(all="ignore"):
            value = np.sum((fn(t_act, *(trial[:, [i]] for i in range(3))) - y_act) ** 2, axis=1)
        value = np.where(np.isfinite(value), value, np.inf)
        before = current[active]
        better = value < before
        params[active[better]] = trial[better]
        current[active[better]] = value[better]
        lam = np.where(better, lam / 3, lam * 4)
        damping[active] = lam
        converged = (better & (before - value <= 1e-9 * before)) | (lam > 1e6)
        active = active[~converged]
    return params


def holdout_errors(t: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """RMSE of each model on the last ~20% of points (at least 2) after fitting on the rest, and those fits."""
    h = max(2, round(0.2 * len(t)))
    if len(t) - h < 4:
        return {}, {}
    errors, fits = {}, {}
    for model, (fn, _, _) in MODELS.items():
        params = fit(model, t[:-h], y[:-h])
        if params is not None:
            errors[model] = float(np.sqrt(np.mean((fn(t[-h:], *params) - y[-h:]) ** 2)))
            fits[model] = params
    return errors, fits


@dataclass(slots=True)
class TargetOutlook:
    date: date
    level: float
    projected: float | None = None
    low: float | None = None
    high: float | None = None
    reached: str | None = None  # "YYYY-MM" the point forecast first reaches the level, None if never by 2060
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
    model: str | None
    params: dict[str, float] = field(default_factory=dict)
    holdout_rmse: dict[str, float] = field(default_factory=dict)
    origin: date | None = None
    targets: list[TargetOutlook] = field(default_factory=list)
    band: list[tuple[date, float, float, float]] = field(
        default_factory=list
    )  # (month end, point, low, high)
    note: str = ""

    def as_dict(self, *, band: bool = True) -> dict:
        out = {
            "model": self.model,
            "params": self.params,
            "holdout_rmse": self.holdout_rmse,
            "origin": self.origin.isoformat() if self.origin else None,
            "targets": [t.as_dict() for t in self.targets],
            "note": self.note,
        }
        if band:
            out["band"] = [
                {"month": m.isoformat()[:7], "point": p, "low": lo, "high": hi} for m, p, lo, hi in self.band
            ]
        return out


def years(day: date, origin: date) -> float:
    return (day - origin).days / 365.25


def _months_between(start: date, end: date) -> int:
    return max(0, (end.year - start.year) * 12 + end.month - start.month)


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
    """Fit both curves to dated shares, keep Bass unless the logistic's hold-out error is clearly lower
    (``PREFER_BASS``), bootstrap an 80% band, and judge each target.

    ``orgs`` (the denominator) and ``adopting`` (now) turn shares into organizations per month.
    """
    outlooks = [TargetOutlook(date.fromisoformat(d), float(level)) for d, level in targets]
    order = np.argsort(np.array([d.toordinal() for d in dates]))
    dates = [dates[i] for i in order]
    y = np.clip(np.asarray(shares, dtype=float)[order], 0.0, 1.0)
    if len(dates) < MIN_POINTS or y.max() <= 0:
        return Forecast(None, targets=outlooks, note=f"needs >= {MIN_POINTS} points with some adoption")
    origin = dates[0].replace(day=1)
    t = np.array([years(d, origin) for d in dates])
    errors, early = holdout_errors(t, y)
    candidates = list(MODELS)  # Bass first: the diffusion model proper
    if len(errors) == 2 and errors["logistic"] < PREFER_BASS * errors["bass"]:
        candidates.reverse()
    model, params = None, None
    for name in candidates:
        params = fit(name, t, y, [early[name]] if name in early else ())
        if params is not None:
            model = name
            break
    if model is None:
        return Forecast(None, holdout_rmse=errors, targets=outlooks, note="neither curve could be fitted")
    fn, names, _ = MODELS[model]
    last = dates[-1]
    horizon_end = max([o.date for o in outlooks] + [last])
    grid = month_ends(origin, month_end(horizon_end))
    grid_t = np.array([years(m, origin) for m in grid])
    target_t = np.array([years(o.date, origin) for o in outlooks])
    point_grid = np.clip(fn(grid_t, *params), 0, 1)
    point_targets = np.clip(fn(target_t, *params), 0, 1)

    rng = np.random.default_rng(seed)
    if resamples > 0:
        # Pairs (case) bootstrap: refit on months drawn with replacement. Before the inflection the ceiling
        # is weakly identified, and resampling the months shows that; resampled residuals would not.
        picks = rng.integers(0, len(t), size=(resamples, len(t)))
        draws = refit_batch(model, t[picks], y[picks], params)
        cols = [draws[:, [i]] for i in range(3)]
        lo_grid, hi_grid = np.clip(np.percentile(fn(grid_t, *cols), BAND, axis=0), 0, 1)
        lo_t, hi_t = np.clip(np.percentile(fn(target_t, *cols), BAND, axis=0), 0, 1)
    else:
        lo_grid, hi_grid, lo_t, hi_t = point_grid, point_grid, point_targets, point_targets
    # A band always holds its point forecast (a fit pinned to a bound can leave it just outside the percentiles).
    lo_grid, hi_grid = np.minimum(lo_grid, point_grid), np.maximum(hi_grid, point_grid)
    lo_t, hi_t = np.minimum(lo_t, point_targets), np.maximum(hi_t, point_targets)

    result = Forecast(
        model,
        params={n: float(v) for n, v in zip(names, params, strict=True)},
        holdout_rmse=errors,
        origin=origin,
        band=[
            (m, float(p), float(lo), float(hi))
            for m, p, lo, hi in zip(grid, point_grid, lo_grid, hi_grid, strict=True)
        ],
    )
    for i, o in enumerate(outlooks):
        o.projected, o.low, o.high = float(point_targets[i]), float(lo_t[i]), float(hi_t[i])
        o.reached = _reached(fn, params, origin, dates, y, o.level)
        if o.date <= last:
            observed = y[
                np.searchsorted([d.toordinal() for d in dates], o.date.toordinal(), side="right") - 1
            ]
            o.projected = o.low = o.high = float(observed)
            o.status = "met" if observed >= o.level else "missed"
        elif o.low >= o.level:
            o.status = "on track"
        elif o.high < o.level:
            o.status = "off track"
        else:
            o.status = "at risk"
        o.months_left = _months_between(last, o.date)
        if orgs and o.date > last:
            months = max(1, o.months_left)
            o.needed_per_month = max(0, math.ceil((math.ceil(o.level * orgs) - adopting) / months))
            o.trend_per_month = round((o.projected * orgs - adopting) / months)
            o.extra_per_month = max(0, o.needed_per_month - max(0, o.trend_per_month))
    result.targets = outlooks
    return result


def _reached(fn, params, origin: date, dates: list[date], y: np.ndarray, level: float) -> str | None:
    """The first month the observed series, then the point forecast, is at or above ``level``."""
    for d, v in zip(dates, y, strict=True):
        if v >= level:
            return d.isoformat()[:7]
    m = next_month_end(dates[-1])
    end = date(HORIZON_YEAR, 12, 31)
    months = []
    while m <= end:
        months.append(m)
        m = next_month_end(m)
    values = fn(np.array([years(x, origin) for x in months]), *params)
    hit = np.nonzero(values >= level)[0]
    return months[hit[0]].isoformat()[:7] if len(hit) else None
