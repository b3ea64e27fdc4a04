"""Diffusion curves: Bass and logistic fitted by least squares, chosen by hold-out error, and projected from
the last observation with sample paths (which ``hierarchy`` adds up and ``outlook`` judges).

Time is measured in years from the start of the diffusion (the first observed month's first day), so Bass
``p`` and ``q`` are per year and comparable with the literature (p ~ 0.03, q ~ 0.38).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 5
PREFER_BASS = 0.9  # the logistic is chosen only when its hold-out RMSE is at least 10% below Bass's


def bass(t: np.ndarray, p: float, q: float, m: float) -> np.ndarray:
    """Cumulative adopters' share under Bass: m (1 - e^{-(p+q)t}) / (1 + (q/p) e^{-(p+q)t})."""
    e = np.exp(-(p + q) * np.asarray(t, dtype=float))
    return m * (1.0 - e) / (1.0 + (q / p) * e)


def logistic(t: np.ndarray, k: float, r: float, t0: float) -> np.ndarray:
    """K / (1 + e^{-r (t - t0)})."""
    return k / (1.0 + np.exp(-r * (np.asarray(t, dtype=float) - t0)))


# Speed limits, per year: Bass imitation q <= 2 and logistic rate r <= 2.5 (r plays the part of Bass's p + q).
# Meta-analyses put q near 0.4 (Sultan, Farley & Lehmann 1990) and rarely above 1.5; without a limit, least
# squares on a series still accelerating picks q of 5-10 with a ceiling at today's level, and the back-test on
# the demo region missed by 9 pp at 12 months (4.8 pp with these limits, which were chosen on that back-test:
# docs/adoption.md, "How far to trust it").
Q_MAX = 2.0
R_MAX = 2.5
MODELS = {
    "bass": (bass, ("p", "q", "m"), ([1e-5, 0.0, 1e-3], [1.0, Q_MAX, 1.0])),
    "logistic": (logistic, ("k", "r", "t0"), ([1e-3, 1e-3, -30.0], [1.0, R_MAX, 60.0])),
}


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
        lambda t, a, b, c: bass(t, np.exp(a), Q_MAX * _sigmoid(b), _sigmoid(c)),
        lambda p, q, m: [math.log(p), _logit(q / Q_MAX), _logit(m)],
        lambda a, b, c: [np.exp(a), Q_MAX * _sigmoid(b), _sigmoid(c)],
    ),
    "logistic": (
        lambda t, a, b, t0: logistic(t, _sigmoid(a), R_MAX * _sigmoid(b), t0),
        lambda k, r, t0: [_logit(k), _logit(r / R_MAX), t0],
        lambda a, b, t0: [_sigmoid(a), R_MAX * _sigmoid(b), t0],
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


def years(day: date, origin: date) -> float:
    return (day - origin).days / 365.25


@dataclass(slots=True)
class Fit:
    """The chosen curve for one series, with what it was fitted on (``t`` in years from ``origin``)."""

    model: str
    params: np.ndarray
    origin: date
    t: np.ndarray
    y: np.ndarray
    holdout_rmse: dict[str, float]

    @property
    def named_params(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(MODELS[self.model][1], self.params, strict=True)}

    def at(self, t: np.ndarray) -> np.ndarray:
        return MODELS[self.model][0](t, *self.params)


def fit_series(
    dates: Sequence[date], shares: Sequence[float], origin: date | None = None
) -> tuple[Fit | None, str]:
    """Fit both curves, keep Bass unless the logistic's hold-out error is clearly lower (``PREFER_BASS``).

    Returns the fit (None when there is too little data or neither curve fits) and a note saying why not.
    """
    order = np.argsort(np.array([d.toordinal() for d in dates]))
    dates = [dates[i] for i in order]
    y = np.clip(np.asarray(shares, dtype=float)[order], 0.0, 1.0)
    if len(dates) < MIN_POINTS or y.max() <= 0:
        return None, f"needs >= {MIN_POINTS} points with some adoption"
    origin = origin or dates[0].replace(day=1)
    t = np.array([years(d, origin) for d in dates])
    errors, early = holdout_errors(t, y)
    candidates = list(MODELS)  # Bass first: the diffusion model proper
    if len(errors) == 2 and errors["logistic"] < PREFER_BASS * errors["bass"]:
        candidates.reverse()
    for name in candidates:
        params = fit(name, t, y, [early[name]] if name in early else ())
        if params is not None:
            return Fit(name, params, origin, t, y, errors), ""
    return None, "neither curve could be fitted"


def parameter_draws(fit: Fit, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` parameter vectors drawn around the fit from its Laplace (Gaussian) approximation.

    In the solver's unbounded coordinates (log p, logit q/Q_MAX, logit m; logit K, logit r/R_MAX, t0) the
    covariance is s² (JᵀJ)⁻¹, inflated by (1 + ρ)/(1 − ρ) for the residuals' lag-1 autocorrelation ρ (a monthly
    adoption series' errors persist, so its months are worth fewer independent points). Before the inflection
    the ceiling lies on a flat ridge of the least-squares surface, JᵀJ is nearly singular along it, and the
    draws spread along it: the band shows how weakly the ceiling is known.
    """
    wrapped, forward, back = UNBOUNDED[fit.model]
    u = np.array(forward(*fit.params), dtype=float)
    base = wrapped(fit.t, *u)
    resid = fit.y - base
    n = len(fit.t)
    s2 = float(resid @ resid) / max(1, n - 3)
    jac = np.empty((n, 3))
    for i in range(3):
        step = np.zeros(3)
        step[i] = 1e-5 * max(1.0, abs(u[i]))
        jac[:, i] = (wrapped(fit.t, *(u + step)) - base) / step[i]
    rho = 0.0
    if n > 3 and np.std(resid[:-1]) > 0 and np.std(resid[1:]) > 0:
        rho = min(max(float(np.corrcoef(resid[:-1], resid[1:])[0, 1]), 0.0), 0.9)
    cov = s2 * (1 + rho) / (1 - rho) * np.linalg.pinv(jac.T @ jac + 1e-9 * np.eye(3))
    us = rng.multivariate_normal(u, cov, size=count, method="eigh")
    with np.errstate(all="ignore"):
        out = np.column_stack(back(us[:, 0], us[:, 1], us[:, 2]))
    lower, upper = MODELS[fit.model][2]
    return np.clip(np.where(np.isfinite(out), out, fit.params), lower, upper)


@dataclass(slots=True)
class Projection:
    """One series from its last observation on: the point forecast for every future month of the common grid,
    and ``paths`` (sample paths, one row each) for the first months of it (the band's horizon)."""

    last: float
    point: np.ndarray
    paths: np.ndarray
    fit: Fit | None = None
    note: str = ""


def flat_projection(last: float, months: int, horizon: int, resamples: int, note: str = "") -> Projection:
    """No curve to extend: the series stays where it is (keeps a sum of parts whole when one part has no fit)."""
    return Projection(last, np.full(months, last), np.full((max(1, resamples), horizon), last), None, note)


def project(
    fit: Fit,
    last: float,
    grid_t: np.ndarray,
    horizon: int,
    *,
    resamples: int = 200,
    seed: int = 0,
    t_last: float | None = None,
) -> Projection:
    """The fitted curve moved to start at the last observation ``last`` (at ``t_last``), on future times
    ``grid_t``, and ``resamples`` sample paths over the first ``horizon`` of them.

    A path is the curve of one ``parameter_draws`` vector moved to the same start, drawn in mirrored pairs
    around the point forecast (a parameter held at a bound, such as a ceiling of 100% or q at ``Q_MAX``, can
    only be drawn on one side of it, which would put the whole band on one side of the forecast), plus
    month-to-month noise drawn from the fit's residual increments and accumulated, since a cumulative adoption
    series wanders like that.
    """
    fn = MODELS[fit.model][0]
    t_last = fit.t[-1] if t_last is None else t_last
    point = np.clip(fit.at(grid_t) - fit.at(np.array(t_last)) + last, 0.0, 1.0)
    if resamples <= 0:
        return Projection(last, point, point[None, :horizon].copy(), fit)
    rng = np.random.default_rng(seed)
    draws = parameter_draws(fit, resamples, rng)
    cols = [draws[:, [i]] for i in range(3)]
    with np.errstate(all="ignore"):
        curves = fn(grid_t[None, :horizon], *cols) - fn(np.array([[t_last]]), *cols) + last
    curves = np.where(np.isfinite(curves), curves, point[None, :horizon])
    half = resamples // 2
    curves[resamples - half :] = 2 * point[None, :horizon] - curves[:half]
    steps = np.diff(fit.y) - np.diff(fit.at(fit.t))
    if len(steps):
        curves += np.cumsum(rng.choice(steps, size=(resamples, horizon)), axis=1)
    return Projection(last, point, np.clip(curves, 0.0, 1.0), fit)
