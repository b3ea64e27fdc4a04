"""The OpenAI-compatible API on the embedded SmolLM2, called with the official ``openai`` SDK over real HTTP."""

from __future__ import annotations

import base64
import json
import socket

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def client(embedded_server, embedded_org):
    return openai.OpenAI(base_url=embedded_server.v1, api_key=embedded_org["key"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def raw(embedded_server, embedded_org):
    with httpx.Client(
        base_url=embedded_server.url, timeout=120, headers={"authorization": f"Bearer {embedded_org['key']}"}
    ) as c:
        yield c


def test_models_lists_the_embedded_default(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [DEFAULT_MODEL]
    assert client.models.retrieve(DEFAULT_MODEL).id == DEFAULT_MODEL


def test_chat_non_stream(client):
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=24,
        temperature=0,
        seed=1,
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-")


def test_chat_max_completion_tokens_limits_length(client):
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a cat."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip()
    assert finishes and finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.completion_tokens <= 20
    assert len({c.id for c in chunks}) == 1


def test_same_seed_same_answer(client):
    kwargs = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 42,
    }
    assert (
        client.chat.completions.create(**kwargs).choices[0].message.content
        == client.chat.completions.create(**kwargs).choices[0].message.content
    )


def test_no_seed_means_fresh_sampling(client):
    kwargs = dict(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=20,
        temperature=1.0,
    )
    answers = {client.chat.completions.create(**kwargs).choices[0].message.content for _ in range(3)}
    assert len(answers) >= 2


def test_stop_sequence(client):
    r = client.completions.create(
        model=DEFAULT_MODEL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=30, temperature=0, stop=["9"]
    )
    assert "9" not in r.choices[0].text


def test_completions_non_stream_and_stream(client):
    r = client.completions.create(model=DEFAULT_MODEL, prompt="The sky is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.completion_tokens <= 8
    pieces = list(
        client.completions.create(
            model=DEFAULT_MODEL, prompt="The sky is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == r.choices[0].text


def test_embeddings(client):
    r = client.embeddings.create(
        model=DEFAULT_MODEL, input=["a cat sat on the mat", "stock markets fell today"]
    )
    assert [d.index for d in r.data] == [0, 1]
    v0, v1 = r.data[0].embedding, r.data[1].embedding
    assert len(v0) == len(v1) > 100
    assert abs(sum(x * x for x in v0) - 1.0) < 1e-3  # normalised, as OpenAI's are
    assert r.usage.prompt_tokens > 0
    b64 = client.embeddings.create(
        model=DEFAULT_MODEL, input="a cat sat on the mat", encoding_format="base64"
    )
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert decoded[:8].tolist() == pytest.approx(v0[:8], abs=1e-5)


def test_json_schema_answer_parses(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_json_object_answer_parses(client):
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with keys name and age for a person."}],
        max_tokens=300,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


# bad input: a clear OpenAI envelope and the right status, never a 500 or a hang ---------------------------------


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": DEFAULT_MODEL}, "messages"),
        ({"model": DEFAULT_MODEL, "messages": []}, "messages"),
        ({"model": DEFAULT_MODEL, "messages": "hello"}, "messages"),
        ({"model": DEFAULT_MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5},
            "temperature",
        ),
        (
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "temperature",
        ),
        (
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            "max_tokens",
        ),
        (
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3},
            "max_tokens",
        ),
        ({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        (
            {
                "model": DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema"},
            },
            "response_format",
        ),
    ],
)
def test_invalid_requests_name_the_parameter(raw, body, param):
    err = _error(raw.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err


def test_malformed_json(raw):
    err = _error(
        raw.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert "JSON" in err["message"]
    _error(raw.post("/v1/chat/completions", content=b"[1, 2]"), 400)
    _error(raw.post("/v1/chat/completions", content=b""), 400)


def test_forced_tool_call_on_the_embedded_model_is_400_streaming_or_not(raw):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for stream in (False, True):
        err = _error(
            raw.post(
                "/v1/chat/completions",
                json={
                    "model": DEFAULT_MODEL,
                    "stream": stream,
                    "tools": tools,
                    "tool_choice": "required",
                    "messages": [{"role": "user", "content": "x"}],
                },
            ),
            400,
        )
        assert err["param"] == "tool_choice"


def test_unknown_model_is_404(raw):
    err = _error(
        raw.post(
            "/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
        ),
        404,
    )
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_missing_and_wrong_key_is_401(embedded_server):
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "x"}]}
    err = _error(httpx.post(f"{embedded_server.v1}/chat/completions", json=body), 401)
    assert err["code"] == "missing_api_key"
    err = _error(
        httpx.post(
            f"{embedded_server.v1}/chat/completions",
            json=body,
            headers={"authorization": "Bearer aip_not-a-real-key"},
        ),
        401,
    )
    assert err["code"] == "invalid_api_key"


def test_oversized_body_is_413(raw):
    big = "x" * (5 * 1024 * 1024)
    _error(
        raw.post(
            "/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": big}]},
        ),
        413,
    )


def test_prompt_longer_than_context_is_400(raw):
    long = "hello world " * 6000
    err = _error(
        raw.post(
            "/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": long}]},
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length" in err["message"]


