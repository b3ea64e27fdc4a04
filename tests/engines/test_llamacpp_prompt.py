"""The embedded engine's per-request work is done once: the context sized at load, the prompt rendered once."""

from __future__ import annotations

import asyncio
import os

import pytest

from aiplus.config import ModelConfig
from aiplus.engines.base import GenerationRequest
from aiplus.engines.llamacpp import LlamaCppEngine


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def engine():
    engine = LlamaCppEngine(ModelConfig(id="smollm2"))
    _run(engine.start())
    yield engine
    _run(engine.close())


def test_context_is_the_trained_one_within_the_kv_budget_without_a_setting(engine):
    # SmolLM2-135M's trained context (8,192, read from the model) shared by the sequences within 32,768 KV tokens
    assert engine.context_length == min(8192, max(2048, 32768 // engine.concurrency))
    alone = LlamaCppEngine(ModelConfig(id="smollm2", max_concurrency=1))
    _run(alone.start())
    try:
        assert alone.context_length == 8192
    finally:
        _run(alone.close())


def test_configured_context_wins():
    engine = LlamaCppEngine(ModelConfig(id="smollm2", context_length=2048))
    _run(engine.start())
    try:
        assert engine.context_length == 2048
    finally:
        _run(engine.close())


@pytest.mark.parametrize("content", ["Name a colour.", "word " * 1200])  # inline, and on a worker thread
def test_prompt_is_rendered_once_per_request(engine, content):
    renders = []
    render = engine._render

    def counting(request):
        renders.append(request.request_id)
        return render(request)

    engine._render = counting
    try:
        request = GenerationRequest(
            request_id="r1",
            model="smollm2",
            kind="chat",
            messages=[{"role": "user", "content": content}],
            max_tokens=4,
            temperature=0,
        )

        async def admit_and_generate():
            counted = await engine.count_prompt_tokens(request)
            deltas = [d async for d in engine.generate(request)]
            return counted, deltas

        counted, deltas = _run(admit_and_generate())
    finally:
        del engine._render
    assert renders == ["r1"]
    assert deltas[-1].prompt_tokens == counted > 10
    assert 0 < deltas[-1].completion_tokens <= 4


def test_sequences_default_to_the_machine_and_follow_the_setting():
    cores = os.cpu_count() or 1
    assert LlamaCppEngine(ModelConfig(id="m")).capacity == min(max(8, 4 * cores), 32)
    assert LlamaCppEngine(ModelConfig(id="m", max_concurrency=3)).capacity == 3
