"""One call's life on the serving path: authenticate, reserve limits, wait for a fair turn, generate, meter.

``Call`` is the only place that knows the order of these steps; each step is a service from a room below
(tenancy, scheduling, engines, metering). Whatever way a call ends — answered, rejected, failed, or abandoned by
its client — ``_finish`` releases its turn and its reservation and records exactly one usage event.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from aiplus import protocol
from aiplus.api.errors import APIError, unavailable
from aiplus.api.streams import (
    DONE,
    SSE_HEADERS,
    ClientGone,
    EventStream,
    inline_until_disconnect,
    json_response,
    sse,
    until_disconnect,
)
from aiplus.config import ModelConfig
from aiplus.engines.base import Delta, Engine, EngineError, GenerationRequest
from aiplus.engines.reasoning import ThinkSplitter, split_reasoning
from aiplus.engines.reported_usage import UNKNOWN_CONTEXT, count
from aiplus.metering.events import UsageEvent
from aiplus.metrics import TOKENS_SERVED
from aiplus.scheduling.dispatcher import Dispatcher, QueueTimeout
from aiplus.scheduling.fair_queue import band_of
from aiplus.scheduling.limits import RateLimited
from aiplus.tenancy.auth import Principal

if TYPE_CHECKING:  # the container is built a room above (services.py); here only its attributes are read
    from aiplus.services import Services

log = logging.getLogger("aiplus")
# Request ids: unique across processes and restarts (a random per-process part), without a syscall per request.
_PROCESS_ID = os.urandom(7).hex()
_SEQUENCE = itertools.count(1)
REQUEST_ID = "aiplus.request_id"  # the scope key of the request's id, once one is given
_ID_PREFIXES = {"chat": "chatcmpl-", "completion": "cmpl-", "embedding": "emb-", "responses": "resp_"}
DEFAULT_RESERVED_COMPLETION = 1024  # reserved when a request names no max_tokens and the context is unknown


def new_request_id(prefix: str = "req-") -> str:
    """A request id unique across processes and restarts; calls use their OpenAI prefix (chatcmpl-, ...),
    every other answer (an error, an admin route) ``req-``."""
    return f"{prefix}{_PROCESS_ID}{next(_SEQUENCE):010x}"


@dataclass(slots=True)
class ModelRuntime:
    config: ModelConfig
    engine: Engine
    dispatcher: Dispatcher


def find_model(services: Services, model_id: str, principal: Principal | None) -> ModelRuntime:
    """The served model ``model_id`` if this principal may use it; 404 otherwise (as OpenAI answers)."""
    model = services.models.get(model_id)
    if model is None or (
        principal is not None and principal.models is not None and model_id not in principal.models
    ):
        raise APIError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return model


async def _chain(first: list[Delta] | None, rest: AsyncIterator[list[Delta]]) -> AsyncIterator[list[Delta]]:
    if first is None:
        return
    yield first
    async for batch in rest:
        yield batch


_SERVER_SIDE = {
    502: "The model '{model}' failed to answer; retry shortly.",
    504: "The model '{model}' did not answer in time; retry shortly.",
}


def _public(exc: EngineError, model_id: str, request_id: str) -> APIError:
    """What the client reads of an engine failure. A client error keeps the engine's words (they are about the
    request); a failure on our side gets plain words, and its detail — internal hosts, exception classes — goes
    to the log under the request id."""
    headers = None
    if exc.retry_after is not None:
        headers = {"retry-after": str(exc.retry_after)}
    if exc.status < 500:
        message = str(exc)
    else:
        log.warning("request %s (model %s) failed: %s", request_id, model_id, exc)
        message = _SERVER_SIDE.get(exc.status, "The model '{model}' is unavailable just now; retry shortly.")
        message = message.format(model=model_id)
    return APIError(exc.status, message, type=exc.type, param=exc.param, code=exc.code, headers=headers)


def _error_body(error: APIError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


class Renderer(Protocol):
    """Another endpoint's answer built from the accounted deltas of a chat generation (the Responses API)."""

    async def whole(self, deltas: list[Delta]) -> dict[str, Any]: ...

    def events(self, batches: AsyncIterator[list[Delta]]) -> AsyncIterator[bytes]: ...

    def failed(self, error: APIError) -> bytes: ...


