"""Prometheus collectors, defined once for the whole process; ``/metrics`` exposes the default registry."""

from __future__ import annotations

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
