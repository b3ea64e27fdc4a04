"""Bad input is a 400 naming what is wrong, never a 500 and never silently coerced: JSON nested too deep, too
many messages, fields of the wrong type. Against the real server on the embedded model."""

from __future__ import annotations

import httpx
import pytest

from aiplus import protocol
from tests.conftest import DEFAULT_MODEL


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def post(server, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.v1}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)


CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": DEFAULT_MODEL, "prompt": "Hi", "max_tokens": 2}


@pytest.mark.parametrize(
    "path, body",
    [
        ("/chat/completions", {**CHAT, "x_deep": nested(300)}),
        ("/chat/completions", {**CHAT, "stream": True, "x_deep": nested(300)}),
        ("/completions", {**COMPLETION, "x_deep": nested(300)}),
        (
            "/chat/completions",
            {
                **CHAT,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": nested(300)}]}],
            },
        ),
    ],
)
def test_json_nested_too_deep_is_400(embedded_server, embedded_org, path, body):
    # Before: 500 (chat, streamed chat, completions) or 503 (a content part): orjson parses 1,024 levels but
    # writes only 255, and the request is written again on its way to the engine.
    r = post(embedded_server, embedded_org["key"], path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert str(protocol.MAX_JSON_DEPTH) in r.json()["error"]["message"]


def test_json_as_deep_as_allowed_is_served(embedded_server, embedded_org):
    body = {**CHAT, "x_deep": nested(protocol.MAX_JSON_DEPTH - 2)}
    assert post(embedded_server, embedded_org["key"], "/chat/completions", body).status_code == 200


def test_too_many_messages_is_400(embedded_server, embedded_org):
    messages = [{"role": "user", "content": "x"}] * (protocol.MAX_MESSAGES + 1)
    r = post(embedded_server, embedded_org["key"], "/chat/completions", {**CHAT, "messages": messages})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    "path, field, value",
    [
        ("/chat/completions", "seed", True),
        ("/chat/completions", "max_tokens", "5"),
        ("/chat/completions", "temperature", "0.5"),
        ("/chat/completions", "stream", "true"),
        ("/chat/completions", "n", 1.0),
        ("/completions", "echo", 1),
        ("/completions", "max_tokens", 2.0),
        (
            "/chat/completions",
            "messages",
            [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}],
        ),
        ("/chat/completions", "messages", [{"role": "user", "content": [{"type": "text"}]}]),
        ("/chat/completions", "messages", [{"role": "user", "content": 5}]),
    ],
)
def test_fields_of_the_wrong_type_are_400_not_coerced(embedded_server, embedded_org, path, field, value):
    # Before: seed true became 1, "5" became 5, "true" became True; a text part holding an object was served.
    body = {**(CHAT if path == "/chat/completions" else COMPLETION), field: value}
    r = post(embedded_server, embedded_org["key"], path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"].startswith(field), error
    assert error["type"] == "invalid_request_error"


def test_right_types_still_pass(embedded_server, embedded_org):
    body = {
        **CHAT,
        "seed": 7,
        "temperature": 0,  # an integer is a number
        "top_p": 1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": False,
    }
    assert post(embedded_server, embedded_org["key"], "/chat/completions", body).status_code == 200
