"""What an upstream engine publishes about itself: its load (Prometheus ``/metrics``) and its prefix cache
(``usage.prompt_tokens_details``). Read by ``upstream.py`` for the scheduler's adaptive budget and cost model."""

from __future__ import annotations

from typing import Any

from aiplus.engines.base import EngineLoad

# engine metric names, by what they say: summed over their label sets (one per served model)
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred", "sglang:num_queue_reqs")
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing", "sglang:num_running_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")


def metrics_url(base_url: str) -> str:
    """Where a replica served at ``base_url`` (``http://gpu1:8000/v1``) publishes its metrics."""
    base = base_url.rstrip("/")
    return f"{base[:-3] if base.endswith('/v1') else base}/metrics"


def parse_load(text: str) -> EngineLoad | None:
    """An engine's Prometheus exposition as an EngineLoad; None when it publishes no waiting-queue gauge."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, number = line.rpartition(" ")
        try:
            value = float(number)
        except ValueError:
            continue
        name = head.split("{", 1)[0].strip()
        sums[name] = sums.get(name, 0.0) + value

    def first(names: tuple[str, ...]) -> float | None:
        return next((sums[n] for n in names if n in sums), None)

    waiting = first(WAITING)
    if waiting is None:
        return None
    return EngineLoad(waiting=waiting, running=first(RUNNING), kv_usage=first(KV_USAGE))


def cached_tokens(usage: Any, prompt_tokens: int | None = None) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens``, as OpenAI and vLLM (with prefix caching) report it; None
    when absent or not a whole number from 0 to the prompt's length (an upstream's bad count is not trusted)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
        return None
    return None if prompt_tokens is not None and cached > prompt_tokens else cached
