"""The simulator (same FairQueue, virtual clock), the simulated engine, and the fairness benchmark."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aiplus.config import ModelConfig
from aiplus.engines import create_engine
from aiplus.engines.base import GenerationRequest
from aiplus.engines.simulated import BatchModel, SimulatedEngine, StepCost
from aiplus.scheduling.clock import VirtualClock
from aiplus.scheduling.simulation import SimRequest, simulate

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "data" / "lmsys_trace_from_vtc_artifact.csv"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_fairness", ROOT / "bench" / "fairness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_virtual_clock_moves_only_forward():
    clock = VirtualClock()
    assert clock.advance(1.5) == 1.5
    assert clock.advance_to(1.0) == 1.5
    assert clock.advance_to(4.0) == 4.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_batch_model_steps_cost_and_frees_memory():
    model = BatchModel(kv_tokens=100, cost=StepCost(0.01, 0.001, 0.0001))
    model.admit("x", 20, 2)
    model.admit("y", 30, 1)
    assert model.used_tokens == 53 and not model.fits(40, 10)
    seconds, produced, finished = model.step()
    assert seconds == pytest.approx(0.01 + 0.002 + 0.005)
    assert produced == ["x", "y"] and finished == ["y"]
    assert model.used_tokens == 22
    seconds, produced, finished = model.step()
    assert seconds == pytest.approx(0.011) and finished == ["x"] and len(model) == 0


def test_simulation_is_deterministic_and_work_conserving():
    reqs = [SimRequest(i * 0.05, "AB"[i % 2], 100, 50) for i in range(200)]
    one, two = simulate(reqs, horizon=30.0), simulate(reqs, horizon=30.0)
    assert one.tokens == two.tokens and np.array_equal(one.first_token, two.first_token, equal_nan=True)
    assert one.busy_s > 0.95 * 10  # the engine keeps stepping while the backlog lasts


@pytest.mark.skipif(not TRACE.exists(), reason="LMSYS trace not present")
def test_lmsys_trace_reproduces_the_papers_picture():
    bench = load_bench()
    reqs = bench.load_trace(TRACE)
    fcfs, fair = simulate(reqs, policy="fcfs"), simulate(reqs, policy="fair")
    assert 740 <= fcfs.throughput <= 820  # paper: 777 tok/s (Llama-2-7B, A10G)
    assert fair.throughput >= 0.99 * fcfs.throughput
    light_fcfs = np.percentile(fcfs.ttft(fcfs.lighter_half()), 50)
    light_fair = np.percentile(fair.ttft(fair.lighter_half()), 50)
    assert light_fcfs >= 15.0  # paper: 37 s
    assert light_fair <= 1.0  # paper: 0.96 s
    assert fair.max_service_difference() <= fair.bound() < fcfs.max_service_difference()


@pytest.mark.skipif(not TRACE.exists(), reason="LMSYS trace not present")
def test_fairness_bench_quick_run_meets_its_targets():
    bench = load_bench()
    rows = []
    results = {}
    for workload in bench.workloads(duration=240.0):
        results[workload.name] = {
            label: bench.run(workload, policy, cost=cost) for label, policy, cost in bench.POLICIES
        }
        rows += bench.evaluate(workload, results[workload.name])
    failures = {r.workload: r.failures for r in rows if r.policy == "fair/engine" and r.failures}
    assert failures == {}
    # the gap the engine cost closes: price-list tokens serve fewer cheap prompt tokens than FCFS
    mix = results["short vs long prompts"]
    assert mix["fair/tokens"].throughput < 0.9 * mix["fcfs"].throughput
    assert mix["fair/engine"].throughput >= mix["fcfs"].throughput
    assert "| LMSYS trace" in bench.table(rows)
    lines, ok = bench.bands_table(240.0)
    assert ok, lines


def test_simulated_engine_streams_with_real_sleeps_and_stops_on_close():
    config = ModelConfig(id="sim", engine="simulated", max_concurrency=4)

    async def main() -> None:
        engine = create_engine(config)
        assert isinstance(engine, SimulatedEngine)
        engine.model.cost = StepCost(0.002, 0.0, 0.0)
        request = GenerationRequest(
            "r1", "sim", "chat", messages=[{"role": "user", "content": "hi " * 40}], max_tokens=5
        )
        assert await engine.count_prompt_tokens(request) == 30
        started = time.perf_counter()
        deltas = [d async for d in engine.generate(request)]
        assert time.perf_counter() - started >= 5 * 0.002
        assert sum(d.tokens for d in deltas) == 5 and deltas[-1].finish_reason == "length"
        assert deltas[-1].completion_tokens == 5 and deltas[-1].prompt_tokens == 30

        long = GenerationRequest("r2", "sim", "completion", prompt="x", max_tokens=10_000)
        stream = engine.generate(long)
        await stream.__anext__()
        assert len(engine.model) == 1
        await stream.aclose()  # the client went away: the engine drops the sequence
        assert len(engine.model) == 0 and engine.model.used_tokens == 0
        await engine.close()

    asyncio.run(main())
