"""Smoke test of the overhead benchmark's own tools: the fake upstream, the load generator, the report."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import report  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream_port(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("upstream") / "fake_upstream.log"
    server = procstat.Server(
        "fake upstream", [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port)], log_path=log
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=15)
        yield port
    finally:
        server.stop()


def _post(port: int, body: dict) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def test_fake_upstream_answers_like_openai(upstream_port):
    answer = json.loads(
        _post(upstream_port, {"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
    )
    assert answer["model"] == "m1"
    assert answer["choices"][0]["message"]["content"]
    assert (
        answer["usage"]["total_tokens"]
        == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    )

    stream = _post(upstream_port, {"model": "m1", "stream": True, "stream_options": {"include_usage": True}})
    events = [line[6:] for line in stream.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    plain = _post(upstream_port, {"model": "m1", "stream": True})
    assert b'"usage"' not in plain

    with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/v1/models", timeout=5) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "fake"


@pytest.mark.parametrize("stream", [False, True])
def test_loadgen_measures_the_fake_upstream(upstream_port, stream):
    started = time.monotonic()
    result = asyncio.run(
        loadgen.run_load("127.0.0.1", upstream_port, stream=stream, concurrency=4, duration=0.3, warmup=0.1)
    )
    assert time.monotonic() - started < 60  # bounded by its duration (0.4 s), with room for a loaded machine
    assert result["errors"] == 0 and result["ok"] > 50
    assert 0 < result["latency"]["p50_ms"] <= result["latency"]["p99_ms"]
    if stream:
        assert result["no_token"] == 0
        assert 0 < result["ttft"]["p50_ms"] <= result["latency"]["p99_ms"]


def test_loadgen_is_bounded_by_count(upstream_port):
    result = asyncio.run(
        loadgen.run_load("127.0.0.1", upstream_port, concurrency=2, duration=30, warmup=0, max_requests=200)
    )
    assert 200 <= result["sent_total"] <= 202 and result["elapsed_s"] < 30  # the count ended it, not the time


def test_loadgen_refuses_non_loopback_targets():
    with pytest.raises(SystemExit):
        asyncio.run(loadgen.run_load("192.0.2.1", 80, duration=0.1, warmup=0))


def test_loadgen_cli_prints_json(upstream_port):
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--port",
            str(upstream_port),
            "--duration",
            "0.2",
            "--warmup",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout)["ok"] > 0


def test_report_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other bench\n\nkeep me\n")
    report.write_section(doc, f"{report.SECTION}\n\nfirst\n")
    report.write_section(doc, f"{report.SECTION}\n\nsecond\n")
    text = doc.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count(report.SECTION) == 1


def test_fake_upstream_counts_connections(upstream_port):
    def stats() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/bench/stats", timeout=5) as resp:
            return json.loads(resp.read())

    before = stats()
    asyncio.run(loadgen.run_load("127.0.0.1", upstream_port, concurrency=3, duration=0.2, warmup=0))
    after = stats()
    assert after["connections"] - before["connections"] == 3 + 1  # keep-alive, plus this stats call
    assert after["requests"] - before["requests"] > 3


def test_overhead_runs_end_to_end_on_direct(tmp_path):
    doc = tmp_path / "benchmarks.md"
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "overhead.py"),
            "--targets",
            "direct",
            "--modes",
            "json,paced",
            "--concurrency",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--write",
            "--doc",
            str(doc),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "| json | 2 | direct |" in out.stdout and "| paced | 2 | direct |" in out.stdout
    assert report.SECTION in doc.read_text()
