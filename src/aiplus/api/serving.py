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
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from aiplus import protocol
from aiplus.api.auth import authenticate
from aiplus.api.errors import APIError
from aiplus.config import ModelConfig
from aiplus.engines.base import Delta, Engine, EngineError, GenerationRequest
from aiplus.engines.reasoning import ThinkSplitter, split_reasoning
from aiplus.metering.events import UsageEvent
from aiplus.metrics import TOKENS_SERVED
from aiplus.scheduling.dispatcher import Dispatcher, QueueTimeout
from aiplus.scheduling.fair_queue import band_of
from aiplus.scheduling.limits import RateLimited
from aiplus.tenancy.auth import Principal

if TYPE_CHECKING:  # the container is built a room above (services.py); here only its attributes are read
    from aiplus.services import Services

log = logging.getLogger("aiplus")
JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"
# Request ids: unique across processes and restarts (a random per-process part), without a syscall per request.
_PROCESS_ID = os.urandom(7).hex()
_SEQUENCE = itertools.count(1)
_ID_PREFIXES = {"chat": "chatcmpl-", "completion": "cmpl-", "embedding": "emb-"}
DEFAULT_RESERVED_COMPLETION = 1024  # reserved when a request names no max_tokens and the context is unknown


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


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


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def inline_until_disconnect(awaitable: Any, receive: Receive) -> Any:
    """Like ``until_disconnect`` but runs ``awaitable`` in the calling task, with one watcher task that cancels
    the caller when the client goes: half the task switches, for the generation of every non-streamed answer.

    Only for awaitables that clean up after themselves when cancelled (``Call._whole`` does).
    """
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await awaitable
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def until_disconnect(awaitable: Any, receive: Receive) -> Any:
    """Await ``awaitable`` unless the client disconnects first; then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientGone


async def _chain(first: list[Delta] | None, rest: AsyncIterator[list[Delta]]) -> AsyncIterator[list[Delta]]:
    if first is None:
        return
    yield first
    async for batch in rest:
        yield batch


class EventStream(Response):
    """Server-sent events that stop the generator as soon as the client disconnects.

    The generator's own ``finally`` then meters what the client received and frees the engine.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str], abandon: Any):
        self.events = events
        self.abandon = abandon  # awaited if the events never start: frees what the call holds
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():
            pump.cancel()
        watcher.cancel()
        try:
            await pump
        except (asyncio.CancelledError, OSError):
            pass

    async def _pump(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.events.aclose()  # runs the stream's own cleanup, if it started
            await self.abandon  # idempotent: releases and meters a stream that never started


def _error_body(exc: EngineError) -> dict[str, Any]:
    return {"error": {"message": str(exc), "type": exc.type, "param": exc.param, "code": exc.code}}


def _api_error(exc: EngineError) -> APIError:
    return APIError(exc.status, str(exc), type=exc.type, param=exc.param, code=exc.code)


class Call:
    """One request from admission to its usage event."""

    __slots__ = (
        "band",
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
        self.request_id = f"{_ID_PREFIXES[endpoint]}{_PROCESS_ID}{next(_SEQUENCE):010x}"
        self.started = time.perf_counter()
        self.started_at = datetime.now(UTC)
        self.first_token: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reservation: Any = None
        self.lease: Any = None
        self.used_tools = False
        self.band = "default"  # the service_tier used, echoed in the answer
        self.finished = False
        self.headers: dict[str, str] = {"x-request-id": self.request_id}

    @classmethod
    async def open(cls, services: Services, request: Request, model_id: str, endpoint: str) -> Call:
        principal = await authenticate(request)
        return cls(services, request, principal, find_model(services, model_id, principal), endpoint)

    # admission ---------------------------------------------------------------------------------------------

    async def _admit(self, gen: GenerationRequest, inputs: list[str] | None = None) -> None:
        """Count the prompt (or the ``inputs`` to embed), reserve limits, then wait for a fair turn; any refusal
        is metered and answered."""
        try:
            await self._admission(gen, inputs)
        except APIError:
            self._finish("rejected")
            raise
        except ClientGone:
            self._finish("cancelled")
            raise
        except BaseException as exc:
            self._finish("error")
            if isinstance(exc, Exception):  # e.g. the database behind the month's quota is down
                log.exception("admission failed", exc_info=exc)
                raise APIError(
                    503,
                    "The service could not admit the request just now; retry shortly.",
                    code="service_unavailable",
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
            raise _api_error(exc) from None
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
        # billed: an answer, or the part of one the client received; not a refusal, a wait, or a failed start
        billed = status == "ok" or self.completion_tokens > 0
        if not billed:
            self.prompt_tokens = self.completion_tokens = 0
        total = self.prompt_tokens + self.completion_tokens
        if self.reservation is not None:
            pending = services.limiter.settle_nowait(self.reservation, total)
            if pending is not None:
                services.background(pending)
        model_id = self.model.config.id
        tier = self.principal.tier
        cost = (
            services.tariff.cost_micros(model_id, tier, self.prompt_tokens, self.completion_tokens)
            if total
            else 0
        )
        now = time.perf_counter()
        services.ledger.record(
            UsageEvent(
                request_id=self.request_id,
                org_id=self.principal.org_id,
                key_id=self.principal.key_id,
                model=model_id,
                endpoint=self.endpoint,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                status=status,
                used_tools=self.used_tools,
                started_at=self.started_at,
                ttft_ms=None if self.first_token is None else int((self.first_token - self.started) * 1000),
                duration_ms=int((now - self.started) * 1000),
                cost_micros=cost,
            )
        )
        if total:
            TOKENS_SERVED.labels(model_id, tier, "prompt").inc(self.prompt_tokens)
            TOKENS_SERVED.labels(model_id, tier, "completion").inc(self.completion_tokens)

    def _account(self, delta: Delta) -> None:
        if delta.cached_tokens or delta.engine_s is not None:  # for the scheduler's cost model only
            self.lease.engine_report(delta.cached_tokens, delta.engine_s)
        if delta.tokens:
            self.completion_tokens += delta.tokens
            self.lease.output(delta.tokens)
            if self.first_token is None:
                self.first_token = time.perf_counter()
        if delta.prompt_tokens is not None and delta.prompt_tokens != self.prompt_tokens:
            self.lease.adjust_prompt(delta.prompt_tokens)
            self.prompt_tokens = delta.prompt_tokens
        if delta.completion_tokens is not None and delta.completion_tokens != self.completion_tokens:
            self.lease.output(delta.completion_tokens - self.completion_tokens)
            self.completion_tokens = delta.completion_tokens
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
        return json_response(body, headers=self.headers)

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
            raise _api_error(exc) from None
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
                tail.append(sse({**usage, "service_tier": self.band}))
            tail.append(DONE)
            status = "ok"  # before the last write: a client that leaves now has had its whole answer
            yield b"".join(tail)
        except EngineError as exc:
            yield sse(_error_body(exc))
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
