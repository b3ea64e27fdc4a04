"""The Responses API with function calls, through the official ``openai`` SDK, against real gateways on
PostgreSQL in front of a stand-in upstream that calls tools: a call and its output replayed through
``previous_response_id``, streamed tool-call events, a ten-turn conversation that outlives its gateway, one usage
event per response with its tool use, and organizations that never see each other's responses."""

from __future__ import annotations

import json
import signal
import time

import openai
import pytest
import sqlalchemy as sa

from aiplus.storage.tables import stored_responses, usage_events
from tests.responses.conftest import TOOL_MODEL, WEATHER, seen


def _call(response):
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    return calls[0]


def test_function_call_and_its_output_are_replayed(client, tool_upstream):
    first = client.responses.create(model=TOOL_MODEL, input="Paris", tools=[WEATHER])
    call = _call(first)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.id.startswith("fc_") and first.status == "completed"
    second = client.responses.create(
        model=TOOL_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "turns=1 calls=1 results=1 last=sunny, 21 C"
    sent = seen(tool_upstream)[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id  # the stored call, as the model made it
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}


def test_streamed_function_call_events_in_order(client):
    with client.responses.stream(model=TOOL_MODEL, input="Oslo", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert json.loads(events[5].arguments) == {"city": "Oslo"}
    assert json.loads(_call(final).arguments) == {"city": "Oslo"}
    assert client.responses.retrieve(final.id).output[0].call_id == _call(final).call_id


def test_streamed_text_events_in_order(client):
    with client.responses.stream(model=TOOL_MODEL, input="hello there") as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"} and len(types[4:-4]) >= 3
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text.strip() == "turns=1 calls=0 results=0 last=hello there"


def test_ten_turns_with_tool_calls_outlive_their_gateway(deployment, org):
    """Turns 1-5 on one gateway (a tool call in turns 3-4), which is then killed; turns 6-10 on a second
    gateway on the same PostgreSQL (another call in turns 7-8). Each answer counts what the model was sent."""
    first = deployment.start()
    key = org["key"]
    previous = None
    expected = {"users": 0, "calls": 0}

    def turn(server, n: int, tool_turn: bool, last_call: str | None):
        nonlocal previous
        client = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=60)
        if last_call is not None:
            item = [{"type": "function_call_output", "call_id": last_call, "output": f"result {n}"}]
            r = client.responses.create(model=TOOL_MODEL, input=item, previous_response_id=previous)
            assert r.output_text == (
                f"turns={expected['users']} calls={expected['calls']} results={expected['calls']} last=result {n}"
            )
        else:
            expected["users"] += 1
            tools = [WEATHER] if tool_turn else None
            r = client.responses.create(
                model=TOOL_MODEL, input=f"city {n}", previous_response_id=previous, tools=tools or openai.omit
            )
            if tool_turn:
                expected["calls"] += 1
                previous = r.id
                return _call(r).call_id
            assert r.output_text == (
                f"turns={expected['users']} calls={expected['calls']} results={expected['calls']} last=city {n}"
            )
        previous = r.id
        return None

    pending = None
    for n in range(1, 6):
        pending = turn(first, n, n == 3, pending)
    made_on_first = previous
    first.stop(signal.SIGKILL)
    second = deployment.start()
    try:
        for n in range(6, 11):
            pending = turn(second, n, n == 7, pending)
        assert expected == {"users": 8, "calls": 2}
        client = openai.OpenAI(base_url=second.v1, api_key=key, max_retries=0, timeout=60)
        assert client.responses.retrieve(made_on_first).id == made_on_first
    finally:
        second.stop()


def test_another_organization_sees_nothing(gateway, client):
    mine = client.responses.create(model=TOOL_MODEL, input="Rome", tools=[WEATHER])
    other = openai.OpenAI(base_url=gateway.v1, api_key=gateway.new_org("Nosy Ltd")["key"], max_retries=0)
    attempts = [
        lambda: other.responses.retrieve(mine.id),
        lambda: other.responses.input_items.list(mine.id),
        lambda: other.responses.delete(mine.id),
        lambda: other.responses.create(model=TOOL_MODEL, input="hi", previous_response_id=mine.id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        assert mine.id in err.value.message
    assert client.responses.retrieve(mine.id).id == mine.id  # still there, untouched


def test_each_response_is_one_usage_event_with_its_tool_use(client, deployment, org):
    plain = client.responses.create(model=TOOL_MODEL, input="plain")
    asked = client.responses.create(model=TOOL_MODEL, input="Lima", tools=[WEATHER])
    answered = client.responses.create(
        model=TOOL_MODEL,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": _call(asked).call_id, "output": "rain"}],
    )
    ids = [plain.id, asked.id, answered.id]
    rows: dict = {}
    deadline = time.monotonic() + 30
    while len(rows) < 3 and time.monotonic() < deadline:
        with deployment.db.connect() as conn:
            found = conn.execute(sa.select(usage_events).where(usage_events.c.request_id.in_(ids))).all()
        rows = {r.request_id: r for r in found}
        time.sleep(0.2)
    assert {r.endpoint for r in rows.values()} == {"responses"}
    assert {r.org_id for r in rows.values()} == {org["org"]["id"]}
    assert [rows[i].used_tools for i in ids] == [False, True, True]
    assert all(
        rows[i].prompt_tokens == 20 and rows[i].completion_tokens == 5 for i in ids
    )  # the upstream's usage


def test_store_false_keeps_nothing(client, deployment):
    r = client.responses.create(model=TOOL_MODEL, input="ephemeral", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with deployment.db.connect() as conn:
        assert (
            conn.execute(sa.select(stored_responses.c.id).where(stored_responses.c.id == r.id)).first()
            is None
        )


def test_a_response_that_cannot_be_stored_fails_plainly(client, deployment):
    """The database refuses the save: a 503 envelope, or ``response.failed`` as the stream's last event."""
    with deployment.db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE stored_responses RENAME TO stored_responses_away"))
    try:
        with pytest.raises(openai.InternalServerError) as err:
            client.responses.create(model=TOOL_MODEL, input="lost")
        assert err.value.status_code == 503 and err.value.code == "response_not_stored"
        with client.responses.create(model=TOOL_MODEL, input="lost", stream=True) as stream:
            events = list(stream)
        assert events[-1].type == "response.failed"
        assert events[-1].response.error.code == "response_not_stored"
        assert [e.sequence_number for e in events] == list(range(len(events)))
    finally:
        with deployment.db.begin() as conn:
            conn.execute(sa.text("ALTER TABLE stored_responses_away RENAME TO stored_responses"))
    assert client.responses.create(model=TOOL_MODEL, input="back").status == "completed"


def test_request_options_reach_the_upstream_and_are_echoed(client, tool_upstream):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.responses.create(
        model=TOOL_MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "Where?"}]},
        ],
        instructions="You are a travel agent.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        service_tier="flex",
        reasoning={"effort": "low"},
        metadata={"ticket": "42"},
    )
    sent = seen(tool_upstream)[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "You are a travel agent."},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Where?"},
    ]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }
    assert (sent["parallel_tool_calls"], sent["reasoning_effort"]) == (False, "low")
    assert "service_tier" not in sent and r.service_tier == "flex"  # aiplus's band, answered, not passed on
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (50, 0.5, 0.9)
    assert r.metadata == {"ticket": "42"} and r.instructions == "You are a travel agent."
    assert r.parallel_tool_calls is False and r.temperature == 0.5 and r.text.format.type == "json_schema"
    stored = client.responses.retrieve(r.id)
    assert stored.metadata == {"ticket": "42"} and stored.service_tier == "flex"
