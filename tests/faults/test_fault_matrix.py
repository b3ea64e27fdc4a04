"""The fault matrix, bounded: a real aiplus on PostgreSQL in front of the switchable upstream, under concurrent
clients (streamed and not), through each upstream fault in turn. For each fault it asserts what clients see, that
the server answers 200 again by itself once the fault is gone (no restart), and — over the whole run — that every
200 has exactly one ledger row with status ok and no request has two. ``make test`` sends a few requests per fault;
``make soak`` (AIPLUS_SOAK_REQUESTS) many more. Prints the figures docs/reliability.md quotes."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from aiplus.storage.testing import scratch_database
from tests.conftest import ADMIN_TOKEN, start_server
from tests.tcp_proxy import TcpProxy

REQUESTS = int(os.environ.get("AIPLUS_SOAK_REQUESTS", "12"))  # per fault
CLIENTS = 4
MODEL = "up"
RECOVERY_S = 20.0  # generous: the replica's health check runs every second
# fault -> the statuses a client may see while it lasts (streams: 200 then an error event for "cut")
EXPECTED = {
    "ok": {200},
    "429": {429},
    "500": {503},
    "401": {502},
    "reset": {503},
    "cut": {200, 503},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("matrix")
    with scratch_database("postgresql", tmp) as (engine, url):
        config = (
            f'database_url = "{url}"\n'
            "[tiers.soak]\nweight = 1.0\n"
            f'[[models]]\nid = "{MODEL}"\nengine = "openai"\nupstreams = ["{upstream.url}/v1"]\n'
            "embeddings = false\nhealth_interval_s = 1.0\nmax_concurrency = 8\n"
        )
        server = start_server(tmp, config)
        key = server.new_org("Soak Co", tier="soak")["key"]
        yield server, key, engine
        server.stop()


def one(client: httpx.Client, i: int) -> tuple[int, str | None, bool]:
    """(status, request id, whole): ``whole`` is whether a 200 was a complete answer (a stream ended in [DONE]
    without an error event)."""
    stream = i % 2 == 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "stream": stream}
    try:
        r = client.post("/chat/completions", json=body)
    except httpx.HTTPError:
        return 0, None, False
    whole = r.status_code == 200 and (
        not stream or (r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text)
    )
    return r.status_code, r.headers.get("x-request-id"), whole


def burst(server, key: str, n: int) -> list[tuple[int, str | None, bool]]:
    with httpx.Client(base_url=server.v1, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(lambda i: one(client, i), range(n)))


def recover(server, key: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_S:
        if burst(server, key, 1)[0][0] == 200:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"no 200 within {RECOVERY_S} s of the fault's end")


def test_upstream_faults_lose_no_ledger_row_and_recover(stack, upstream):
    server, key, engine = stack
    answers: list[tuple[int, str | None, bool]] = []
    figures = []
    for fault, allowed in EXPECTED.items():
        upstream.fault(fault, retry_after="2" if fault == "429" else None)
        got = burst(server, key, REQUESTS)
        upstream.fault("ok")
        statuses = Counter(status for status, _, _ in got)
        assert set(statuses) <= allowed, (fault, statuses)
        assert all(rid for _, rid, _ in got), "an answer without x-request-id"
        took = recover(server, key)
        figures.append(f"{fault}: {dict(statuses)}, recovered in {took:.1f} s")
        answers += got
    whole = {rid for status, rid, complete in answers if complete}
    assert whole, "no request was answered at all"
    deadline = time.monotonic() + 15
    while True:  # the ledger writes in batches, off the request path
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, status FROM usage_events")).all()
        per_id = Counter(rid for rid, _ in rows)
        ok = {rid for rid, status in rows if status == "ok"}
        if whole <= ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert whole <= ok, f"{len(whole - ok)} answered requests have no ok row"
    assert max(per_id.values()) == 1, "a request has two ledger rows"
    answered = {rid for status, rid, _ in answers if status == 200}
    assert all(per_id[rid] == 1 for rid in answered), "a 200 without exactly one ledger row"
    print(f"\nfault matrix: {len(answers)} requests, {len(whole)} whole answers, each with one ledger row")
    print("\n".join(figures))


# fault -> what a client with a known key may see while PostgreSQL, Redis or the upstream is dropped or reset
# behind a TCP proxy: served (a known key is cached, usage waits in the journal) or a fast 503 with Retry-After;
# an upstream that swallows packets is a 504 after first_byte_timeout_s
NETWORK = {
    ("postgresql", "drop"): {200, 503},
    ("postgresql", "reset"): {200, 503},
    ("redis", "drop"): {200, 503},
    ("redis", "reset"): {200, 503},
    ("upstream", "drop"): {503, 504},
    ("upstream", "reset"): {503},
}
STORE_RECOVERY_S = (
    90.0  # a replica that stalled is benched 30 s; a dropped database needs its timeouts to pass
)


@pytest.fixture(scope="module")
def network(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("network")
    with scratch_database("postgresql", tmp) as (engine, url):
        pg_port = engine.url.port or 5432
        proxies = {
            "postgresql": TcpProxy(pg_port),
            "redis": TcpProxy(6379),
            "upstream": TcpProxy(int(upstream.url.rsplit(":", 1)[1])),
        }
        config = (
            "[tiers.soak]\nweight = 1.0\n"
            f'[[models]]\nid = "{MODEL}"\nengine = "openai"\n'
            f'upstreams = ["http://127.0.0.1:{proxies["upstream"].port}/v1"]\n'
            "embeddings = false\nhealth_interval_s = 1.0\nmax_concurrency = 8\n"
            "first_byte_timeout_s = 2.0\nrequest_timeout_s = 10.0\n"
        )
        env = {
            "AIPLUS_DATABASE_URL": url.replace(f":{pg_port}/", f":{proxies['postgresql'].port}/"),
            "AIPLUS_REDIS_URL": f"redis://127.0.0.1:{proxies['redis'].port}/0",
            "AIPLUS_REDIS_PREFIX": f"aiplus-test:{uuid.uuid4().hex[:12]}:",
        }
        server = start_server(tmp, config, env=env)
        key = server.new_org("Network Co", tier="soak")["key"]
        try:
            yield server, key, engine, proxies
        finally:
            for proxy in proxies.values():
                proxy.restore()
            server.stop()
            for proxy in proxies.values():
                proxy.close()


def admin_read(server) -> int:
    try:
        r = httpx.get(
            f"{server.url}/admin/orgs", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
    except httpx.HTTPError:
        return 0
    assert r.status_code != 503 or r.headers["retry-after"].isdigit()
    return r.status_code


def back_to_normal(server, key: str) -> float:
    """Seconds until a chat is served and an admin read (which needs the database) answers."""
    started = time.monotonic()
    while time.monotonic() - started < STORE_RECOVERY_S:
        if burst(server, key, 1)[0][0] == 200 and admin_read(server) == 200:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"not back to normal within {STORE_RECOVERY_S} s of the fault's end")


def test_network_faults_lose_no_ledger_row_and_recover(network):
    server, key, engine, proxies = network
    assert burst(server, key, 2)[0][0] == 200
    answers: list[tuple[int, str | None, bool]] = []
    figures = []
    for (target, fault), allowed in NETWORK.items():
        proxy = proxies[target]
        proxy.blackhole() if fault == "drop" else proxy.reset()
        started = time.monotonic()
        got = burst(server, key, REQUESTS)  # a hang shows as status 0 (the client's 30 s timeout)
        took = time.monotonic() - started
        read = admin_read(server)  # needs the database: served, or a 503 within seconds
        proxy.restore()
        statuses = Counter(status for status, _, _ in got)
        assert set(statuses) <= allowed, (target, fault, statuses)
        assert read in (200, 503), (target, fault, read)
        recovered = back_to_normal(server, key)
        figures.append(
            f"{target} {fault}: {dict(statuses)} in {took:.1f} s, admin read {read}, "
            f"back to normal in {recovered:.1f} s"
        )
        answers += got
    whole = {rid for status, rid, complete in answers if complete}
    answered = {rid for status, rid, _ in answers if status == 200}
    deadline = time.monotonic() + 60
    while True:  # usage journaled while the database was away is written once it is back
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, status FROM usage_events")).all()
        per_id = Counter(rid for rid, _ in rows)
        ok = {rid for rid, status in rows if status == "ok"}
        if whole <= ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert whole <= ok, f"{len(whole - ok)} answered requests have no ok row"
    assert all(per_id[rid] == 1 for rid in answered), "a 200 without exactly one ledger row"
    assert max(per_id.values()) == 1, "a request has two ledger rows"
    print(f"\nnetwork faults: {len(answers)} requests, {len(whole)} whole answers, each with one ledger row")
    print("\n".join(figures))
