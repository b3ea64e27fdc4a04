"""Seeded sampling on the embedded engine reproduces: first request after start, after other traffic, after a
restart. Each server here is fresh, since the bug this guards against lived in state left by earlier requests."""

from __future__ import annotations

import openai

from tests.conftest import DEFAULT_MODEL, start_server

SEEDED = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 12,
    "temperature": 1.0,
    "seed": 42,
}


def _answer(client: openai.OpenAI, **overrides) -> str:
    return client.chat.completions.create(**{**SEEDED, **overrides}).choices[0].message.content


def test_same_seed_same_text_from_start_after_traffic_and_after_restart(tmp_path):
    data_dir = tmp_path / "data"
    server = start_server(tmp_path, data_dir=data_dir)
    try:
        key = server.new_org("Seeded School")["key"]
        client = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=120)
        first = _answer(client)  # the first request after start: its whole prompt in one batch
        again = _answer(client)  # the same prompt again: the cache holds all of it
        _answer(client, messages=[{"role": "user", "content": "Tell me about dogs."}], seed=7)
        after_other = _answer(client)  # the cache holds another prompt with the same template prefix
        others = {_answer(client, seed=seed) for seed in (1, 2, 3, 4)}
    finally:
        server.stop()
    assert again == first
    assert after_other == first
    assert len(others | {first}) >= 2, "different seeds should be able to give different texts"

    server = start_server(tmp_path, data_dir=data_dir)
    try:
        client = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=120)
        assert _answer(client) == first
    finally:
        server.stop()
