"""The adaptive in-flight budget of an upstream replica (``max_concurrency = "auto"``).

A fixed ``max_concurrency`` is a guess: too high and the surplus waits in the engine's own FIFO queue, where
fairness cannot reach; too low and the GPU idles. ``AdaptiveBudget`` reads what the engine publishes
(``EngineLoad``: requests waiting inside it, requests running, KV cache in use) and keeps the budget at the
edge: one more while the budget is full (in aiplus's count and, when it says, in the engine's own), nothing
waits inside the engine and its KV cache has room; down to
what the engine actually runs as soon as requests wait inside it. The queue thus stays in aiplus, where the
fair counter orders it. With a hidden capacity C the budget alternates between C and C + 1 and the engine's
own queue averages well under one request (``bench/fairness.py``, "Adaptive budget").

``run_adaptive`` is the live loop: every ``concurrency_interval_s`` it reads each replica's load, updates its
budget, tells the engine (to route by room) and resizes the model's dispatcher to the sum. The embedded
engine keeps its fixed slot count: it has no queue of its own to overflow into.
"""

from __future__ import annotations

import asyncio
import logging

from aiplus import metrics
from aiplus.config import ModelConfig
from aiplus.engines.base import Engine, EngineLoad
from aiplus.scheduling.dispatcher import Dispatcher

log = logging.getLogger("aiplus")
KV_HIGH = 0.90  # above this KV use, growing the budget would only queue inside the engine


class AdaptiveBudget:
    """One replica's budget between ``minimum`` and ``maximum``, updated from its EngineLoad."""

    __slots__ = ("budget", "maximum", "minimum")

    def __init__(self, minimum: int = 1, maximum: int = 64, start: int | None = None):
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.budget = minimum if start is None else min(max(start, minimum), maximum)

    def update(self, load: EngineLoad | None, in_flight: int) -> int:
        """The new budget, given the replica's load and how many requests aiplus has in flight there."""
        if load is None:
            return self.budget  # no signal: hold
        if load.waiting >= 1:
            running = load.running if load.running is not None else max(0.0, in_flight - load.waiting)
            self.budget = max(self.minimum, min(self.budget - 1, int(running)))
        elif (
            in_flight >= self.budget
            # the engine itself runs the whole budget: a request aiplus just added, not yet in the engine's
            # /metrics (a scrape that lags, a request still on its way), must not count as room to grow into
            and (load.running is None or load.running >= self.budget)
            and (load.kv_usage is None or load.kv_usage < KV_HIGH)
        ):
            self.budget = min(self.maximum, self.budget + 1)
        return self.budget


async def run_adaptive(config: ModelConfig, engine: Engine, dispatcher: Dispatcher, share: int = 1) -> None:
    """Keep ``dispatcher``'s budget at the sum of the replicas' adaptive budgets (``share``: processes that
    split it without Redis), until cancelled."""
    budgets = [AdaptiveBudget(config.concurrency_min, config.concurrency_max) for _ in range(engine.replicas)]
    gauges = [metrics.INFLIGHT_BUDGET.labels(config.id, str(i)) for i in range(engine.replicas)]
    while True:
        try:
            loads = await engine.load()
            inflight = engine.inflight() or [0] * len(budgets)
            for budget, load, n, gauge in zip(budgets, loads, inflight, gauges, strict=False):
                gauge.set(budget.update(load, n * share))
            values = [b.budget for b in budgets]
            engine.set_budgets(values)
            dispatcher.resize(max(1, -(-sum(values) // share)), dispatcher.queue.max_inflight_tokens)
        except Exception:  # a bad scrape must not end the loop: the budget holds until the next one
            log.exception("adaptive budget of %s: update failed", config.id)
        await asyncio.sleep(config.concurrency_interval_s)
