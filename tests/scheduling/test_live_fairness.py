"""Fair sharing in the live server: the embedded model, one request at a time, a heavy org and a light one."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, start_server


async def _run(server) -> tuple[list[float], list[float]]:
    heavy = server.new_org("Heavy Factory", sector="manufacturing")
    light = server.new_org("Village School", sector="education")
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    t0 = time.perf_counter()

    async def call(client: httpx.AsyncClient, key: str) -> float:
        r = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return time.perf_counter() - t0

    async with httpx.AsyncClient(
        base_url=server.url, timeout=300, limits=httpx.Limits(max_connections=64)
    ) as client:
        heavy_tasks = [asyncio.create_task(call(client, heavy["key"])) for _ in range(30)]
        # wait until the heavy org's backlog is queued in the server (however long a loaded machine takes)
        deadline = time.monotonic() + 120
        while not any(
            line.startswith("aiplus_queue_length") and not line.rstrip().endswith(" 0.0")
            for line in (await client.get("/metrics")).text.splitlines()
        ):
            assert time.monotonic() < deadline, "the heavy backlog never queued"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        light_done = await asyncio.gather(*(call(client, light["key"]) for _ in range(3)))
        heavy_done = await asyncio.gather(*heavy_tasks)
    return sorted(heavy_done), sorted(light_done)


@pytest.mark.parametrize("policy", ["fair", "fcfs"])
def test_light_org_is_not_starved_by_a_heavy_backlog(tmp_path, policy):
    server = start_server(
        tmp_path,
        # a loaded machine may need more than the default 120 s to drain the backlog: no queue timeouts here
        f'[scheduling]\npolicy = "{policy}"\nqueue_timeout_s = 1200\n'
        f'[[models]]\nid = "{DEFAULT_MODEL}"\nmax_concurrency = 1\n',
    )
    try:
        heavy, light = asyncio.run(_run(server))
    finally:
        server.stop()
    if policy == "fair":
        # the school's three requests are served alongside the backlog, long before it drains
        assert light[-1] < heavy[len(heavy) // 2], (light, heavy)
    else:
        # first come, first served: the school waits behind the factory's whole backlog
        assert light[0] > heavy[-3], (light, heavy)
