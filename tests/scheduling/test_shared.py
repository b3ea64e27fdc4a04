"""Cross-gateway fair share through the real Redis: two Dispatchers as two gateways (issue 17)."""

from __future__ import annotations

import asyncio

import pytest

from aiplus.scheduling.dispatcher import Dispatcher
from aiplus.scheduling.shared import SharedFairShare


async def _gateway(redis, prefix: str, name: str, capacity: int = 2) -> Dispatcher:
    dispatcher = Dispatcher("m", capacity, queue_timeout_s=600)
    share = SharedFairShare(dispatcher, redis, prefix, process=name)
    dispatcher.shared = share
    share.start()
    return dispatcher


async def _client(dispatcher: Dispatcher, org: str, weight: float, served: dict, stop: asyncio.Event) -> None:
    while not stop.is_set():
        lease = await dispatcher.acquire(org, weight, 10, 10)
        await asyncio.sleep(0.005)
        lease.output(10)
        lease.release()
        served[org] = served.get(org, 0) + 1


@pytest.mark.anyio
async def test_weights_hold_across_two_gateways_with_skewed_routing(redis_prefix):
    """Org A (weight 1) only through gateway 1, org B (weight 3) through both: a 2-slot budget shared 1:3."""
    redis, prefix = redis_prefix
    g1, g2 = await _gateway(redis, prefix, "g1"), await _gateway(redis, prefix, "g2")
    served: dict[str, int] = {}
    stop = asyncio.Event()
    clients = [asyncio.create_task(_client(g1, "A", 1.0, served, stop)) for _ in range(4)]
    clients += [asyncio.create_task(_client(g, "B", 3.0, served, stop)) for g in (g1, g2) for _ in range(4)]
    while served.get("A", 0) < 40:
        await asyncio.sleep(0.05)
        assert g1.queue.in_flight + g2.queue.in_flight <= 2  # one budget for the deployment
    stop.set()
    await asyncio.gather(*clients)
    ratio = served["B"] / served["A"]
    assert 3 * 0.85 <= ratio <= 3 * 1.15, served  # per process, B would get 7 parts in 8 (ratio 7)
    for g in (g1, g2):
        await g.shared.close()


@pytest.mark.anyio
async def test_a_dead_gateways_slots_come_back_after_its_lease(redis_prefix, monkeypatch):
    import aiplus.scheduling.shared as shared

    monkeypatch.setattr(shared, "LEASE_S", 0.5)
    redis, prefix = redis_prefix
    g1, g2 = await _gateway(redis, prefix, "g1", capacity=1), await _gateway(redis, prefix, "g2", capacity=1)
    held = await g1.acquire("A", 1.0, 10, 10)
    await g1.shared.close()  # the process dies holding its slot: no release, no heartbeat
    del held
    lease = await asyncio.wait_for(g2.acquire("B", 1.0, 10, 10), 30)  # granted once g1's lease expired
    lease.release()
    await g2.shared.close()
