"""Coherent forecasts on a synthetic hierarchy whose parts follow known Bass curves."""

from datetime import date

import numpy as np
import pytest

from aiplus.adoption.diffusion import bass, years
from aiplus.adoption.hierarchy import Part, coherent, weights
from aiplus.adoption.outlook import Grid, band_of, judge
from aiplus.adoption.penetration import month_ends

TARGETS = (("2027-12-31", 0.70), ("2030-12-31", 0.90))
# (p, q, m, organizations): four sectors diffusing at different speeds
SECTORS = {
    "fast": (0.05, 1.2, 0.95, 300),
    "medium": (0.02, 0.8, 0.85, 1200),
    "slow": (0.01, 0.5, 0.70, 2500),
    "late": (0.006, 0.6, 0.80, 800),
}


def synthetic(noise: float = 0.003, seed: int = 1):
    months = month_ends(date(2018, 1, 1), date(2026, 10, 31))  # long enough to pass every inflection
    t = np.array([years(m, months[0].replace(day=1)) for m in months])
    rng = np.random.default_rng(seed)
    parts = {}
    for name, (p, q, m, orgs) in SECTORS.items():
        shares = np.clip(bass(t, p, q, m) + rng.normal(0, noise, len(t)), 0, 1)
        parts[name] = Part(months, list(shares), float(shares[-1]), orgs)
    return months, parts


def test_total_is_the_weighted_sum_of_the_parts_at_every_month_and_on_every_path():
    months, parts = synthetic()
    grid = Grid.after(months[-1], TARGETS)
    result = coherent(grid, parts, resamples=200, seed="test")
    w = weights(parts)
    assert sum(w.values()) == pytest.approx(1.0)
    total = result.total
    assert total.point.shape == (len(grid.months),) and total.paths.shape == (200, grid.horizon)
    summed_point = sum(w[k] * result.parts[k].point for k in parts)
    summed_paths = sum(w[k] * result.parts[k].paths for k in parts)
    assert np.max(np.abs(total.point - summed_point)) < 1e-12
    assert np.max(np.abs(total.paths - summed_paths)) < 1e-12
    assert total.last == pytest.approx(sum(w[k] * parts[k].last for k in parts))
    # the total's band comes from the summed paths: narrower than the weighted sum of the parts' bands
    # (their errors are independent) but never outside the parts' range
    low, high = band_of(total)
    part_bands = {k: band_of(result.parts[k]) for k in parts}
    assert np.all(low <= sum(w[k] * part_bands[k][1] for k in parts) + 1e-12)
    assert np.all(high >= sum(w[k] * part_bands[k][0] for k in parts) - 1e-12)
    assert np.all(low <= total.point[: grid.horizon] + 1e-12)
    assert np.all(total.point[: grid.horizon] <= high + 1e-12)


def test_true_bass_parameters_are_recovered_within_10_percent():
    months, parts = synthetic()
    grid = Grid.after(months[-1], TARGETS)
    result = coherent(grid, parts, resamples=50, seed="test")
    for name, (p, q, m, _) in SECTORS.items():
        fitted = result.parts[name].fit
        assert fitted is not None and fitted.model == "bass", name
        for key, true in (("p", p), ("q", q), ("m", m)):
            assert fitted.named_params[key] == pytest.approx(true, rel=0.10), (name, key)


def test_another_cut_is_reconciled_to_the_same_total():
    months, sectors = synthetic()
    # a second cut of the same register: each sector's organizations split between two regions, the first
    # with a larger share of the fast sectors' adopters; the regions' observed series add up to the same total
    lean = {"fast": 0.35, "medium": 0.15, "slow": -0.25, "late": -0.1}
    cells = {name: np.zeros(len(months)) for name in ("north", "south")}
    orgs = {"north": 0, "south": 0}
    for name, part in sectors.items():
        adopting = np.array(part.shares) * part.orgs
        half = part.orgs // 2
        cells["north"] += adopting * (0.5 + lean[name] / 2)
        cells["south"] += adopting * (0.5 - lean[name] / 2)
        orgs["north"] += half
        orgs["south"] += part.orgs - half
    regions = {k: Part(months, list(v / orgs[k]), float(v[-1] / orgs[k]), orgs[k]) for k, v in cells.items()}
    grid = Grid.after(months[-1], TARGETS)
    by_sector = coherent(grid, sectors, resamples=100, seed="test")
    by_region = coherent(grid, sectors, regions, resamples=100, seed="test")
    assert np.array_equal(by_sector.total.paths, by_region.total.paths)  # one national line in every report
    w = weights(regions)
    summed = sum(w[k] * by_region.parts[k].paths for k in regions)
    assert np.max(np.abs(summed - by_region.total.paths)) < 1e-12
    summed_point = sum(w[k] * by_region.parts[k].point for k in regions)
    assert np.max(np.abs(summed_point - by_region.total.point)) < 1e-12
    # and each region still starts at its last observation, only rises, and stays a share
    for k, part in regions.items():
        point = by_region.parts[k].point
        assert (
            point[0] >= part.last - 1e-12 and np.all(np.diff(point) >= -1e-12) and point.max() <= 1 + 1e-12
        ), k
        assert by_region.parts[k].paths.min() >= -1e-12 and by_region.parts[k].paths.max() <= 1 + 1e-12, k


def test_the_judged_total_never_beats_parts_that_are_all_off_track():
    months, parts = synthetic()
    grid = Grid.after(months[-1], TARGETS)
    result = coherent(grid, parts, resamples=200, seed="test")
    judged = {k: judge(result.parts[k], grid, months, parts[k].shares, TARGETS) for k in parts}
    total_shares = [
        sum(w * parts[k].shares[i] for k, w in weights(parts).items()) for i in range(len(months))
    ]
    total = judge(result.total, grid, months, total_shares, TARGETS, model="sum of parts")
    w = weights(parts)
    for i, outlook in enumerate(total.targets):
        assert outlook.projected == pytest.approx(sum(w[k] * judged[k].targets[i].projected for k in parts))
        if all(judged[k].targets[i].status == "off track" for k in parts):
            assert outlook.status == "off track"
    # every part's ceiling is below 90%... except "fast": the 2030 target is off track for the total
    assert total.targets[1].status == "off track"
