"""Every wait on an upstream has a deadline: a stalled replica costs at most the model's first-byte (or idle)
timeout, answers 504, is marked down, and another replica takes the request when nothing was sent yet."""

import time

import httpx
import pytest

from tests.conftest import start_server
from tests.metering.test_upstream_usage import fake_upstream

DEADLINE = 1.5
MARGIN = 8.0  # generous: the point is seconds instead of the ten minutes a stall used to cost


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deadlines")
    with (
        fake_upstream(tmp, "first") as silent,
        fake_upstream(tmp, "idle") as stops,
        fake_upstream(tmp) as good,
    ):
        # request_timeout_s (the read timeout of old) stays at its default where streams are tested
        deadlines = f"first_byte_timeout_s = {DEADLINE}\nidle_timeout_s = {DEADLINE}"
        server = start_server(
            tmp,
            f"""
[[models]]
id = "silent"
engine = "openai"
upstreams = ["{silent}"]
{deadlines}
request_timeout_s = {DEADLINE}

[[models]]
id = "stops"
engine = "openai"
upstreams = ["{stops}"]
{deadlines}

[[models]]
id = "pair"
engine = "openai"
upstreams = ["{silent}", "{good}"]
max_concurrency = 4
{deadlines}
""",
        )
        org = server.new_org("Patient Clinic", sector="healthcare")
        yield server, org["key"], {"silent": silent, "good": good}
        server.stop()


def post(server, key: str, model: str, stream: bool) -> tuple[httpx.Response, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "stream": stream,
    }
    began = time.monotonic()
    r = httpx.post(
        f"{server.v1}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=120
    )
    return r, time.monotonic() - began


def served(url: str) -> int:
    return httpx.get(url.removesuffix("/v1") + "/served").json()["requests"]


def test_a_silent_upstream_is_a_504_within_the_deadline(gateway):
    server, key, _ = gateway
    for stream in (True, False):
        r, took = post(server, key, "silent", stream)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert DEADLINE <= took < DEADLINE + MARGIN
    assert httpx.get(f"{server.url}/healthz").json()["models"]["silent"] == "unavailable"  # marked down


def test_a_stream_that_goes_silent_ends_with_an_error_event(gateway):
    server, key, _ = gateway
    r, took = post(server, key, "stops", True)
    assert r.status_code == 200  # two chunks had gone out: the status was sent
    assert "answer " in r.text and "upstream_timeout" in r.text and r.text.endswith("data: [DONE]\n\n")
    assert DEADLINE <= took < DEADLINE + MARGIN


def test_another_replica_answers_when_one_is_silent(gateway):
    server, key, fakes = gateway
    silent_before, good_before = served(fakes["silent"]), served(fakes["good"])
    r, took = post(server, key, "pair", True)
    assert r.status_code == 200 and "four" in r.text and "error" not in r.text
    assert took >= DEADLINE  # it waited on the silent replica first
    assert served(fakes["silent"]) == silent_before + 1 and served(fakes["good"]) == good_before + 1
    for _ in range(3):  # the silent one is marked down now: the next requests go straight to the good one
        r, took = post(server, key, "pair", True)
        assert r.status_code == 200 and "error" not in r.text
    assert served(fakes["silent"]) == silent_before + 1 and served(fakes["good"]) == good_before + 4
