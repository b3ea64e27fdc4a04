"""Continuous batching on the embedded engine keeps each request's own semantics (issue 16): seeded texts are the
same batched as alone, a cancelled stream leaves the others intact, a JSON-schema answer batched with free text
still parses. Real server, real model, the official client; requests overlap through threads."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from aiplus.config import ModelConfig
from aiplus.engines.base import GenerationRequest
from aiplus.engines.llamacpp import LlamaCppEngine
from aiplus.engines.llamacpp_decoder import choose_slot, lib
from tests.conftest import DEFAULT_MODEL

PROMPTS = [
    "Name a colour.",
    "Tell me about dogs.",
    "Write a short poem about the sea.",
    "What should I cook tonight?",
    "Describe a bicycle.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def client(embedded_server, embedded_org):
    return openai.OpenAI(base_url=embedded_server.v1, api_key=embedded_org["key"], max_retries=0, timeout=300)


def _seeded(client: openai.OpenAI, i: int, max_tokens: int = 24) -> str:
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": PROMPTS[i]}],
        max_tokens=max_tokens,
        temperature=1.0,
        seed=100 + i,
    )
    return r.choices[0].message.content


def _together(fn, n: int) -> list:
    """Run ``fn(i)`` for i in range(n) at once: all start together, so the engine decodes them in one batch."""
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_seeded_texts_are_the_same_batched_as_alone(client):
    alone = [_seeded(client, i) for i in range(len(PROMPTS))]
    batched = _together(lambda i: _seeded(client, i), len(PROMPTS))
    assert batched == alone
    assert len(set(alone)) == len(alone)


def test_cancelling_one_stream_leaves_the_others_intact(client):
    alone = [_seeded(client, i, max_tokens=32) for i in range(3)]
    cut = []

    def run(i):
        if i < 3:
            return _seeded(client, i, max_tokens=32)
        stream = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
            max_tokens=400,
            temperature=1.0,
            seed=5,
            stream=True,
        )
        for n, _chunk in enumerate(stream):
            if n == 3:  # a few tokens in: the others are mid-generation beside it
                stream.close()
                cut.append(n)
                break
        return None

    results = _together(run, 4)
    assert cut == [3]
    assert results[:3] == alone


def test_json_schema_answer_batched_with_free_text_parses(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
        "required": ["name", "legs"],
        "additionalProperties": False,
    }

    def run(i):
        if i == 0:
            r = client.chat.completions.create(
                model=DEFAULT_MODEL,
                messages=[{"role": "user", "content": "Describe a cat as JSON with its name and legs."}],
                max_tokens=60,
                temperature=0.8,
                seed=3,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "animal", "schema": schema, "strict": True},
                },
            )
            return r.choices[0].message.content
        return _seeded(client, i, max_tokens=40)

    results = _together(run, 4)
    animal = json.loads(results[0])
    assert set(animal) == {"name", "legs"} and isinstance(animal["legs"], int)
    assert all(isinstance(text, str) and text for text in results[1:])


def test_a_cancelled_sequence_frees_its_slot_while_the_others_run():
    """In process, to see the decoder itself: the closed stream's sequence is gone before the others finish."""
    engine = LlamaCppEngine(ModelConfig(id="m", max_concurrency=4, context_length=2048))

    def request(i: int, max_tokens: int) -> GenerationRequest:
        return GenerationRequest(
            request_id=str(i),
            model="m",
            kind="chat",
            messages=[{"role": "user", "content": PROMPTS[i]}],
            max_tokens=max_tokens,
            temperature=1.0,
            seed=i,
        )

    async def text(gen: GenerationRequest) -> str:
        return "".join([d.text async for d in engine.generate(gen)])

    async def run() -> tuple[list[str], list[str], int, int]:
        await engine.start()
        try:
            alone = [await text(request(i, 32)) for i in range(3)]
            long = engine.generate(request(5, 1000))
            await anext(long)
            others = asyncio.gather(*(text(request(i, 32)) for i in range(3)))
            await asyncio.sleep(0.05)
            await long.aclose()
            batched = await others
            await asyncio.sleep(0.5)  # the step after the last delivery
            return alone, batched, engine._decoder.running, engine.capacity
        finally:
            await engine.close()

    alone, batched, running, capacity = asyncio.run(run())
    assert batched == alone
    assert running == 0 and capacity == 4


