"""The one small interface every engine implements, and the values that cross it."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiplus.config import ModelConfig


class EngineError(Exception):
    """An engine could not serve a request. ``status`` maps to the HTTP answer."""

    status = 503
    type = "service_unavailable"
    code: str | None = "engine_unavailable"
    param: str | None = None
    retry_after: int | None = None  # seconds, when the engine said when to come back (an upstream's 429)

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param


class ContextLengthError(EngineError):
    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"
    param = "messages"


class UnsupportedError(EngineError):
    status = 400
    type = "invalid_request_error"
    code = "unsupported_parameter"


class UpstreamError(EngineError):
    """The upstream answered with an error of its own; passed on with its status when it is a client error."""

    def __init__(
        self,
        message: str,
        status: int = 502,
        type: str = "upstream_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message, param=param)
        self.status = status
        self.type = type
        self.code = code
        self.retry_after = retry_after


class UpstreamTimeout(EngineError):
    """An upstream did not answer in time (no first token, or too long a silence): 504."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


@dataclass(slots=True)
class GenerationRequest:
    """A validated chat or text completion request, as an engine sees it."""

    request_id: str
    model: str
    kind: str  # "chat" or "completion"
    stream: bool = True  # False lets an upstream answer in one JSON body instead of a stream
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # other OpenAI fields, passed to upstream engines as-is
    # the engine's own rendering of the prompt (e.g. token ids), made once by count_prompt_tokens at admission and
    # reused by generate; opaque outside the engine that set it
    prepared: Any = None


@dataclass(slots=True)
class Delta:
    """A piece of a generation. ``tokens`` is how many completion tokens this piece accounts for."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    tokens: int = 0
    prompt_tokens: int | None = None  # set on the last delta when the engine reports exact usage
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # of prompt_tokens, served from the engine's prefix cache
    # the engine's own measure of the seconds it spent on this request (its prefill plus its part of every
    # decode step), on the last delta; the fair scheduler's cost model (cost = "engine") fits alpha and beta
    # from it, and from the request's processor-sharing part of the busy time when an engine leaves it None
    engine_s: float | None = None


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What one replica says of its own load (an upstream's /metrics): sizes the adaptive in-flight budget."""

    waiting: (
        float  # requests queued inside the engine (vllm:num_requests_waiting, llamacpp:requests_deferred)
    )
    running: float | None = None  # requests it is generating for
    kv_usage: float | None = None  # fraction of its KV cache in use, 0-1


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Engine(abc.ABC):
    """Serves one model. Engines generate; they know nothing of orgs, limits or money."""

    kind: ClassVar[str]
    remote: ClassVar[bool] = False  # True: replicas are servers that every aiplus worker shares

    def __init__(self, config: ModelConfig):
        self.config = config

    @property
    def replicas(self) -> int:
        return 1

    @property
    def concurrency(self) -> int:
        """Requests one replica runs at once: the model's ``max_concurrency``, else the engine's own default; with
        ``"auto"``, the adaptive budget's starting value (its minimum)."""
        if self.config.adaptive:
            return self.config.concurrency_min
        return int(self.config.max_concurrency or 1)

    @property
    def capacity(self) -> int:
        """Requests that may run at once across all replicas."""
        return self.replicas * self.concurrency

    @property
    def context_length(self) -> int | None:
        return self.config.context_length

    @property
    def default_max_tokens(self) -> int | None:
        """Completion tokens for a request that names no limit; None leaves it to the engine (an upstream's own)."""
        return self.config.default_max_tokens

    async def start(self) -> None:
        """Load weights or open connections; called once at server start."""

    async def close(self) -> None:
        """Release what ``start`` took."""

    def healthy(self) -> bool:
        return True

    def replica_health(self) -> list[bool] | None:
        """Health per replica, for engines with several; None: one replica, and ``healthy`` says it."""
        return None

    def inflight(self) -> list[int] | None:
        """Requests in flight per replica, for engines that pick replicas themselves; None: the dispatcher knows."""
        return None

    async def load(self) -> list[EngineLoad | None]:
        """Each replica's own report of its load (None where it gives none); empty for engines that have none."""
        return []

    def set_budgets(self, budgets: list[int]) -> None:
        """The in-flight budget of each replica (adaptive budget): engines that route should fill by room."""

    @abc.abstractmethod
    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens of ``request`` (exact where the engine has the tokenizer, else an estimate).

        Raises ContextLengthError when the prompt cannot fit the model's context.
        """

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the answer. Closing the iterator early (``aclose``) must stop the engine's work for it."""

    async def generate_batches(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        """``generate`` in lists: an engine that receives several deltas at once (an upstream's network read)
        overrides this so that they reach the client in one write."""
        deltas = self.generate(request)
        try:
            async for delta in deltas:
                yield [delta]
        finally:
            await deltas.aclose()

    async def count_embedding_tokens(self, inputs: list[str]) -> int:
        """Tokens of an embeddings request (each input is checked on its own against the model's limit)."""
        return sum(estimate_tokens(text) for text in inputs)

    async def embed(self, inputs: list[str], request_id: str) -> Embeddings:
        raise UnsupportedError(f"model {self.config.id!r} does not serve embeddings", param="model")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters a token), for engines without the model's tokenizer."""
    return max(1, (len(text) + 3) // 4)
