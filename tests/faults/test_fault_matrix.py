"""The fault matrix, bounded: a real aiplus on PostgreSQL in front of the switchable upstream, under concurrent
clients (streamed and not), through each upstream fault in turn. For each fault it asserts what clients see, that
the server answers 200 again by itself once the fault is gone (no restart), and — over the whole run — that every
200 has exactly one ledger row with status ok and no request has two. ``make test`` sends a few requests per fault;
``make soak`` (AIPLUS_SOAK_REQUESTS) many more. Prints the figures docs/reliability.md quotes."""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from aiplus.storage.testing import scratch_database
from tests.conftest import start_server

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
