"""The adaptive in-flight budget and the engine load it reads (issue 17)."""

from __future__ import annotations

import pytest

from aiplus.config import ConfigError, load_settings
from aiplus.engines import create_engine
from aiplus.engines.base import EngineLoad
from aiplus.engines.load import cached_tokens, metrics_url, parse_load
from aiplus.scheduling.budget import AdaptiveBudget
from tests.scheduling.test_simulation import load_bench


def test_budget_grows_while_full_and_the_engine_queue_is_empty_and_falls_to_what_runs():
    budget = AdaptiveBudget(1, 10)
    assert budget.update(EngineLoad(waiting=0, running=1), in_flight=1) == 2
    assert budget.update(EngineLoad(waiting=0, running=1), in_flight=1) == 2  # not full: hold
    assert budget.update(EngineLoad(waiting=0, running=2, kv_usage=0.95), in_flight=2) == 2  # KV full: hold
    assert budget.update(None, in_flight=2) == 2  # no signal: hold
    # aiplus has 2 in flight but the engine shows 1 running (a scrape behind, a request on its way): hold
    assert budget.update(EngineLoad(waiting=0, running=1), in_flight=2) == 2
    for _ in range(20):
        budget.update(EngineLoad(waiting=0, running=budget.budget), in_flight=budget.budget)
    assert budget.budget == 10  # bounded
    assert budget.update(EngineLoad(waiting=3, running=6), in_flight=9) == 6
    assert budget.update(EngineLoad(waiting=1), in_flight=3) == 2  # no running gauge: in flight - waiting
    assert AdaptiveBudget(2, 4).update(EngineLoad(waiting=9, running=0), in_flight=9) == 2  # bounded below


def test_engine_load_from_vllm_llama_server_and_sglang_metrics():
    vllm = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a"} 2.0\n'
        'vllm:num_requests_waiting{model_name="b"} 1.0\n'
        'vllm:num_requests_running{model_name="a"} 7.0\n'
        'vllm:kv_cache_usage_perc{model_name="a"} 0.5\n'
    )
    assert parse_load(vllm) == EngineLoad(waiting=3.0, running=7.0, kv_usage=0.5)
    assert parse_load("llamacpp:requests_deferred 2\nllamacpp:requests_processing 4\n") == EngineLoad(
        2.0, 4.0
    )
    assert parse_load("sglang:num_queue_reqs 0\nsglang:token_usage 0.3\n") == EngineLoad(0.0, None, 0.3)
    assert parse_load("process_cpu_seconds_total 12\n") is None
    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": 5}}) == 5
    assert cached_tokens({"prompt_tokens_details": None}) is None and cached_tokens(None) is None
    assert metrics_url("http://gpu1:8000/v1/") == "http://gpu1:8000/metrics"


def test_auto_concurrency_only_for_upstreams(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text('[[models]]\nid = "m"\nmax_concurrency = "auto"\n')
    with pytest.raises(ConfigError, match="fixed number"):
        load_settings(cfg, env={})
    cfg.write_text(
        '[[models]]\nid = "m"\nengine = "openai"\nupstreams = ["http://x/v1"]\nmax_concurrency = "auto"\n'
    )
    model = load_settings(cfg, env={}).models[0]
    assert model.adaptive and model.concurrency_min == 1 and create_engine(model).concurrency == 1
    cfg.write_text('[scheduling]\ncost = "time"\n')
    with pytest.raises(ConfigError, match="cost"):
        load_settings(cfg, env={})
    cfg.write_text('[tiers.batch]\nservice_tier = "bulk"\n')
    with pytest.raises(ConfigError, match="service_tier"):
        load_settings(cfg, env={})


def test_bench_adaptive_budget_settles_at_the_hidden_capacity():
    lines, ok = load_bench().budget_table(240.0)
    assert ok, lines


def test_bench_weights_hold_across_gateways_only_when_shared():
    lines, ok = load_bench().gateway_table(240.0)
    assert ok, lines
    assert "| per process | 6." in lines or "| per process | 7." in lines, lines  # what sharing fixes
