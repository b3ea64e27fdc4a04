"""The asyncio Dispatcher with real tasks on a real event loop."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from prometheus_client import REGISTRY

from aiplus.scheduling.dispatcher import Dispatcher, QueueTimeout

_models = itertools.count()


def model_id() -> str:
    """A fresh model label per test: the Prometheus collectors are process-wide."""
    return f"test-model-{next(_models)}"


async def client(
    dispatcher: Dispatcher,
    org: str,
    finished: list[str],
    hold_s: float = 0.005,
    output: int = 20,
    weight: float = 1.0,
) -> None:
    lease = await dispatcher.acquire(org, weight, 50, output)
    try:
        for _ in range(4):
            await asyncio.sleep(hold_s / 4)
            lease.output(output // 4)
    finally:
        lease.release()
    finished.append(org)


async def heavy_then_light(policy: str) -> list[str]:
    """Org A sends 30 requests at once, then org B sends 3 (the issue's live test, with fake work)."""
    dispatcher = Dispatcher(model_id(), 1, policy=policy)
    finished: list[str] = []
    tasks = [asyncio.create_task(client(dispatcher, "A", finished)) for _ in range(30)]
    await asyncio.sleep(0.002)
    tasks += [asyncio.create_task(client(dispatcher, "B", finished)) for _ in range(3)]
    await asyncio.gather(*tasks)
    assert dispatcher.snapshot()["in_flight"] == 0
    return finished


def test_fair_lets_the_light_org_through_a_heavy_backlog():
    finished = asyncio.run(heavy_then_light("fair"))
    last_b = max(i for i, org in enumerate(finished) if org == "B")
    assert last_b < 10, finished


def test_fcfs_serves_the_light_org_after_the_backlog():
    finished = asyncio.run(heavy_then_light("fcfs"))
    first_b = min(i for i, org in enumerate(finished) if org == "B")
    assert first_b >= 25, finished


def test_weighted_orgs_share_a_contended_dispatcher_in_proportion():
    async def main() -> dict[str, int]:
        dispatcher = Dispatcher(model_id(), 2)
        finished: list[str] = []
        tasks = []
        for org, weight in (("w1", 1.0), ("w3", 3.0)):
            tasks += [
                asyncio.create_task(client(dispatcher, org, finished, hold_s=0.001, weight=weight))
                for _ in range(60)
            ]
        await asyncio.gather(*tasks)
        first = finished[:40]
        return {org: first.count(org) for org in ("w1", "w3")}

    counts = asyncio.run(main())
    assert 8 <= counts["w1"] <= 12 and 28 <= counts["w3"] <= 32, counts


def test_queue_timeout_raises_with_retry_after_and_leaves_the_queue():
    async def main() -> None:
        dispatcher = Dispatcher(model_id(), 1, queue_timeout_s=0.05)
        lease = await dispatcher.acquire("A", 1.0, 10, 10)
        with pytest.raises(QueueTimeout) as caught:
            await dispatcher.acquire("B", 1.0, 10, 10)
        assert isinstance(caught.value.retry_after, int) and caught.value.retry_after >= 1
        snap = dispatcher.snapshot()
        assert snap["queued"] == 0 and snap["timeouts"] == 1 and snap["in_flight"] == 1
        lease.release()
        again = await dispatcher.acquire("B", 1.0, 10, 10)
        again.release()

    asyncio.run(main())


def test_cancelled_waiter_leaves_the_queue_and_the_next_one_runs():
    async def main() -> None:
        dispatcher = Dispatcher(model_id(), 1)
        lease = await dispatcher.acquire("A", 1.0, 10, 10)
        gone = asyncio.create_task(dispatcher.acquire("B", 1.0, 10, 10))
        stays = asyncio.create_task(dispatcher.acquire("C", 1.0, 10, 10))
        await asyncio.sleep(0.01)
        assert dispatcher.snapshot()["queued"] == 2
        gone.cancel()  # the client disconnected while queued
        with pytest.raises(asyncio.CancelledError):
            await gone
        snap = dispatcher.snapshot()
        assert snap["queued_by_org"] == {"C": 1} and snap["cancelled"] == 1
        lease.release()
        next_lease = await asyncio.wait_for(stays, 1.0)
        assert next_lease.org_id == "C" and next_lease.waited_s > 0
        next_lease.release()
        assert dispatcher.snapshot()["in_flight"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("cancel_first", [False, True])
def test_waiter_cancelled_just_as_it_is_dispatched_gives_the_slot_back(cancel_first: bool):
    async def main() -> None:
        dispatcher = Dispatcher(model_id(), 1)
        lease = await dispatcher.acquire("A", 1.0, 10, 10)
        waiter = asyncio.create_task(dispatcher.acquire("B", 1.0, 10, 10))
        await asyncio.sleep(0.01)
        # either order leaves the waiting task no chance to run in between
        if cancel_first:
            waiter.cancel()
            lease.release()
        else:
            lease.release()
            waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert dispatcher.snapshot()["in_flight"] == 0
        third = await asyncio.wait_for(dispatcher.acquire("C", 1.0, 10, 10), 1.0)
        third.release()

    asyncio.run(main())


def test_release_is_idempotent_and_lease_works_as_a_context_manager():
    async def main() -> None:
        dispatcher = Dispatcher(model_id(), 1)
        with await dispatcher.acquire("A", 1.0, 10, 10) as lease:
            lease.output(5)
            lease.adjust_prompt(12)
        lease.release()
        snap = dispatcher.snapshot()
        assert snap["in_flight"] == 0 and snap["inflight_tokens"] == 0
        assert snap["counters"]["A"] == pytest.approx(12 + 2 * 5)

    asyncio.run(main())


def test_metrics_track_queue_length_and_waiting_time_per_tier():
    async def main() -> str:
        model = model_id()
        dispatcher = Dispatcher(model, 1)
        lease = await dispatcher.acquire("A", 1.0, 10, 10, tier="standard")
        waiters = [
            asyncio.create_task(dispatcher.acquire("B", 2.0, 10, 10, tier="lifeline")) for _ in range(3)
        ]
        await asyncio.sleep(0.01)
        assert REGISTRY.get_sample_value("aiplus_queue_length", {"model": model, "tier": "lifeline"}) == 3
        lease.release()
        for task in waiters:
            (await task).release()
        return model

    model = asyncio.run(main())
    assert REGISTRY.get_sample_value("aiplus_queue_length", {"model": model, "tier": "lifeline"}) == 0
    count = REGISTRY.get_sample_value("aiplus_queue_wait_seconds_count", {"model": model, "tier": "lifeline"})
    assert count == 3
    waited = REGISTRY.get_sample_value("aiplus_queue_wait_seconds_sum", {"model": model, "tier": "lifeline"})
    assert waited > 0


def test_resize_dispatches_waiters_when_capacity_grows():
    async def main() -> None:
        dispatcher = Dispatcher(model_id(), 1)
        first = await dispatcher.acquire("A", 1.0, 10, 10)
        waiters = [asyncio.create_task(dispatcher.acquire("B", 1.0, 10, 10)) for _ in range(2)]
        await asyncio.sleep(0.01)
        dispatcher.resize(3)
        leases = await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
        assert dispatcher.snapshot()["in_flight"] == 3
        for lease in [first, *leases]:
            lease.release()

    asyncio.run(main())


def test_acquire_nowait_serves_only_when_nobody_waits():
    async def scenario() -> None:
        d = Dispatcher(model_id(), 1)
        first = d.acquire_nowait("a", 1.0, 10, 10)
        assert first is not None
        assert d.acquire_nowait("b", 1.0, 10, 10) is None  # the budget is full
        waiter = asyncio.create_task(d.acquire("b", 1.0, 10, 10))
        await asyncio.sleep(0)
        first.release()  # hands the slot to the waiter, not to a newcomer
        assert d.acquire_nowait("c", 1.0, 10, 10) is None
        second = await waiter
        assert second.org_id == "b"
        second.release()
        third = d.acquire_nowait("c", 1.0, 10, 10)
        assert third is not None and d.queue.in_flight == 1
        third.release()
        assert d.queue.in_flight == 0 and d.queue.queued == 0

    asyncio.run(scenario())


def test_the_cost_model_fits_the_engines_own_time_when_the_engine_reports_it():
    """A lease's engine_s (the embedded engine's share of its decode steps) is what the fit learns from, not the
    time the lease was held: here each output token takes 10 ms of engine time by the engine's report, while
    the leases are held a few milliseconds."""
    from aiplus.scheduling.cost import CostModel

    async def run() -> CostModel:
        cost = CostModel(alpha=0.0001, beta=0.001, smooth=1.0)
        dispatcher = Dispatcher(model_id(), 1, cost=cost)
        for prompt, output in [(10, 5), (200, 40), (50, 20), (400, 10), (30, 60)] * 4:
            lease = await dispatcher.acquire("a", 1.0, prompt, output)
            lease.output(output)
            lease.engine_report(None, 0.0002 * prompt + 0.01 * output)
            lease.release()
        return cost

    cost = asyncio.run(run())
    assert cost.beta == pytest.approx(0.01, rel=0.05)
    assert cost.alpha == pytest.approx(0.0002, rel=0.25)