class Call:
    """One request from admission to its usage event."""

    __slots__ = (
        "band",
        "cached_tokens",
        "completion_tokens",
        "endpoint",
        "finished",
        "first_token",
        "headers",
        "lease",
        "model",
        "principal",
        "prompt_tokens",
        "request",
        "request_id",
        "reservation",
        "services",
        "started",
        "started_at",
        "used_tools",
    )

    def __init__(
        self, services: Services, request: Request, principal: Principal, model: ModelRuntime, endpoint: str
    ):
        self.services = services
        self.request = request
        self.principal = principal
        self.model = model
        self.endpoint = endpoint
        self.request_id = new_request_id(_ID_PREFIXES[endpoint])
        request.scope[REQUEST_ID] = self.request_id  # the id an error answer carries too
        self.started = time.perf_counter()
        self.started_at = datetime.now(UTC)
        self.first_token: float | None = None
        self.prompt_tokens = 0
        self.cached_tokens: int | None = None  # of prompt_tokens, served from the engine's prefix cache
        self.completion_tokens = 0
        self.reservation: Any = None
        self.lease: Any = None
        self.used_tools = False
        self.band = "default"  # the service_tier used, echoed in the answer
        self.finished = False
        self.headers: dict[str, str] = {"x-request-id": self.request_id}

    @classmethod
    def open(
        cls, services: Services, request: Request, principal: Principal, model_id: str, endpoint: str
    ) -> Call:
        """A call of ``principal`` (authenticated from the header before the body was read) to a model."""
        return cls(services, request, principal, find_model(services, model_id, principal), endpoint)

    def _public(self, exc: EngineError) -> APIError:
        return _public(exc, self.model.config.id, self.request_id)

    # admission ---------------------------------------------------------------------------------------------

    async def _admit(self, gen: GenerationRequest, inputs: list[str] | None = None) -> None:
        """Count the prompt (or the ``inputs`` to embed), reserve limits, then wait for a fair turn; any refusal
        is metered and answered."""
        try:
            await self._admission(gen, inputs)
            self.services.ledger.open(self.request_id, self._interrupted)
        except APIError:
            self._finish("rejected")
            raise
        except ClientGone:
            self._finish("cancelled")
            raise
        except BaseException as exc:
            self._finish("error")
            if isinstance(exc, Exception):  # e.g. the database behind the month's quota is down
                log.exception("request %s: admission failed", self.request_id, exc_info=exc)
                raise unavailable(
                    "The service could not admit the request just now; retry shortly."
                ) from None
            raise

    async def _admission(self, gen: GenerationRequest, inputs: list[str] | None) -> None:
        engine = self.model.engine
        try:  # OpenAI's service_tier picks the band; aiplus answers it, the upstream never sees it
            self.band = band_of(gen.extra.pop("service_tier", None), self.services.band(self.principal.tier))
        except ValueError as exc:
            raise APIError(400, str(exc), param="service_tier", code="invalid_value") from None
        self.headers["x-service-tier"] = self.band
        try:
            if inputs is None:
                self.prompt_tokens = await engine.count_prompt_tokens(gen)
            else:
                self.prompt_tokens = await engine.count_embedding_tokens(inputs)
        except EngineError as exc:
            raise self._public(exc) from None
        room = (engine.context_length or 0) - self.prompt_tokens
        if (
            gen.max_tokens is None and engine.default_max_tokens
        ):  # a default never makes a fitting prompt fail
            gen.max_tokens = min(engine.default_max_tokens, room) if room > 0 else engine.default_max_tokens
        # a request with no limit at all (an upstream's own default) reserves a typical answer, not a context
        completion_budget = gen.max_tokens or (
            min(room, DEFAULT_RESERVED_COMPLETION) if room > 0 else DEFAULT_RESERVED_COMPLETION
        )
        try:
            self.reservation = await self.services.limiter.reserve(
                self.principal, self.prompt_tokens + completion_budget
            )
        except RateLimited as exc:
            raise APIError(
                429,
                exc.message,
                type="rate_limit_error" if exc.code == "rate_limit_exceeded" else "insufficient_quota",
                code=exc.code,
                headers={**exc.headers, "retry-after": str(exc.retry_after)},
            ) from None
        self.headers.update(self.reservation.headers)
        p = self.principal
        dispatcher = self.model.dispatcher
        band = self.band
        self.lease = dispatcher.acquire_nowait(
            p.org_id, p.weight, self.prompt_tokens, completion_budget, p.tier, band
        )
        if self.lease is not None:
            return
        try:
            self.lease = await until_disconnect(
                dispatcher.acquire(p.org_id, p.weight, self.prompt_tokens, completion_budget, p.tier, band),
                self.request.receive,
            )
        except QueueTimeout as exc:
            waited = dispatcher.flex_timeout_s if band == "flex" else dispatcher.queue_timeout_s
            raise APIError(
                429,
                f"The model '{self.model.config.id}' is at capacity and your request waited "
                f"{waited:.0f} s in the queue; retry later.",
                type="rate_limit_error",
                code="queue_timeout",
                headers={"retry-after": str(exc.retry_after)},
            ) from None

    def _finish(self, status: str) -> None:
        """Release the turn and the reservation; record the one usage event (idempotent per call)."""
        if self.finished:
            return
        self.finished = True
        if self.lease is not None:
            self.lease.release()
        services = self.services
        event = self._event(status)
        total = event.prompt_tokens + event.completion_tokens
        if self.reservation is not None:
            pending = services.limiter.settle_nowait(self.reservation, total)
            if pending is not None:
                services.background(pending)
        services.ledger.record(event)
        model_id, tier = self.model.config.id, self.principal.tier
        services.recent.add(  # the control room's live view (operational only; usage is the ledger's)
            model_id,
            tier,
            event.org_id,
            self.principal.weight,
            event.prompt_tokens,
            event.completion_tokens,
            status,
            None if self.lease is None else self.lease.waited_s,
        )
        if total:
            TOKENS_SERVED.labels(model_id, tier, "prompt").inc(event.prompt_tokens)
            TOKENS_SERVED.labels(model_id, tier, "completion").inc(event.completion_tokens)

    def _interrupted(self) -> UsageEvent:
        """The event to record if this process dies before the call ends (the ledger journals it as it goes)."""
        return self._event("interrupted")

    def _event(self, status: str) -> UsageEvent:
        # billed: an answer, or the part of one the client received; not a refusal, a wait, or a failed start
        billed = status == "ok" or self.completion_tokens > 0
        prompt, completion = (self.prompt_tokens, self.completion_tokens) if billed else (0, 0)
        model_id = self.model.config.id
        cost = (
            self.services.tariff.cost_micros(model_id, self.principal.tier, prompt, completion)
            if prompt or completion
            else 0
        )
        return UsageEvent(
            request_id=self.request_id,
            org_id=self.principal.org_id,
            key_id=self.principal.key_id,
            model=model_id,
            endpoint=self.endpoint,
            prompt_tokens=prompt,
            completion_tokens=completion,
            status=status,
            used_tools=self.used_tools,
            started_at=self.started_at,
            ttft_ms=None if self.first_token is None else int((self.first_token - self.started) * 1000),
            duration_ms=int((time.perf_counter() - self.started) * 1000),
            cost_micros=cost,
            service_tier=self.band,  # "default" when an invalid service_tier was refused before it was known
        )

    def _account(self, delta: Delta) -> None:
        if delta.cached_tokens is not None:
            self.cached_tokens = delta.cached_tokens
        if delta.cached_tokens or delta.engine_s is not None:  # for the scheduler's cost model
            self.lease.engine_report(delta.cached_tokens, delta.engine_s)
        if delta.tokens:
            self.completion_tokens += delta.tokens
            self.lease.output(delta.tokens)
            if self.first_token is None:
                self.first_token = time.perf_counter()
        # engines check what their upstreams report; this keeps any count that is not one out of the ledger
        ceiling = max(self.model.engine.context_length or 0, UNKNOWN_CONTEXT)
        prompt = count(delta.prompt_tokens, ceiling)
        if prompt is not None and prompt != self.prompt_tokens:
            self.lease.adjust_prompt(prompt)
            self.prompt_tokens = prompt
        completion = count(delta.completion_tokens, ceiling)
        if completion is not None and completion != self.completion_tokens:
            self.lease.output(completion - self.completion_tokens)
            self.completion_tokens = completion
        if delta.tool_calls:
            self.used_tools = True

    # generation --------------------------------------------------------------------------------------------

    async def run(
        self, gen: GenerationRequest, *, stream: bool, include_usage: bool, echo: bool = False
    ) -> Response:
        await self._admit(gen)
        if stream:
            # the first batch before the 200: a request that fails before its first token gets its real status
            batches = self.model.engine.generate_batches(gen)
            try:
                first = await self._settled(
                    inline_until_disconnect(anext(batches, None), self.request.receive), final=False
                )
            except BaseException:
                await batches.aclose()
                raise
            events = self._stream(gen, batches, first, include_usage, echo)
            return EventStream(events, {**self.headers, **SSE_HEADERS}, self._abandon(batches))
        body = await self._settled(inline_until_disconnect(self._whole(gen, echo), self.request.receive))
        body["service_tier"] = self.band
        self._cached_details(body.get("usage"))
        return json_response(body, headers=self.headers)

    def _cached_details(self, usage: dict[str, Any] | None) -> None:
        """Say in an answer's usage how many prompt tokens the engine's prefix cache served, as OpenAI does
        (``prompt_tokens_details.cached_tokens``), when the engine said."""
        if usage is not None and self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, self.prompt_tokens)}

    async def render(self, gen: GenerationRequest, renderer: Renderer) -> Response:
        """Like ``run``, but the answer (a JSON body, or SSE events when ``gen.stream``) is ``renderer``'s."""
        await self._admit(gen)
        if not gen.stream:
            body = await self._settled(
                inline_until_disconnect(self._rendered(gen, renderer), self.request.receive)
            )
            return json_response(body, headers=self.headers)
        batches = self.model.engine.generate_batches(gen)
        try:
            first = await self._settled(
                inline_until_disconnect(anext(batches, None), self.request.receive), final=False
            )
        except BaseException:
            await batches.aclose()
            raise
        events = self._rendered_stream(batches, first, renderer)
        return EventStream(events, {**self.headers, **SSE_HEADERS}, self._abandon(batches))

    async def _rendered(self, gen: GenerationRequest, renderer: Renderer) -> dict[str, Any]:
        deltas = []
        async for delta in self.model.engine.generate(gen):
            self._account(delta)
            deltas.append(delta)
        return await renderer.whole(deltas)

    async def _accounted(self, batches: AsyncIterator[list[Delta]]) -> AsyncIterator[list[Delta]]:
        async for batch in batches:
            for delta in batch:
                self._account(delta)
            yield batch

    async def _rendered_stream(
        self, generator: AsyncIterator[list[Delta]], first: list[Delta] | None, renderer: Renderer
    ) -> AsyncIterator[bytes]:
        status = "error"
        try:
            async for chunk in renderer.events(self._accounted(_chain(first, generator))):
                yield chunk
            status = "ok"
        except EngineError as exc:
            yield renderer.failed(self._public(exc))
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        finally:
            await generator.aclose()
            self._finish(status)

    async def _abandon(self, batches: AsyncIterator[list[Delta]]) -> None:
        """For a stream that never got to run its own cleanup (the client left before the first write)."""
        await batches.aclose()
        self._finish("cancelled")

    async def _settled(self, awaitable: Any, final: bool = True) -> Any:
        """Await the answer and finish the call by how it ended: ok (when ``final``), cancelled or error."""
        try:
            result = await awaitable
        except ClientGone:
            self._finish("cancelled")
            raise
        except EngineError as exc:
            self._finish("error")
            raise self._public(exc) from None
        except BaseException:
            self._finish("error")
            raise
        if final:
            self._finish("ok")
        return result

    async def _whole(self, gen: GenerationRequest, echo: bool) -> dict[str, Any]:
        text: list[str] = []
        reasoning: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        finish = "stop"
        async for delta in self.model.engine.generate(gen):
            self._account(delta)
            text.append(delta.text)
            if delta.reasoning:
                reasoning.append(delta.reasoning)
            if delta.tool_calls:
                tool_calls.extend(delta.tool_calls)
            finish = delta.finish_reason or finish
        model_id = self.model.config.id
        content = "".join(text)
        if gen.kind == "completion":
            return protocol.text_completion(
                self.request_id,
                model_id,
                (gen.prompt or "") + content if echo else content,
                finish,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
            )
        thought: str | None = "".join(reasoning) if reasoning else None
        if self.model.config.reasoning and thought is None:
            thought, content = split_reasoning(content)
        if tool_calls and finish == "stop":
            finish = "tool_calls"
        return protocol.chat_completion(
            self.request_id,
            model_id,
            content if content or not tool_calls else None,
            thought,
            tool_calls or None,
            finish,
            self.prompt_tokens,
            self.completion_tokens,
        )

    async def _stream(
        self,
        gen: GenerationRequest,
        generator: AsyncIterator[list[Delta]],
        first: list[Delta] | None,
        include_usage: bool,
        echo: bool,
    ) -> AsyncIterator[bytes]:
        model_id = self.model.config.id
        created = int(time.time())
        chat = gen.kind == "chat"
        splitter = ThinkSplitter() if chat and self.model.config.reasoning else None
        rid = self.request_id
        status = "error"
        try:
            head: list[bytes] = []
            if chat:
                head.append(
                    sse(
                        protocol.chat_chunk(
                            rid, created, model_id, {"role": "assistant", "content": ""}, None
                        )
                    )
                )
            elif echo and gen.prompt:
                head.append(sse(protocol.text_completion(rid, model_id, gen.prompt, None, created)))
            finish = None
            async for batch in _chain(first, generator):
                out: list[bytes] = head  # what arrived together leaves in one write
                head = []
                for delta in batch:
                    self._account(delta)
                    finish = delta.finish_reason or finish
                    if not chat:
                        if delta.text or delta.finish_reason:
                            out.append(
                                sse(
                                    protocol.text_completion(
                                        rid, model_id, delta.text, delta.finish_reason, created
                                    )
                                )
                            )
                        continue
                    for piece in self._chat_pieces(delta, splitter):
                        out.append(sse(protocol.chat_chunk(rid, created, model_id, piece, None)))
                    if delta.finish_reason:
                        if splitter is not None:
                            for piece in self._flush(splitter):
                                out.append(sse(protocol.chat_chunk(rid, created, model_id, piece, None)))
                        reason = (
                            "tool_calls"
                            if self.used_tools and delta.finish_reason == "stop"
                            else delta.finish_reason
                        )
                        out.append(sse(protocol.chat_chunk(rid, created, model_id, {}, reason)))
                if out:
                    yield b"".join(out)
            tail: list[bytes] = []
            if finish is None:  # the engine ended without saying why: close the choice properly
                if splitter is not None:
                    for piece in self._flush(splitter):
                        tail.append(sse(protocol.chat_chunk(rid, created, model_id, piece, None)))
                tail.append(
                    sse(
                        protocol.chat_chunk(rid, created, model_id, {}, "stop")
                        if chat
                        else protocol.text_completion(rid, model_id, "", "stop", created)
                    )
                )
            if include_usage:
                obj = "chat.completion.chunk" if chat else "text_completion"
                usage = protocol.usage_chunk(
                    rid, created, model_id, obj, self.prompt_tokens, self.completion_tokens
                )
                self._cached_details(usage["usage"])
                tail.append(sse({**usage, "service_tier": self.band}))
            tail.append(DONE)
            status = "ok"  # before the last write: a client that leaves now has had its whole answer
            yield b"".join(tail)
        except EngineError as exc:
            yield sse(_error_body(self._public(exc)))
            yield DONE
        except (asyncio.CancelledError, GeneratorExit):
            if status != "ok":
                status = "cancelled"
            raise
        finally:
            await generator.aclose()
            self._finish(status)

    @staticmethod
    def _chat_pieces(delta: Delta, splitter: ThinkSplitter | None) -> list[dict[str, Any]]:
        pieces: list[dict[str, Any]] = []
        reasoning, content = delta.reasoning, delta.text
        if splitter is not None and content:
            r, content = splitter.feed(content)
            reasoning += r
        if reasoning:
            pieces.append({"reasoning_content": reasoning})
        if content:
            pieces.append({"content": content})
        if delta.tool_calls:
            pieces.append({"tool_calls": delta.tool_calls})
        return pieces

    @staticmethod
    def _flush(splitter: ThinkSplitter) -> list[dict[str, Any]]:
        reasoning, content = splitter.flush()
        return [
            p
            for p in (
                {"reasoning_content": reasoning} if reasoning else None,
                {"content": content} if content else None,
            )
            if p
        ]

    # embeddings --------------------------------------------------------------------------------------------

    async def _embeddings(self, inputs: list[str]) -> Any:
        result = await until_disconnect(
            self.model.engine.embed(inputs, self.request_id), self.request.receive
        )
        self.prompt_tokens = result.prompt_tokens
        return result

    async def embed(self, inputs: list[str], encoding_format: str) -> Response:
        gen = GenerationRequest(
            request_id=self.request_id, model=self.model.config.id, kind="completion", max_tokens=1
        )
        await self._admit(gen, inputs)
        result = await self._settled(self._embeddings(inputs))
        data = []
        for i, vector in enumerate(result.vectors):
            if encoding_format == "base64":
                value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model.config.id,
                "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            },
            headers=self.headers,
        )