def test_max_tokens_beyond_context_is_400(raw):
    err = _error(
        raw.post(
            "/v1/chat/completions",
            json={
                "model": DEFAULT_MODEL,
                "max_tokens": 10**6,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"


def test_unknown_route_and_method(raw):
    _error(raw.get("/v1/nothing-here"), 404)
    _error(raw.get("/v1/chat/completions"), 405)


def test_truncated_body_does_not_hang_the_server(embedded_server, embedded_org, raw):
    """A client that promises more body than it sends, then stops sending: its request ends (an error or a
    closed connection) within a bound, as a client error, not a server error; the server stays healthy."""
    host, port = embedded_server.url.removeprefix("http://").split(":")
    log_before = embedded_server.log.stat().st_size
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {embedded_org['key']}\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"model":'
        )
        s.shutdown(socket.SHUT_WR)  # no more body will come
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except TimeoutError:
            pytest.fail(f"the truncated request still hangs after 30 s (received {answer[:200]!r})")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert raw.get("/healthz").status_code == 200
    with embedded_server.log.open("rb") as log:
        log.seek(log_before)
        assert b"unexpected error" not in log.read()  # a client leaving mid-body is no server error


def test_healthz(embedded_server):
    r = httpx.get(f"{embedded_server.url}/healthz")
    assert r.status_code == 200 and r.json()["models"] == {DEFAULT_MODEL: "ok"}


def test_embedding_batches_are_limited_per_input(client, raw):
    # inputs that together exceed the model's 8,192-token context; each fits, so the batch is fine
    r = client.embeddings.create(model=DEFAULT_MODEL, input=["rivers and hills " * 90] * 32)
    assert len(r.data) == 32 and r.usage.prompt_tokens > 8192
    err = _error(
        raw.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": ["ok", "word " * 3000]}), 400
    )
    assert err["param"] == "input" and "input[1]" in err["message"]


def test_a_repeated_prompt_reports_its_cached_tokens(client):
    """The embedded engine reuses a slot's kept prompt (issue 16) and says so, as OpenAI does, in
    ``usage.prompt_tokens_details.cached_tokens`` (chat, streamed usage) and ``input_tokens_details`` (Responses)."""
    messages = [
        {"role": "system", "content": "You answer questions about the water utility of a small town. " * 8},
        {"role": "user", "content": "When is the office open?"},
    ]
    first = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=4)
    again = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=4)
    prompt = first.usage.prompt_tokens
    assert again.usage.prompt_tokens == prompt
    assert prompt - 2 <= again.usage.prompt_tokens_details.cached_tokens < prompt
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    assert prompt - 2 <= usage.prompt_tokens_details.cached_tokens < prompt
    instructions, question = messages[0]["content"], messages[1]["content"]
    client.responses.create(
        model=DEFAULT_MODEL, instructions=instructions, input=question, max_output_tokens=4
    )
    response = client.responses.create(
        model=DEFAULT_MODEL, instructions=instructions, input=question, max_output_tokens=4
    )
    assert 0 < response.usage.input_tokens_details.cached_tokens < response.usage.input_tokens
