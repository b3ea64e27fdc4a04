"""The life of a call on the live server: metering of abandoned streams and queued requests, metrics, admin-only routes."""

from __future__ import annotations

import json
import socket
import sqlite3
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, DEFAULT_MODEL, start_server

# 1 micro-unit per prompt token, 3 per completion token: every billed request costs something, exactly.
PRICES = '[[prices]]\nmodel = "*"\ninput_per_mtok = 1000000\noutput_per_mtok = 3000000\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    s = start_server(
        tmp,
        "[tiers.tiny]\nrequests_per_minute = 2\n[tiers.watched]\nrequests_per_minute = 1000\n"
        f'[[models]]\nid = "{DEFAULT_MODEL}"\nmax_concurrency = 1\n'
        '[[models]]\nid = "short-context"\ncontext_length = 2048\n' + PRICES,
    )
    yield s
    s.stop()


def metric(server, name: str, **labels: str) -> float | None:
    """One sample's value from the server's /metrics (parsed, so a ``# HELP`` line alone never counts)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def wait_metric(server, name: str, value: float, timeout: float = 30.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while (got := metric(server, name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name}{labels} is {got}, expected {value}"
        time.sleep(0.05)


def events(server, org_id: str) -> list[dict]:
    db = sqlite3.connect(server.data_dir / "aiplus.db")
    db.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in db.execute("SELECT * FROM usage_events WHERE org_id = ? ORDER BY started_at", (org_id,))
        ]
    finally:
        db.close()


def wait_events(server, org_id: str, n: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = events(server, org_id)
        if len(rows) >= n:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {n} usage events for {org_id}, found {events(server, org_id)}")


def raw_stream(server, key: str, max_tokens: int, stream: bool = True) -> socket.socket:
    """Open a chat request on a bare socket, so the test decides exactly when the client vanishes."""
    body = json.dumps(
        {
            "model": DEFAULT_MODEL,
            "stream": stream,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        }
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_client_leaving_mid_stream_is_metered_for_what_it_received(server):
    org = server.new_org("Leaving Clinic", sector="healthcare")
    other = server.new_org("Next One")
    t0 = time.perf_counter()
    sock = raw_stream(server, org["key"], max_tokens=1500)
    received = b""
    while received.count(b"data: {") < 12:  # role chunk + about 10 tokens
        received += sock.recv(65536)
    ten_tokens = time.perf_counter() - t0  # this machine's pace right now, prompt included
    sock.close()
    (event,) = wait_events(server, org["org"]["id"], 1)
    assert event["status"] == "cancelled"
    assert 10 <= event["completion_tokens"] < 60, event  # what it got, not the 1,500 it asked for
    assert event["prompt_tokens"] > 0 and event["ttft_ms"] is not None
    # the engine stopped: the next request (one slot) is served at once, not after the ~1,490 tokens left,
    # which at this pace take far over ten times as long as the prompt and the first ten tokens did
    t0 = time.perf_counter()
    r = httpx.post(
        f"{server.v1}/chat/completions",
        timeout=120,
        headers={"authorization": f"Bearer {other['key']}"},
        json={"model": DEFAULT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    )
    waited = time.perf_counter() - t0
    assert r.status_code == 200 and waited < 10 * ten_tokens, (waited, ten_tokens)


def test_client_leaving_before_a_whole_answer_stops_the_generation(server):
    org = server.new_org("Hasty Ministry", sector="public_administration")
    sock = raw_stream(server, org["key"], max_tokens=1500, stream=False)
    wait_metric(server, "aiplus_inflight_requests", 1.0, model=DEFAULT_MODEL, replica="0")  # generating
    time.sleep(1.0)
    sock.close()
    (event,) = wait_events(server, org["org"]["id"], 1)
    assert event["status"] == "cancelled"
    # at temperature 0 this story runs past 1,000 tokens: had the engine gone on, it would have reached 1,500
    # (a loaded machine may not have produced the first token yet: 0 is a fine answer too)
    assert event["completion_tokens"] < 1500, event


def test_client_leaving_while_queued_leaves_the_queue(server):
    busy = server.new_org("Busy Bank", sector="finance")
    waiting = server.new_org("Impatient Shop", sector="trade")
    hog = raw_stream(server, busy["key"], max_tokens=300)  # holds the only slot
    hog.recv(4096)
    queued = raw_stream(server, waiting["key"], max_tokens=50)
    wait_metric(server, "aiplus_queue_length", 1.0, model=DEFAULT_MODEL, tier="standard")
    queued.close()
    (event,) = wait_events(server, waiting["org"]["id"], 1)
    assert event["status"] == "cancelled" and event["completion_tokens"] == 0
    assert event["prompt_tokens"] == 0 and event["cost_micros"] == 0  # it never ran: nothing to bill
    assert metric(server, "aiplus_queue_length", model=DEFAULT_MODEL, tier="standard") == 0.0
    hog.close()
    wait_events(server, busy["org"]["id"], 1)


def test_every_answered_request_has_one_event_with_its_usage(server):
    org = server.new_org("Counting Ministry", sector="public_administration")
    headers = {"authorization": f"Bearer {org['key']}"}
    usages = []
    for _ in range(3):
        r = httpx.post(
            f"{server.v1}/chat/completions",
            headers=headers,
            timeout=60,
            json={"model": DEFAULT_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        )
        usages.append((r.headers["x-request-id"], r.json()["usage"]))
    rows = wait_events(server, org["org"]["id"], 3)
    assert {(e["request_id"], e["prompt_tokens"], e["completion_tokens"]) for e in rows} == {
        (rid, u["prompt_tokens"], u["completion_tokens"]) for rid, u in usages
    }
    for e in rows:  # PRICES: 1 micro-unit per prompt token, 3 per completion token
        assert e["status"] == "ok" and e["cost_micros"] == e["prompt_tokens"] + 3 * e["completion_tokens"] > 0


def test_rate_limit_headers_like_openai(server):
    org = server.new_org("Header Reader")
    r = httpx.post(
        f"{server.v1}/chat/completions",
        headers={"authorization": f"Bearer {org['key']}"},
        timeout=60,
        json={"model": DEFAULT_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    for name in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-request-id",
    ):
        assert name in r.headers, name


def test_metrics_count_a_request_and_show_it_in_flight(server):
    """Values, not names: one request of a tier nobody else uses moves its samples by exactly its usage."""
    org = server.new_org("Metrics Reader", tier="watched")
    watched = {"model": DEFAULT_MODEL, "tier": "watched"}
    hog = raw_stream(server, org["key"], max_tokens=1000)
    hog.recv(4096)  # generating: the only slot is taken
    wait_metric(server, "aiplus_inflight_requests", 1.0, model=DEFAULT_MODEL, replica="0")
    hog.close()
    (event,) = wait_events(server, org["org"]["id"], 1)  # the counters move just before the event is recorded
    wait_metric(server, "aiplus_inflight_requests", 0.0, model=DEFAULT_MODEL, replica="0")
    assert metric(server, "aiplus_queue_wait_seconds_count", **watched) == 1.0
    assert metric(server, "aiplus_queue_length", **watched) == 0.0
    served = {
        kind: metric(server, "aiplus_tokens_served_total", kind=kind, **watched)
        for kind in ("prompt", "completion")
    }
    assert served == {"prompt": event["prompt_tokens"], "completion": event["completion_tokens"]}, event
    assert event["completion_tokens"] > 0


def test_adoption_report_is_admin_only(server):
    org = server.new_org("Curious School")
    r = httpx.get(f"{server.url}/admin/adoption", headers={"authorization": f"Bearer {org['key']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    r = httpx.get(f"{server.url}/admin/adoption", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


def test_server_stays_responsive_while_the_model_generates(server):
    """Ten /healthz answers arrive while one long generation is still running (order, not a time bound)."""
    org = server.new_org("Long Writer")
    hog = raw_stream(server, org["key"], max_tokens=1000)
    hog.recv(4096)
    for _ in range(10):
        assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
    hog.close()
    (event,) = wait_events(server, org["org"]["id"], 1)
    assert event["status"] == "cancelled"  # it was still generating when the last /healthz answered


def test_rate_limited_org_gets_429_with_retry_after(server):
    org = server.new_org("Tiny Tier Shop", tier="tiny", sector="trade")
    body = {"model": DEFAULT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {org['key']}"}
    answers = [
        httpx.post(f"{server.v1}/chat/completions", headers=headers, json=body, timeout=60) for _ in range(3)
    ]
    assert [r.status_code for r in answers] == [200, 200, 429]
    limited = answers[-1]
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    rows = wait_events(server, org["org"]["id"], 3)
    assert sorted(e["status"] for e in rows) == ["ok", "ok", "rejected"]


def test_openapi_docs_work_offline(server):
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "cdn." not in page.text  # this machine has no internet; neither do many utility sites
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        assert httpx.get(f"{server.url}/static-offline-docs/{asset}").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/admin/orgs" in spec["paths"] and "/admin/adoption" in spec["paths"]


def test_no_max_tokens_on_a_long_prompt_still_fits_the_context(server):
    """The embedded default limit (1,024) shrinks to what the context has left instead of failing the request."""
    org = server.new_org("Long Reader")
    long = "hello world " * 800  # about 1,600 tokens: 1,024 more would not fit in 2,048
    r = httpx.post(
        f"{server.v1}/chat/completions",
        headers={"authorization": f"Bearer {org['key']}"},
        timeout=120,
        json={
            "model": "short-context",
            "messages": [{"role": "user", "content": long}],
            "temperature": 0,
            "stop": [" ", ".", "\n"],
        },
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 1500 and usage["prompt_tokens"] + usage["completion_tokens"] <= 2048
    # and the reservation was what the context had left, not 1,024 more than it holds
    assert int(r.headers["x-ratelimit-limit-tokens"]) - int(r.headers["x-ratelimit-remaining-tokens"]) <= 2048
