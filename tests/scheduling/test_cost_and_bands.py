"""The engine-time cost model and the service_tier bands of FairQueue (issue 17)."""

from __future__ import annotations

import random

import pytest

from aiplus.scheduling.cost import CACHED_FRACTION, CostModel
from aiplus.scheduling.fair_queue import FairQueue, band_of


def test_cost_model_fits_prefill_and_decode_seconds_from_engine_steps():
    """Steps of a batching engine (a + b*batch + c*prefill): beta absorbs the step's fixed cost per token."""
    rng = random.Random(1)
    model = CostModel()
    for _ in range(3000):
        batch = rng.randint(10, 40)
        prefill = rng.choice([0, 0, 0, rng.randint(100, 3000)])
        model.observe(prefill, batch, 0.020 + 0.0006 * batch + 0.0002 * prefill)
    assert model.alpha == pytest.approx(0.0002, rel=0.15)
    assert 0.0011 < model.beta < 0.0018  # 0.0006 + 0.020 / (a typical batch of ~25)
    assert model.beta / model.alpha > 4


def test_cost_model_is_clamped_and_ignores_empty_observations():
    model = CostModel(alpha=0.001, beta=0.002, clamp=2.0, smooth=1.0)
    model.observe(0, 0, 1.0)
    model.observe(10, 10, 0.0)
    assert model.observations == 0
    for _ in range(200):
        model.observe(100, 100, 1000.0)  # absurdly slow: clamped at start * 2
    assert model.alpha == pytest.approx(0.002)
    assert model.beta == pytest.approx(0.004)


def test_engine_cost_charges_fitted_seconds_and_cached_prompt_tokens_as_cached():
    cost = CostModel(alpha=0.001, beta=0.01)
    queue = FairQueue(2, cost=cost)
    ticket = queue.submit("A", 2.0, 1000, 50)
    queue.dispatch()
    assert queue.counter("A") == pytest.approx(0.001 * 1000 / 2)
    queue.output(ticket, 10)
    assert queue.counter("A") == pytest.approx((1.0 + 0.1) / 2)
    queue.adjust_prompt(ticket, 1000, cached_tokens=800)
    expected = 0.001 * (200 + 800 * CACHED_FRACTION) + 0.1
    assert queue.counter("A") == pytest.approx(expected / 2)
    tokens = FairQueue(2)  # the price list ignores the cache
    t = tokens.submit("A", 1.0, 1000, 50)
    tokens.dispatch()
    tokens.adjust_prompt(t, 1000, cached_tokens=800)
    assert tokens.counter("A") == pytest.approx(1000)


def test_service_tier_maps_to_bands():
    assert band_of(None) == "default" and band_of("auto") == "default"
    assert band_of("priority") == "priority" and band_of("flex") == "flex"
    assert band_of(None, default="flex") == "flex"
    with pytest.raises(ValueError, match="service_tier"):
        band_of("scale")


def _serve_all(queue: FairQueue, rounds: int) -> dict[str, int]:
    served: dict[str, int] = {}
    for _ in range(rounds):
        ticket = queue.dispatch()
        assert ticket is not None
        served[ticket.band.name] = served.get(ticket.band.name, 0) + 1
        queue.output(ticket, 10)
        queue.finish(ticket)
        queue.submit(ticket.org_id, 1.0, 10, 10, band=ticket.band.name)  # stay backlogged
    return served


def test_priority_goes_first_but_lower_bands_keep_their_floors():
    queue = FairQueue(1, priority_reserve=0.0)
    for band, org in (("flex", "nightly"), ("default", "office"), ("priority", "clinic")):
        for _ in range(3):
            queue.submit(org, 1.0, 10, 10, band=band)
    first = queue.dispatch()
    assert first.org_id == "clinic"  # submitted last, served first
    queue.finish(first)
    served = _serve_all(queue, 999)
    total = sum(served.values())
    assert served["flex"] / total == pytest.approx(0.10, abs=0.01)
    assert served["default"] / total == pytest.approx(0.20, abs=0.01)
    assert served["priority"] / total == pytest.approx(0.70, abs=0.01)


def test_an_idle_band_banks_no_credit():
    """Flex idle for a long time, then backlogged: it gets its floor from then on, not the missed share."""
    queue = FairQueue(1, priority_reserve=0.0)
    queue.submit("clinic", 1.0, 10, 10, band="priority")
    _serve_all(queue, 500)
    queue.submit("nightly", 1.0, 10, 10, band="flex")
    served = _serve_all(queue, 100)
    assert served.get("flex", 0) <= 12


def test_lower_bands_leave_the_priority_reserve_free_once_priority_traffic_is_seen():
    queue = FairQueue(10, priority_reserve=0.2)
    for _ in range(20):
        queue.submit("office", 1.0, 10, 10)
    while queue.dispatch() is not None:
        pass
    assert queue.in_flight == 10  # no priority traffic yet: the whole budget
    queue = FairQueue(10, priority_reserve=0.2)
    queue.submit("clinic", 1.0, 10, 10, band="priority")
    queue.finish(queue.dispatch())
    for _ in range(20):
        queue.submit("office", 1.0, 10, 10)
    while queue.dispatch() is not None:
        pass
    assert queue.in_flight == 8
    queue.submit("clinic", 1.0, 10, 10, band="priority")
    assert queue.dispatch().org_id == "clinic"


def test_fcfs_ignores_bands():
    queue = FairQueue(1, policy="fcfs")
    queue.submit("office", 1.0, 10, 10)
    queue.submit("clinic", 1.0, 10, 10, band="priority")
    assert queue.dispatch().org_id == "office"