def test_each_request_reports_its_share_of_the_engine_time():
    """The decoder times its decodes and charges each sequence its rows' share (the cost model's engine time,
    issue 17): every finished request reports a positive time, and the shares of requests decoded together never
    add up to more than the time they took, since one thread decodes them all."""
    engine = LlamaCppEngine(ModelConfig(id="m", max_concurrency=4, context_length=2048))

    def request(i: int) -> GenerationRequest:
        return GenerationRequest(
            request_id=str(i),
            model="m",
            kind="chat",
            messages=[{"role": "user", "content": PROMPTS[i]}],
            max_tokens=16,
            temperature=0,
        )

    async def engine_time(gen: GenerationRequest) -> float | None:
        return [d.engine_s async for d in engine.generate(gen) if d.engine_s is not None][-1]

    async def run() -> tuple[list[float | None], float]:
        await engine.start()
        try:
            started = asyncio.get_running_loop().time()
            times = await asyncio.gather(*(engine_time(request(i)) for i in range(3)))
            return times, asyncio.get_running_loop().time() - started
        finally:
            await engine.close()

    times, wall = asyncio.run(run())
    assert all(t is not None and t > 0 for t in times)
    assert sum(times) <= wall


def test_a_shared_prompt_prefix_is_reused_and_the_seeded_text_stays_the_same():
    """A slot keeps its last prompt's KV: the next request sharing a prefix (the chat template's head, a system
    prompt, the same question) skips it and says so in ``cached_tokens``, and its seeded text is the one a fresh
    engine gives. The long system prompt makes the prompt cross a chunk boundary (n_batch = 512)."""
    system = "You are a careful assistant for a clinic. " * 60

    def request(i: int, content: str) -> GenerationRequest:
        return GenerationRequest(
            request_id=str(i),
            model="m",
            kind="chat",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": content}],
            max_tokens=16,
            temperature=1.0,
            seed=11,
        )

    async def answers(requests: list[GenerationRequest]) -> list[tuple[str, int | None]]:
        engine = LlamaCppEngine(ModelConfig(id="m", max_concurrency=2, context_length=2048))
        await engine.start()
        try:
            out = []
            for gen in requests:
                deltas = [d async for d in engine.generate(gen)]
                out.append(("".join(d.text for d in deltas), deltas[-1].cached_tokens))
            return out
        finally:
            await engine.close()

    first, second = request(1, PROMPTS[1]), request(2, PROMPTS[2])
    fresh = asyncio.run(answers([first])) + asyncio.run(answers([second]))
    reused = asyncio.run(answers([first, second, second]))
    assert [text for text, _ in reused] == [fresh[0][0], fresh[1][0], fresh[1][0]]
    assert fresh[0][1] == fresh[1][1] == reused[0][1] == 0
    assert reused[1][1] > 500  # the template's head and the system prompt
    assert reused[2][1] > reused[1][1]  # the whole prompt but its end: the same question again


def test_a_new_sequence_keeps_the_running_slots_consecutive_then_reuses_the_longest_prefix():
    """llama.cpp computes each run of consecutive sequence ids of a step apart (one KV stream per sequence), so
    filling a gap beats a longer kept prefix elsewhere; among equals, the longest prefix wins."""
    kept = [[], [1, 2, 3], [], [1, 2, 3, 4, 5], [1, 2], []]
    assert choose_slot([1, 4, 5], {0, 2, 3}, kept, [1, 2, 3, 4, 5, 6]) == 1  # fills the gap
    assert choose_slot([3, 4, 5], {0, 1, 2}, kept, [1, 2, 3, 4, 5, 6]) == 3  # extends the run
    assert (
        choose_slot([0, 1, 2, 3, 4, 5], set(), kept, [1, 2, 3, 4, 5, 6]) == 3
    )  # nothing runs: longest prefix
    assert choose_slot([0, 2, 5], set(), kept, [9]) == 0  # nothing shared: the lowest id


def test_each_step_decodes_the_running_sequences_in_slot_order():
    """Sequences that joined in any order are decoded in increasing slot order, one pass for consecutive slots."""
    engine = LlamaCppEngine(ModelConfig(id="m", max_concurrency=4, context_length=2048))
    steps: list[list[int]] = []
    decode = lib.llama_decode

    def recording(ctx, batch):
        steps.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return decode(ctx, batch)

    def request(i: int, max_tokens: int) -> GenerationRequest:
        messages = [{"role": "user", "content": PROMPTS[i]}]
        return GenerationRequest(
            request_id=str(i), model="m", kind="chat", messages=messages, max_tokens=max_tokens, temperature=0
        )

    async def run() -> None:
        await engine.start()
        try:

            async def text(i: int, max_tokens: int, delay: float) -> str:
                await asyncio.sleep(delay)
                return "".join([d.text async for d in engine.generate(request(i, max_tokens))])

            # different lengths and arrival times: slots free up and are taken again while others run
            await asyncio.gather(*(text(i, 6 + 5 * i, 0.02 * i) for i in range(6)))
        finally:
            await engine.close()

    lib.llama_decode = recording
    try:
        asyncio.run(run())
    finally:
        lib.llama_decode = decode
    generation = [ids for ids in steps if len(set(ids)) == len(ids) > 1]  # one token for each of several
    assert generation and all(ids == sorted(ids) for ids in generation)
    assert any(len(ids) == 4 for ids in generation)
