"""Bass and logistic fits on synthetic data with known parameters, the band, and the target status."""

from datetime import date

import numpy as np
import pytest

from aiplus.adoption.diffusion import bass, logistic, years
from aiplus.adoption.outlook import forecast
from aiplus.adoption.penetration import month_ends

TARGETS = (("2027-12-31", 0.70), ("2030-12-31", 0.90))


def monthly(first, last):
    months = month_ends(first, last)
    origin = months[0].replace(day=1)
    return months, np.array([years(m, origin) for m in months])


@pytest.mark.parametrize(
    ("p", "q", "m", "seed"),
    [(0.03, 0.38, 0.9, 1), (0.01, 0.8, 0.75, 2), (0.05, 0.5, 0.95, 3), (0.02, 1.2, 0.6, 4)],
)
def test_bass_fit_recovers_p_q_m_within_10_percent(p, q, m, seed):
    months, t = monthly(date(2018, 1, 1), date(2029, 12, 31))  # 12 years: past the peak of adoption
    y = bass(t, p, q, m) + np.random.default_rng(seed).normal(0, 0.005, len(t))
    result = forecast(months, y, TARGETS, resamples=50)
    assert result.model == "bass"
    for name, true in (("p", p), ("q", q), ("m", m)):
        assert result.params[name] == pytest.approx(true, rel=0.10), name


def test_logistic_data_is_recognised_by_holdout_error():
    months, t = monthly(date(2020, 1, 1), date(2026, 12, 31))
    y = logistic(t, 0.8, 1.5, 3.0) + np.random.default_rng(7).normal(0, 0.005, len(t))
    result = forecast(months, y, TARGETS, resamples=50)
    assert set(result.holdout_rmse) == {"bass", "logistic"}
    assert result.model == min(result.holdout_rmse, key=result.holdout_rmse.get)
    assert result.params["k"] == pytest.approx(0.8, rel=0.05)
    assert result.params["r"] == pytest.approx(1.5, rel=0.10)


def test_status_rule_and_orgs_needed():
    months, t = monthly(date(2024, 1, 1), date(2026, 10, 31))
    rng = np.random.default_rng(5)
    fast = forecast(months, bass(t, 0.05, 1.5, 0.98) + rng.normal(0, 0.003, len(t)), TARGETS, orgs=1000)
    slow = forecast(months, bass(t, 0.005, 0.3, 0.4) + rng.normal(0, 0.003, len(t)), TARGETS, orgs=1000)
    assert [o.status for o in fast.targets] == ["on track", "on track"]
    assert [o.status for o in slow.targets] == ["off track", "off track"]
    for o in fast.targets + slow.targets:
        assert o.low <= o.projected <= o.high
    assert fast.targets[0].reached is not None and fast.targets[0].reached <= "2027-12"
    assert slow.targets[1].reached is None  # a 40% ceiling never reaches 90%
    assert fast.targets[0].extra_per_month == 0
    outlook = slow.targets[0]
    adopting = 0  # forecast() was given no adopters: everything is still needed
    assert outlook.months_left == 14
    assert outlook.needed_per_month == -(-(700 - adopting) // 14)
    assert outlook.extra_per_month == outlook.needed_per_month - max(0, outlook.trend_per_month)
    # the band runs from the last observed month, where it is the observation itself, to the last target
    assert [b[0] for b in fast.band] == month_ends(date(2026, 10, 1), date(2030, 12, 31))
    y_fast = bass(t, 0.05, 1.5, 0.98)
    assert fast.band[0][1:] == pytest.approx((fast.band[0][1],) * 3)
    assert abs(fast.band[0][1] - y_fast[-1]) < 0.02


def test_a_forecast_starts_at_the_last_observation_and_never_drops_below_it():
    months, t = monthly(date(2024, 1, 1), date(2026, 10, 31))
    y = bass(t, 0.02, 0.9, 0.8)
    y[-1] += 0.03  # the last month above the curve: a fit alone would start 3 pp lower
    result = forecast(months, y, TARGETS, resamples=50)
    band = result.band
    assert band[0][0] == months[-1] and band[0][1] == pytest.approx(y[-1])
    assert band[1][1] >= y[-1]  # the month after: not below the last observation
    assert all(b[1] <= c[1] + 1e-12 for b, c in zip(band, band[1:], strict=False))


def test_past_target_dates_are_met_or_missed_on_the_observed_figure():
    months, t = monthly(date(2020, 1, 1), date(2028, 12, 31))
    result = forecast(months, bass(t, 0.02, 0.5, 0.8), TARGETS, resamples=20)
    first = result.targets[0]
    assert first.status == "missed" and first.projected == pytest.approx(bass(t, 0.02, 0.5, 0.8)[95])


def test_too_little_data_gives_no_forecast():
    result = forecast([date(2026, 1, 31), date(2026, 2, 28)], [0.1, 0.2], TARGETS)
    assert result.model is None and result.targets[0].status == "insufficient data"
    assert forecast(month_ends(date(2025, 1, 1), date(2025, 12, 31)), [0.0] * 12, TARGETS).model is None
