"""A model of a continuous-batching engine (vLLM, SGLang, lightllm): no weights, only timing.

Each iteration decodes one token for every running sequence and prefills the ones admitted since the last
iteration; it takes ``a + b * batch_size + c * prefill_tokens`` seconds. Sequences hold KV memory for
``prompt + max_tokens`` tokens from admission to finish. ``BatchModel`` is pure (the simulator advances a
virtual clock by the seconds each step returns); ``SimulatedEngine`` serves it live, sleeping those seconds.

The default constants are calibrated on the LMSYS trace of the VTC paper (Llama-2-7B on one A10G): about
780 tokens/s of prompt plus completion under load, and first-come-first-served waits of tens of seconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiplus.config import ModelConfig
from aiplus.engines.base import ContextLengthError, Delta, Engine, GenerationRequest, estimate_tokens


@dataclass(frozen=True, slots=True)
class StepCost:
    """Seconds per engine iteration: ``a + b * batch_size + c * prefill_tokens``."""

    a: float = 0.020
    b: float = 0.0006
    c: float = 0.0002

    def __call__(self, batch_size: int, prefill_tokens: int) -> float:
        return self.a + self.b * batch_size + self.c * prefill_tokens


DEFAULT_KV_TOKENS = 10_000  # KV cache left on a 24 GB A10G beside Llama-2-7B's fp16 weights, roughly
DEFAULT_MAX_BATCH = 256


class _Sequence:
    __slots__ = ("key", "prefilled", "prompt_tokens", "remaining", "reserved")

    def __init__(self, key: Any, prompt_tokens: int, max_tokens: int):
        self.key = key
        self.prompt_tokens = prompt_tokens
        self.remaining = max(1, max_tokens)
        self.reserved = prompt_tokens + self.remaining
        self.prefilled = False


class BatchModel:
    """The running batch of one replica and the cost of stepping it; callers decide what to admit."""

    def __init__(
        self,
        kv_tokens: int = DEFAULT_KV_TOKENS,
        max_batch: int = DEFAULT_MAX_BATCH,
        cost: StepCost | None = None,
    ):
        self.kv_tokens = kv_tokens
        self.max_batch = max_batch
        self.cost = cost or StepCost()
        self.used_tokens = 0
        self._running: dict[int, _Sequence] = {}  # id(key) -> sequence, in admission order

    def __len__(self) -> int:
        return len(self._running)

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a sequence of that size can join the batch now (a lone oversized one always can)."""
        if not self._running:
            return True
        return (
            len(self._running) < self.max_batch
            and self.used_tokens + prompt_tokens + max(1, max_tokens) <= self.kv_tokens
        )

    def admit(self, key: Any, prompt_tokens: int, max_tokens: int) -> None:
        """Add a sequence; it is prefilled in the next step, which also produces its first token."""
        seq = _Sequence(key, prompt_tokens, max_tokens)
        self._running[id(key)] = seq
        self.used_tokens += seq.reserved

    def abort(self, key: Any) -> bool:
        """Drop a sequence before it finishes (its client went away)."""
        seq = self._running.pop(id(key), None)
        if seq is None:
            return False
        self.used_tokens -= seq.reserved
        return True

    def step(self) -> tuple[float, list[Any], list[Any]]:
        """One iteration: ``(seconds, keys that produced a token, keys that finished)``."""
        prefill = 0
        produced = []
        finished = []
        for seq in self._running.values():
            if not seq.prefilled:
                seq.prefilled = True
                prefill += seq.prompt_tokens
            produced.append(seq.key)
            seq.remaining -= 1
            if seq.remaining == 0:
                finished.append(seq)
        seconds = self.cost(len(self._running), prefill)
        for seq in finished:
            del self._running[id(seq.key)]
            self.used_tokens -= seq.reserved
        return seconds, produced, [seq.key for seq in finished]


_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


class SimulatedEngine(Engine):
    """Serves ``BatchModel`` timing live (real sleeps): a GPU-free stand-in for load tests and demos."""

    kind = "simulated"
    default_max_tokens = 64

    def __init__(
        self, config: ModelConfig, *, cost: StepCost | None = None, kv_tokens: int = DEFAULT_KV_TOKENS
    ):
        super().__init__(config)
        self.model = BatchModel(
            kv_tokens=kv_tokens, max_batch=max(DEFAULT_MAX_BATCH, config.slots), cost=cost
        )
        self._pending: deque[tuple[asyncio.Queue, int, int]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.messages is not None:
            text = "".join(str(m.get("content") or "") for m in request.messages)
        else:
            text = request.prompt or ""
        tokens = estimate_tokens(text)
        limit = self.context_length
        if limit is not None and tokens + (request.max_tokens or 0) > limit:
            raise ContextLengthError(
                f"this model's context is {limit} tokens; the prompt has about {tokens} "
                f"and max_tokens asks for {request.max_tokens}"
            )
        return tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        prompt_tokens = await self.count_prompt_tokens(request)
        max_tokens = request.max_tokens or self.default_max_tokens
        tokens: asyncio.Queue[bool] = asyncio.Queue()
        entry = (tokens, prompt_tokens, max_tokens)
        self._pending.append(entry)
        self._ensure_running()
        produced = 0
        try:
            while True:
                last = await tokens.get()
                word = _WORDS[produced % len(_WORDS)]
                produced += 1
                if last:
                    yield Delta(
                        text=" " + word,
                        tokens=1,
                        finish_reason="length",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=produced,
                    )
                    return
                yield Delta(text=" " + word, tokens=1)
        finally:
            if not self.model.abort(tokens) and entry in self._pending:
                self._pending.remove(entry)

    def _ensure_running(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        model = self.model
        while True:
            while self._pending and model.fits(self._pending[0][1], self._pending[0][2]):
                key, prompt_tokens, max_tokens = self._pending.popleft()
                model.admit(key, prompt_tokens, max_tokens)
            if not len(model):
                self._wake.clear()
                await self._wake.wait()
                continue
            seconds, produced, finished = model.step()
            await asyncio.sleep(seconds)
            done = set(map(id, finished))
            for key in produced:
                key.put_nowait(id(key) in done)
