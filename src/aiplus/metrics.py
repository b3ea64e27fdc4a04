"""Prometheus collectors, defined once for the whole process; ``/metrics`` exposes the default registry."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

QUEUE_LENGTH = Gauge(
    "aiplus_queue_length",
    "Requests waiting for dispatch, per model and organization tier.",
    ["model", "tier"],
)

QUEUE_WAIT_SECONDS = Histogram(
    "aiplus_queue_wait_seconds",
    "Time a request waited in the fair queue before dispatch (timeouts and cancellations excluded).",
    ["model", "tier"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

TOKENS_SERVED = Counter(
    "aiplus_tokens_served",
    "Tokens served, per model, organization tier and kind (prompt or completion).",
    ["model", "tier", "kind"],
)

INFLIGHT = Gauge(
    "aiplus_inflight_requests",
    "Requests being generated, per model and replica.",
    ["model", "replica"],
)

QUEUE_TIMEOUTS = Counter(
    "aiplus_queue_timeouts",
    "Requests answered 429 because they waited longer than the queue timeout.",
    ["model", "tier"],
)

BAND_QUEUE_LENGTH = Gauge(
    "aiplus_band_queue_length",
    "Requests waiting for dispatch, per model and band (service_tier: priority, default, flex).",
    ["model", "band"],
)

COST_COEFFICIENT = Gauge(
    "aiplus_cost_coefficient",
    'The scheduler\'s fitted engine time per token (cost = "engine"): alpha per uncached prompt token, '
    "beta per output token, in seconds.",
    ["model", "coefficient"],
)

INFLIGHT_BUDGET = Gauge(
    "aiplus_inflight_budget",
    'Requests the scheduler lets run at once, per model and replica (adaptive with max_concurrency = "auto").',
    ["model", "replica"],
)

BAND_REQUESTS = Counter(
    "aiplus_band_requests",
    "Requests dispatched, per model and band.",
    ["model", "band"],
)

BAND_TOKENS = Counter(
    "aiplus_band_tokens",
    "Tokens of requests that ran (prompt plus output, as the scheduler counted them), per model and band.",
    ["model", "band"],
)


class CallWindow:
    """The last few minutes of finished calls in this process, for the control room's live view.

    Operational telemetry only (rates, errors, waits, shares of service); usage and money are read from the
    ledger's rollups. Bounded twice: by age (``horizon_s``) and by count, so a burst cannot grow it.
    """

    __slots__ = ("_calls", "horizon_s")

    def __init__(self, horizon_s: float = 300.0, max_calls: int = 50_000):
        self.horizon_s = horizon_s
        self._calls: deque[tuple] = deque(maxlen=max_calls)

    def add(
        self,
        model: str,
        tier: str,
        org_id: str,
        weight: float,
        prompt_tokens: int,
        completion_tokens: int,
        status: str,
        waited_s: float | None,
    ) -> None:
        """Record one finished call (``time.monotonic`` stamps it)."""
        now = time.monotonic()
        calls = self._calls
        calls.append((now, model, tier, org_id, weight, prompt_tokens, completion_tokens, status, waited_s))
        while calls and calls[0][0] < now - self.horizon_s:
            calls.popleft()

    def since(self, seconds: float) -> list[tuple]:
        """Calls that finished in the last ``seconds``: (t, model, tier, org, weight, prompt, completion,
        status, waited_s)."""
        cutoff = time.monotonic() - seconds
        return [c for c in self._calls if c[0] >= cutoff]
