"""The Responses API on the embedded model (SmolLM2, plain text) through the official ``openai`` SDK:
create, stream, retrieve, delete, and the paginated input items."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def client(embedded_server, embedded_org):
    return openai.OpenAI(base_url=embedded_server.v1, api_key=embedded_org["key"], max_retries=0, timeout=300)


def test_create_retrieve_delete(client):
    r = client.responses.create(
        model=DEFAULT_MODEL, input="Name a colour.", instructions="Answer in one word.", max_output_tokens=8
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == DEFAULT_MODEL
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert 0 < r.usage.output_tokens <= 8 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Answer in one word." and r.max_output_tokens == 8
    got = client.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.usage == r.usage
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_previous_response_id_sends_the_conversation(client):
    first = client.responses.create(model=DEFAULT_MODEL, input="My name is Ada.", max_output_tokens=8)
    again = client.responses.create(model=DEFAULT_MODEL, input="My name is Ada.", max_output_tokens=8)
    second = client.responses.create(
        model=DEFAULT_MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    # exact token counts from the model's tokenizer: the second turn's prompt holds the first turn and its answer
    assert second.usage.input_tokens > again.usage.input_tokens + first.usage.output_tokens


def test_stream_events_in_order(client):
    with client.responses.stream(model=DEFAULT_MODEL, input="Count to three.", max_output_tokens=6) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # six tokens cut the answer short, as OpenAI says: incomplete
    ]
    last = events[-1].response
    assert last.incomplete_details.reason == "max_output_tokens" and last.usage.output_tokens == 6
    assert "".join(d.delta for d in deltas) == events[-4].text == last.output_text
    stored = client.responses.retrieve(last.id)
    assert stored.output_text == last.output_text and stored.status == "incomplete"


def test_input_items_pages(client):
    sent = [{"role": "user", "content": f"note {i}"} for i in range(5)]
    r = client.responses.create(model=DEFAULT_MODEL, input=sent, max_output_tokens=2)
    newest_first = client.responses.input_items.list(r.id)
    assert [item.content[0].text for item in newest_first.data] == [f"note {i}" for i in range(4, -1, -1)]
    page = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == ["note 0", "note 1"] and page.has_more
    texts = [item.content[0].text for item in client.responses.input_items.list(r.id, order="asc", limit=2)]
    assert texts == [f"note {i}" for i in range(5)]  # the SDK's auto-paging follows 'after' to the end
    after = client.responses.input_items.list(r.id, order="asc", after=page.last_id, limit=10)
    assert [item.content[0].text for item in after.data] == ["note 2", "note 3", "note 4"]
    assert not after.has_more
