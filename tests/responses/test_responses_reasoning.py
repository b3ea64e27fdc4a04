"""A DeepSeek-R1-style model (a stand-in remote server answering with <think> text) returns a reasoning item
before its message, streamed with reasoning-text events first."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from tests.conftest import free_port, start_server, wait_http
from tests.responses.conftest import HERE


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r1")
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE.parent / "engines" / "think_upstream.py"), str(port)],
        stdout=(tmp / "upstream.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", upstream)
    server = start_server(
        tmp,
        f'[[models]]\nid = "r1"\nengine = "openai"\nupstreams = ["http://127.0.0.1:{port}/v1"]\n'
        'reasoning = "deepseek-r1"\n',
    )
    key = server.new_org("Thinkers")["key"]
    yield openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0)
    server.stop()
    upstream.kill()
    upstream.wait()


def test_reasoning_item_then_message(client):
    r = client.responses.create(model="r1", input="What is 2 + 2?", reasoning={"effort": "low"})
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "I should add two and two."
    assert r.output_text == "The answer is 4."
    assert r.reasoning.effort == "low"


def test_streamed_reasoning_events(client):
    with client.responses.stream(model="r1", input="What is 2 + 2?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    first_text = types.index("response.output_text.delta")
    assert "response.reasoning_text.delta" in types[:first_text]
    assert types.index("response.reasoning_text.done") < first_text
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "The answer is 4."
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta").strip() == (
        "I should add two and two."
    )
