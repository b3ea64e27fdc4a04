"""Redis unreachable (its packets dropped): a circuit breaker makes the partition cost one timeout, not one per
request; requests keep being served on the documented fallback (per-process limits, revocations by polling), and
the shared state is used again by itself once Redis is back."""

import time
import uuid
from datetime import UTC, datetime

import httpx
import redis

from aiplus.storage.redis import BREAKER_PERIOD_S, TIMEOUT_S
from tests.conftest import start_server
from tests.tcp_proxy import TcpProxy

CONFIG = '[[models]]\nid = "sim"\nengine = "simulated"\nmax_concurrency = 16\n'


def test_a_redis_partition_costs_one_timeout_and_heals(tmp_path):
    proxy = TcpProxy(6379)
    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    env = {"AIPLUS_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "AIPLUS_REDIS_PREFIX": prefix}
    server = start_server(tmp_path, CONFIG, env=env)
    direct = redis.Redis(host="127.0.0.1", port=6379)
    try:
        org = server.new_org("Partitioned Farm", sector="agriculture")
        auth = {"authorization": f"Bearer {org['key']}"}
        chat = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        used_key = f"{prefix}rl:used:{org['org']['id']}:{datetime.now(UTC):%Y-%m}"

        def ask() -> float:
            began = time.monotonic()
            r = httpx.post(f"{server.v1}/chat/completions", headers=auth, json=chat, timeout=60)
            assert r.status_code == 200, r.text
            return time.monotonic() - began

        ask()
        assert direct.exists(used_key)  # the shared state is in use

        proxy.blackhole()
        took = []
        began = time.monotonic()
        while time.monotonic() - began < 2.5 * BREAKER_PERIOD_S:  # spans several breaker periods
            took.append(ask())
        slow = [t for t in took if t > TIMEOUT_S * 0.75]
        assert len(took) > 10 and len(slow) <= 1, (
            took
        )  # one timeout in all, not one per request or per period

        before = int(direct.get(used_key) or 0)
        proxy.restore()
        deadline = time.monotonic() + 6 * BREAKER_PERIOD_S
        while time.monotonic() < deadline and int(direct.get(used_key) or 0) == before:
            ask()
            time.sleep(0.2)
        assert int(direct.get(used_key) or 0) > before  # back on the shared state, by itself
    finally:
        proxy.restore()
        server.stop()
        proxy.close()
        for key in direct.scan_iter(f"{prefix}*"):
            direct.delete(key)
        direct.close()
