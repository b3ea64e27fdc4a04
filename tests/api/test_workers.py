"""``aiplus serve --workers 2``: one port, two processes, and limits that hold across them through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS_URL, free_port, start_server, wait_http

THINK_UPSTREAM = Path(__file__).resolve().parents[1] / "engines" / "think_upstream.py"


@pytest.fixture
def upstream(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(THINK_UPSTREAM), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
    yield f"http://127.0.0.1:{port}/v1"
    proc.kill()
    proc.wait()


def test_two_workers_share_one_global_request_limit(tmp_path, upstream):
    prefix = f"aiplus-test-workers-{os.getpid()}:"
    server = start_server(
        tmp_path,
        f'redis_url = "{REDIS_URL}"\n[tiers.small]\nrequests_per_minute = 10\n'
        f'[[models]]\nid = "r1"\nengine = "openai"\nupstreams = ["{upstream}"]\nmax_concurrency = 8\n',
        env={"AIPLUS_REDIS_PREFIX": prefix},
        args=("--workers", "2"),
    )
    try:
        org = server.new_org("Shared Limit Co", tier="small", sector="trade")
        body = {"model": "r1", "messages": [{"role": "user", "content": "hi"}]}

        def one(_: int) -> int:
            # a new connection each time, so the kernel spreads requests over both workers
            r = httpx.post(
                f"{server.v1}/chat/completions",
                json=body,
                timeout=30,
                headers={"authorization": f"Bearer {org['key']}", "connection": "close"},
            )
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(24)))
        admitted = statuses.count(200)
        # one bucket of 10 for both workers (per-worker buckets would admit 20); a slow run may refill one more
        assert 10 <= admitted <= 11, statuses
        assert statuses.count(429) == 24 - admitted
        pids = {
            line.split("[")[1].rstrip("]")
            for line in server.log.read_text().splitlines()
            if line.startswith("INFO:     Started server process")
        }
        assert len(pids) == 2
    finally:
        server.stop()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
