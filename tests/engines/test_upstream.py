"""The upstream engine against real OpenAI-compatible servers: llama-cpp-python's own server (two replicas of the
same GGUF, one killed under load) and a stand-in for a remote DeepSeek-R1 server that emits <think> text."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from aiplus.engines.llamacpp import default_model_path
from tests.conftest import free_port, start_server, wait_http

HERE = Path(__file__).parent


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    procs = []
    for i in range(2):
        port = free_port()
        proc = spawn(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(default_model_path()),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
                # by default it cuts a running stream short whenever another request (a health check) arrives
                "--interrupt_requests",
                "false",
            ],
            tmp / f"replica{i}.log",
        )
        procs.append((proc, f"http://127.0.0.1:{port}/v1"))
    for proc, url in procs:
        wait_http(f"{url}/models", proc)
    yield procs
    for proc, _ in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, replicas):
    tmp = tmp_path_factory.mktemp("gateway")
    urls = ", ".join(f'"{url}"' for _, url in replicas)
    server = start_server(
        tmp,
        f"""
[[models]]
id = "smol-upstream"
engine = "openai"
upstreams = [{urls}]
max_concurrency = 4
health_interval_s = 0.5
""",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway):
    org = gateway.new_org("Upstream Bank", sector="finance")
    return openai.OpenAI(base_url=gateway.v1, api_key=org["key"], max_retries=0, timeout=120)


def test_chat_through_upstream(client):
    r = client.chat.completions.create(
        model="smol-upstream", messages=[{"role": "user", "content": "Say hi."}], max_tokens=12, temperature=0
    )
    assert r.model == "smol-upstream"
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12


def test_stream_through_upstream_is_chunked(client):
    chunks = list(
        client.chat.completions.create(
            model="smol-upstream",
            messages=[{"role": "user", "content": "Count to ten."}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 5  # relayed piece by piece, not one buffered blob
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_through_upstream(client):
    r = client.completions.create(
        model="smol-upstream", prompt="Once upon a time", max_tokens=6, temperature=0
    )
    assert r.choices[0].text and r.usage.completion_tokens <= 6


def test_a_killed_replica_does_not_fail_requests(client, replicas):
    """Kill one replica while requests run on both; every request still succeeds."""
    victim, _ = replicas[0]
    errors: list[BaseException] = []
    done: list[int] = []
    killed = threading.Event()
    after_kill: list[int] = []

    def one(i: int) -> None:
        try:
            r = client.chat.completions.create(
                model="smol-upstream",
                max_tokens=16,
                temperature=0,
                messages=[{"role": "user", "content": f"Tell me about number {i}."}],
            )
            assert r.choices[0].message.content is not None
            done.append(i)
            if killed.is_set():
                after_kill.append(i)
            if len(done) == 6:  # both replicas are busy now: kill one mid-run
                victim.send_signal(signal.SIGKILL)
                killed.set()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    assert killed.is_set() and victim.wait(timeout=60) is not None
    assert not errors, errors[:3]
    assert len(done) == 40
    assert len(after_kill) >= 20  # most of the load ran after the kill, on the survivor
    # and afterwards, streaming keeps working on the survivor
    chunks = list(
        client.chat.completions.create(
            model="smol-upstream", max_tokens=6, stream=True, messages=[{"role": "user", "content": "Hello"}]
        )
    )
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@pytest.fixture(scope="module")
def r1_gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r1")
    port = free_port()
    upstream = spawn([sys.executable, str(HERE / "think_upstream.py"), str(port)], tmp / "upstream.log")
    wait_http(f"http://127.0.0.1:{port}/v1/models", upstream)
    server = start_server(
        tmp,
        f"""
[[models]]
id = "r1"
engine = "openai"
upstreams = ["http://127.0.0.1:{port}/v1"]
upstream_model = "deepseek-r1-remote"
max_concurrency = 4
reasoning = "deepseek-r1"
""",
    )
    org = server.new_org("Reasoning Clinic", sector="healthcare", tier="lifeline")
    yield openai.OpenAI(base_url=server.v1, api_key=org["key"], max_retries=0), f"http://127.0.0.1:{port}"
    server.stop()
    upstream.kill()


def test_reasoning_split_non_stream(r1_gateway):
    client, _ = r1_gateway
    r = client.chat.completions.create(model="r1", messages=[{"role": "user", "content": "2+2?"}])
    message = r.choices[0].message
    assert message.content == "The answer is 4."
    assert message.reasoning_content == "I should add two and two."
    assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 6


def test_reasoning_split_stream_with_tags_cut_across_chunks(r1_gateway):
    client, _ = r1_gateway
    chunks = list(
        client.chat.completions.create(
            model="r1",
            messages=[{"role": "user", "content": "2+2?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert "<" not in reasoning + content.replace("", "")
    assert reasoning.strip() == "I should add two and two."
    assert content.strip() == "The answer is 4."
    assert chunks[-1].usage.completion_tokens == 6


def test_tools_pass_through_to_upstream(r1_gateway):
    client, upstream = r1_gateway
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    r = client.chat.completions.create(
        model="r1",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
    )
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "weather" and '"Paris"' in call.function.arguments
    seen = httpx.get(f"{upstream}/last").json()
    assert seen["tools"] == tools and seen["tool_choice"] == "auto"
    assert seen["model"] == "deepseek-r1-remote"
    chunks = list(
        client.chat.completions.create(
            model="r1", messages=[{"role": "user", "content": "Weather?"}], tools=tools, stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "weather"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_no_live_replica_is_a_503(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = start_server(tmp_path, f'[[models]]\nid = "gone"\nengine = "openai"\nupstreams = ["{dead}"]\n')
    try:
        org = server.new_org("Unlucky Farm", sector="agriculture")
        r = httpx.post(
            f"{server.v1}/chat/completions",
            headers={"authorization": f"Bearer {org['key']}"},
            json={"model": "gone", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "engine_unavailable"
        # a stream that cannot start gets the same answer, not a 200 with an error inside
        r = httpx.post(
            f"{server.v1}/chat/completions",
            headers={"authorization": f"Bearer {org['key']}"},
            json={"model": "gone", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert httpx.get(f"{server.url}/healthz").json()["models"] == {"gone": "unavailable"}
    finally:
        server.stop()


def test_serve_a_gguf_by_path(tmp_path):
    path = default_model_path()
    server = start_server(tmp_path, args=("--model", str(path)))
    try:
        org = server.new_org("Path User")
        client = openai.OpenAI(base_url=server.v1, api_key=org["key"], max_retries=0)
        assert [m.id for m in client.models.list().data] == [path.stem.lower()]
        r = client.chat.completions.create(
            model=path.stem.lower(), max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
        assert r.usage.completion_tokens > 0
    finally:
        server.stop()
