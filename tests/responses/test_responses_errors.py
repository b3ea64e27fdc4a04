"""Every bad Responses API request gets a 4xx OpenAI error envelope naming what is wrong, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.responses.conftest import TOOL_MODEL, WEATHER

BUILT_IN = [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"},
    {"type": "mcp", "server_label": "x", "server_url": "https://example.invalid"},
    {"type": "image_generation"},
    {"type": "teleporter"},
]

BAD = {
    "unknown previous id": (
        {"input": "hi", "previous_response_id": "resp_doesnotexist"},
        404,
        "previous_response_id",
    ),
    "input missing": ({}, 400, "input"),
    "input a number": ({"input": 7}, 400, "input"),
    "empty input": ({"input": []}, 400, "input"),
    "item not an object": ({"input": ["hello"]}, 400, "input[0]"),
    "item without type or role": ({"input": [{"content": "hi"}]}, 400, "input[0].type"),
    "unknown item type": ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, 400, "input[0].type"),
    "bad role": ({"input": [{"role": "wizard", "content": "hi"}]}, 400, "input[0].role"),
    "message content a number": ({"input": [{"role": "user", "content": 3}]}, 400, "input[0].content"),
    "unsupported content part": (
        {"input": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
        400,
        "input[0].content[0].type",
    ),
    "function_call without call_id": (
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        400,
        "input[0].call_id",
    ),
    "function_call_output with no matching call": (
        {"input": [{"type": "function_call_output", "call_id": "call_nowhere", "output": "42"}]},
        400,
        "input[0].call_id",
    ),
    "function_call_output before its call": (
        {
            "input": [
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            ]
        },
        400,
        "input[0].call_id",
    ),
    "function tool without a name": ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    "tool_choice names no tool": (
        {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
        400,
        "tool_choice",
    ),
    "tool_choice built in": (
        {"input": "hi", "tool_choice": {"type": "web_search_preview"}},
        400,
        "tool_choice",
    ),
    "json_schema without schema": (
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
        400,
        "text.format",
    ),
    "unknown text format": ({"input": "hi", "text": {"format": {"type": "yaml"}}}, 400, "text.format.type"),
    "unknown parameter": ({"input": "hi", "frobnicate": True}, 400, "frobnicate"),
    "temperature too high": ({"input": "hi", "temperature": 3}, 400, "temperature"),
    "max_output_tokens zero": ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    "too much metadata": ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    "background": ({"input": "hi", "background": True}, 400, "background"),
    "unknown model": ({"input": "hi", "model": "no-such-model"}, 404, "model"),
}


@pytest.fixture(scope="module")
def http(gateway, org):
    with httpx.Client(
        base_url=gateway.v1, headers={"authorization": f"Bearer {org['key']}"}, timeout=30
    ) as c:
        yield c


def _envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_request_is_a_4xx_envelope(http, case):
    body, status, param = BAD[case]
    r = http.post("/responses", json={"model": TOOL_MODEL, **body})
    assert _envelope(r, status)["param"] == param


@pytest.mark.parametrize("tool", BUILT_IN, ids=[t["type"] for t in BUILT_IN])
def test_built_in_tools_are_refused_by_name(http, tool):
    r = http.post("/responses", json={"model": TOOL_MODEL, "input": "hi", "tools": [WEATHER, tool]})
    error = _envelope(r, 400)
    assert tool["type"] in error["message"] and error["param"] == "tools[1].type"
    assert error["code"] == "unsupported_tool"


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[1, 2]"], ids=["empty body", "not json", "not an object"]
)
def test_malformed_bodies(http, raw):
    r = http.post("/responses", content=raw, headers={"content-type": "application/json"})
    _envelope(r, 400)


def test_bad_reads(http):
    assert _envelope(http.get("/responses/resp_nope"), 404)["code"] == "not_found"
    assert _envelope(http.delete("/responses/resp_nope"), 404)["code"] == "not_found"
    assert _envelope(http.get("/responses/resp_nope/input_items"), 404)["code"] == "not_found"
    stored = http.post("/responses", json={"model": TOOL_MODEL, "input": "hi"}).json()["id"]
    for query, param in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("order=up", "order"),
        ("after=x", "after"),
    ]:
        assert _envelope(http.get(f"/responses/{stored}/input_items?{query}"), 400)["param"] == param
    assert _envelope(http.get(f"/responses/{stored}?stream=true"), 400)["param"] == "stream"
    assert http.put(f"/responses/{stored}").status_code == 405


def test_no_key_is_401(gateway):
    r = httpx.post(f"{gateway.v1}/responses", json={"model": TOOL_MODEL, "input": "hi"})
    _envelope(r, 401)
