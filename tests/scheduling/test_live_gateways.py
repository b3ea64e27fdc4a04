"""Two ``aiplus serve`` gateways, one PostgreSQL and one Redis, one upstream: weights hold across gateways even
when the routing is skewed (issue 17). Org A reaches only gateway 1, org B both; weights 1:3."""

from __future__ import annotations

import asyncio
import sys
import uuid

import httpx
import pytest

from aiplus.storage.redis import create_redis
from aiplus.storage.testing import scratch_database
from tests.conftest import REDIS_URL, free_port, start_server, wait_http
from tests.engines.test_upstream import spawn
from tests.scheduling.test_live_fair_share import HERE


@pytest.fixture
def gateways(tmp_path):
    port = free_port()
    upstream = spawn([sys.executable, str(HERE / "vllm_standin.py"), str(port), "64"], tmp_path / "up.log")
    wait_http(f"http://127.0.0.1:{port}/v1/models", upstream)
    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    servers = []
    with scratch_database("postgresql", tmp_path) as (_engine, url):
        try:
            for i in (1, 2):
                servers.append(
                    start_server(
                        tmp_path,
                        f"""database_url = "{url}"
redis_url = "{REDIS_URL}"
redis_prefix = "{prefix}"
[scheduling]
queue_timeout_s = 1200
[tiers.one]
weight = 1.0
[tiers.three]
weight = 3.0
[[models]]
id = "shared"
engine = "openai"
upstreams = ["http://127.0.0.1:{port}/v1"]
max_concurrency = 2
""",
                        data_dir=tmp_path / f"data{i}",
                    )
                )
            yield servers
        finally:
            for server in servers:
                server.stop()
            upstream.kill()
            upstream.wait()

            async def clean() -> None:
                client = create_redis(REDIS_URL)
                keys = [k async for k in client.scan_iter(match=prefix + "*")]
                if keys:
                    await client.delete(*keys)
                await client.aclose()

            asyncio.run(clean())


def test_weights_hold_across_two_gateways_with_skewed_routing(gateways):
    g1, g2 = gateways
    a = g1.new_org("Org A", tier="one")
    b = g1.new_org("Org B", tier="three")
    served = {"A": 0, "B": 0}
    window: dict[str, int] = {}

    async def run() -> None:
        stop = asyncio.Event()
        body = {"model": "shared", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 5}

        async def loop(client: httpx.AsyncClient, key: str, org: str) -> None:
            while not stop.is_set():
                r = await client.post(
                    "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                )
                assert r.status_code == 200, r.text
                served[org] += 1

        async with (
            httpx.AsyncClient(base_url=g1.url, timeout=600) as c1,
            httpx.AsyncClient(base_url=g2.url, timeout=600) as c2,
        ):
            tasks = [asyncio.create_task(loop(c1, a["key"], "A")) for _ in range(4)]
            tasks += [asyncio.create_task(loop(c, b["key"], "B")) for c in (c1, c2) for _ in range(4)]
            while served["A"] < 10:  # past the start, when the counters catch up with each other
                await asyncio.sleep(0.02)
            start = dict(served)
            while served["A"] < start["A"] + 30:
                await asyncio.sleep(0.02)
            window.update({org: served[org] - start[org] for org in served})
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    ratio = window["B"] / window["A"]
    print("B/A", window)
    # each gateway on its own would give B 7 parts in 8 (ratio ~6); generous margins for a loaded machine
    assert 3 * 0.8 <= ratio <= 3 * 1.2, window
