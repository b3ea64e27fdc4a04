"""Upstream HTTP clients side by side: httpx vs aiohttp against the fake upstream, CPU per request.

This is the measurement behind aiplus's choice of aiohttp for upstream engines (docs/benchmarks.md, "Gateway
overhead"). Usage: python bench/http_clients.py [--requests 4000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import orjson
import uvloop

HERE = Path(__file__).parent
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json"}


async def with_httpx(url: str):
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    async def one() -> None:
        r = await client.send(client.build_request("POST", url, content=BODY, headers=HEADERS), stream=True)
        await r.aread()
        await r.aclose()

    return client.aclose, one


async def with_aiohttp(url: str):
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def one() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            await r.read()

    return session.close, one


async def measure(make, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    close, one = await make(url)
    for _ in range(200):
        await one()
    started, cpu = time.perf_counter(), time.process_time()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    await close()
    return requests / elapsed, used / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(upstream.stdout.readline().split()[-1])  # "READY <port>"
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(f"{'client':<10}{'requests/s':>12}{'CPU µs / request':>20}")
        for name, make in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
            rate, cpu = uvloop.run(measure(make, url, args.requests, args.concurrency))
            print(f"{name:<10}{rate:>12.0f}{cpu:>20.0f}")
    finally:
        upstream.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
