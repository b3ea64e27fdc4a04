"""The rolling-origin back-test: errors and band coverage on series whose noise is known."""

from datetime import date

import numpy as np
import pytest

from aiplus.adoption.backtest import HORIZONS, Accuracy, backtest, origin_indices
from aiplus.adoption.demo import bass_inverse
from aiplus.adoption.penetration import Cell, Series, month_ends

# (p, q, m, organizations): each organization starts at a time drawn from its sector's Bass curve, so the
# observed share is the curve plus binomial sampling noise, the noise of a real register
SECTORS = {
    "a": (0.03, 0.9, 0.9, 800),
    "b": (0.02, 0.7, 0.8, 1500),
    "c": (0.05, 1.1, 0.95, 600),
    "d": (0.01, 0.6, 0.7, 2000),
    "e": (0.02, 1.0, 0.85, 1000),
    "f": (0.04, 0.5, 0.9, 700),
}


def sampled_series(months: int = 96, seed: int = 4) -> Series:
    rng = np.random.default_rng(seed)
    ends = month_ends(date(2016, 11, 1), date(2026, 10, 31))[-months:]
    groups = {}
    for name, (p, q, m, n) in SECTORS.items():
        u = rng.random(n)
        start = np.full(n, np.inf)
        adopters = u < m
        start[adopters] = bass_inverse(u[adopters] / m, p, q) * 12  # in months
        groups[name] = [
            Cell(orgs=n, adopting=int(np.sum(start < i + 1)), agent=int(np.sum(start < i - 2)))
            for i in range(months)
        ]
    total = []
    for i in range(months):
        cell = Cell()
        for cells in groups.values():
            cell.add(cells[i])
        total.append(cell)
    return Series("sector", ends, groups, total, {"sector": groups})


def test_origins_are_the_last_checkable_months():
    assert origin_indices(36, 12) == list(range(18, 30))
    assert origin_indices(8, 12) == [0, 1]


def test_backtest_on_binomial_noise_past_the_inflection_covers_about_80_percent():
    """Eight years of each sector, every curve past its inflection: the model holds and is identified, so the
    80% band should hold the truth about 80% of the time (measured: 78-86% at 6 months, 72-78% at 12 over
    seeds 4-6)."""
    series = sampled_series()
    result = backtest(series, measures=("penetration",), origins=12)["penetration"]
    assert len(result.origins) == 12 and result.origins[-1] == series.months[-1 - min(HORIZONS)]
    parts = result.parts
    assert len(parts.errors[6]) == 12 * len(SECTORS) and len(parts.errors[12]) == 6 * len(SECTORS)
    for h in HORIZONS:
        assert 0.65 <= parts.coverage(h) <= 0.95, (h, parts.coverage(h))
        assert parts.mae_pp(h) < 2.0
    assert result.total.mae_pp(6) < 1.0
    data = result.as_dict()
    assert set(data["levels"]) == {"all", "sector"} and data["levels"]["sector"]["n_6m"] == 72


def test_backtest_before_the_inflection_shows_the_band_is_too_narrow():
    """Three years, before most inflections: least squares on a truncated diffusion puts the ceiling too low
    (Van den Bulte & Lilien 1997), and the back-test says so: the band under-covers and the errors grow."""
    early = backtest(sampled_series(months=36), measures=("penetration",), origins=12)["penetration"].parts
    late = backtest(sampled_series(), measures=("penetration",), origins=12)["penetration"].parts
    assert early.coverage(12) < late.coverage(12) and early.coverage(12) < 0.7
    assert early.mae_pp(12) > 2 * late.mae_pp(12)


def test_backtest_finds_a_band_that_is_too_narrow():
    """The same scoring on a forecast that is right on average but whose band is a point: coverage ~0."""
    accuracy = Accuracy()
    rng = np.random.default_rng(0)
    for truth in rng.normal(0.3, 0.02, 50):
        accuracy.add(6, 0.3, 0.3, 0.3, float(truth))
        accuracy.add(12, 0.3, 0.25, 0.35, float(truth))
    assert accuracy.coverage(6) == 0.0 and accuracy.coverage(12) == 1.0
    assert accuracy.mae_pp(6) == pytest.approx(100 * 0.02 * np.sqrt(2 / np.pi), rel=0.3)


def test_backtest_service_and_table_on_the_demo(tmp_path):
    from rich.console import Console

    from aiplus.adoption.backtest import backtest_table
    from aiplus.adoption.demo import seed_demo
    from aiplus.adoption.report import build_backtest
    from aiplus.config import load_settings
    from aiplus.storage.testing import scratch_database

    settings = load_settings(None, env={}, secret="s")
    with scratch_database("sqlite", tmp_path) as (engine, _):
        seed_demo(engine, settings, orgs=300, months=14, seed=2, today=date(2026, 11, 15))
        with engine.connect() as conn:
            results = build_backtest(
                conn, settings.adoption, by="region", origins=8, as_of=date(2026, 11, 15)
            )
            with pytest.raises(ValueError, match="origins must be 1 to"):
                build_backtest(conn, settings.adoption, origins=0)
    assert set(results) == {"penetration", "agents"}
    result = results["penetration"]
    # usage months end 2026-10: origins end 6 months before; 12 months ahead only from the 12th month before
    origins = [o.isoformat()[:7] for o in result.origins]
    assert result.by == "region" and origins[-1] == "2026-04" and 6 <= len(origins) <= 8
    assert len(result.total.errors[6]) == len(origins)
    assert len(result.total.errors[12]) == sum(o <= "2025-10" for o in origins) > 0
    console = Console(record=True, width=200)
    console.print(backtest_table(results))
    text = console.export_text()
    assert "region (pooled)" in text and "12-mo in band" in text and "agents" in text
