"""Upstream engine: any OpenAI-compatible server (vLLM, SGLang, Ollama, llama-server, TGI, a hosted API).

Several replicas per model; each request goes to the healthy replica with the fewest outstanding requests. A
replica that fails before the first byte is marked down and the request is retried on another; periodic health
checks bring it back. Streams are relayed chunk by chunk as they arrive, over a keep-alive pool.

The HTTP client is aiohttp: on this path httpx cost about 1 ms of CPU per request (most of it scanning its
connection pool), aiohttp about 75 µs — see docs/benchmarks.md, "Gateway overhead".

``load`` reads each replica's Prometheus ``/metrics`` (vLLM, SGLang, llama-server ``--metrics``) for the
adaptive in-flight budget (``max_concurrency = "auto"``, ``scheduling/budget.py``); with budgets set, a
request goes to the healthy replica with the most room left under its budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from aiplus.config import ModelConfig
from aiplus.engines.base import (
    ContextLengthError,
    Delta,
    Embeddings,
    Engine,
    EngineError,
    EngineLoad,
    GenerationRequest,
    UpstreamError,
    UpstreamTimeout,
    estimate_tokens,
)
from aiplus.engines.load import cached_tokens, metrics_url, parse_load
from aiplus.engines.reported_usage import PER_MESSAGE_TOKENS as PER_INPUT_TOKENS
from aiplus.engines.reported_usage import UsageBounds

log = logging.getLogger("aiplus.upstream")
# A replica that stalled (its HTTP server still answers health checks, its engine does not) stays down this long.
STALL_BENCH_S = 30.0


def _loop_time(monotonic: float) -> float:
    """A ``time.monotonic()`` instant on the event loop's clock (for ``asyncio.timeout_at``)."""
    return asyncio.get_running_loop().time() + (monotonic - time.monotonic())


class Replica:
    __slots__ = ("benched_until", "failures", "healthy", "index", "outstanding", "url")

    def __init__(self, url: str, index: int):
        self.url = url.rstrip("/")
        self.index = index
        self.outstanding = 0
        self.healthy = True
        self.failures = 0
        self.benched_until = 0.0  # monotonic time before which health checks do not bring it back


class _BeforeFirstByte(Exception):
    """A failure that happened before the upstream sent anything: safe to retry elsewhere."""

    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale


def _seconds(retry_after: str | None) -> int:
    """An upstream's Retry-After as whole seconds (a number or an HTTP date); 1 when it gave none."""
    if retry_after:
        if retry_after.strip().isdigit():
            return max(1, int(retry_after))
        try:
            return max(1, int(parsedate_to_datetime(retry_after).timestamp() - time.time() + 0.999))
        except (TypeError, ValueError):
            pass
    return 1


def _error_from(status: int, body: bytes, retry_after: str | None = None) -> UpstreamError:
    message, type_, code, param = (
        body.decode(errors="replace")[:500] or f"upstream answered {status}",
        None,
        None,
        None,
    )
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message = err.get("message") or message
            type_, code, param = err.get("type"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if status == 429:  # the upstream is busy: the client may come back, when the upstream said
        return UpstreamError(
            "The model's upstream is at capacity; retry later.",
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retry_after=_seconds(retry_after),
        )
    if 400 <= status < 500 and status not in (401, 403, 429):
        # the client's request was bad: say so with the upstream's words and status
        return UpstreamError(
            message, status=status, type=type_ or "invalid_request_error", code=code, param=param
        )
    return UpstreamError(
        f"upstream error ({status}): {message}",
        status=502 if status < 500 else 503,
        type="upstream_error",
        code=code or "upstream_error",
    )


class UpstreamEngine(Engine):
    kind = "openai"
    remote = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._replicas = [Replica(url, i) for i, url in enumerate(config.upstreams)]
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._model_name = config.upstream_model or config.id
        self._budgets = [0] * len(self._replicas)  # adaptive budgets (0: none set, fewest outstanding first)
        per_replica = config.concurrency_max if config.adaptive else self.concurrency
        self._pool_size = max(per_replica, 1) * len(self._replicas) + 8
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task | None = None

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    def healthy(self) -> bool:
        return any(r.healthy for r in self._replicas)

    def replica_health(self) -> list[bool]:
        return [r.healthy for r in self._replicas]

    def inflight(self) -> list[int]:
        return [r.outstanding for r in self._replicas]

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=5.0, sock_read=self.config.request_timeout_s
            ),
            auto_decompress=True,
        )
        await self._check_all()
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.config.id}")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        if self._session is not None:
            await self._session.close()

    async def _check(self, replica: Replica) -> None:
        try:
            async with self._session.get(
                f"{replica.url}/models", timeout=aiohttp.ClientTimeout(total=3.0)
            ) as r:
                replica.healthy = r.status < 500 and time.monotonic() >= replica.benched_until
        except (TimeoutError, aiohttp.ClientError):
            replica.healthy = False
        if replica.healthy:
            replica.failures = 0

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self._replicas))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self._check_all()

    def _order(self) -> list[Replica]:
        """Replicas to try, best first: healthy before down, most room under the budget (else fewest
        outstanding) first."""
        budgets = self._budgets
        return sorted(self._replicas, key=lambda r: (not r.healthy, r.outstanding - budgets[r.index]))

    def set_budgets(self, budgets: list[int]) -> None:
        self._budgets[: len(budgets)] = budgets[: len(self._budgets)]

    async def _load(self, replica: Replica) -> EngineLoad | None:
        try:
            async with self._session.get(
                metrics_url(replica.url), timeout=aiohttp.ClientTimeout(total=3.0)
            ) as r:
                if r.status != 200:
                    return None
                return parse_load(await r.text())
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
            return None

    async def load(self) -> list[EngineLoad | None]:
        return list(await asyncio.gather(*(self._load(r) for r in self._replicas)))

    async def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.kind == "completion":
            chars = len(request.prompt or "")
        else:
            chars = 0
            for m in request.messages or ():
                content = m.get("content")
                chars += len(content) if isinstance(content, str) else len(orjson.dumps(content))
        estimate = (chars + 3) // 4 + 4 * len(request.messages or ())  # about four characters a token
        limit = self.config.context_length
        if limit and estimate + (request.max_tokens or 0) > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens; this request needs about "
                f"{estimate + (request.max_tokens or 0)} ({estimate} in the prompt, {request.max_tokens or 0} "
                "in the completion).",
            )
        return estimate

    def _body(self, request: GenerationRequest) -> bytes:
        body: dict[str, Any] = dict(request.extra)
        body["model"] = self._model_name
        if request.kind == "chat":
            body["messages"] = request.messages
            if request.tools is not None:
                body["tools"] = request.tools
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
            if request.response_format is not None:
                body["response_format"] = request.response_format
        else:
            body["prompt"] = request.prompt
        for name in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.stop:
            body["stop"] = request.stop
        body["stream"] = request.stream
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def _send(self, replica: Replica, path: str, body: bytes) -> aiohttp.ClientResponse:
        """Send and wait for the status line; failures here are retryable on another replica."""
        try:
            response = await self._session.post(f"{replica.url}{path}", data=body)
        except aiohttp.ServerDisconnectedError as exc:
            # most often a keep-alive connection the upstream had just closed: not a sign the replica is down
            replica.failures += 1
            raise _BeforeFirstByte(f"{replica.url}: {exc.__class__.__name__}", stale=True) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            replica.healthy = False
            replica.failures += 1
            raise _BeforeFirstByte(f"{replica.url}: {exc.__class__.__name__}: {exc}") from None
        if response.status >= 500:
            await response.read()
            response.release()
            replica.failures += 1
            if response.status in (502, 503, 504):
                replica.healthy = False
            raise _BeforeFirstByte(f"{replica.url}: status {response.status}")
        return response

    async def _open(
        self, path: str, body: bytes, window: float, stalled: set[int] | None = None
    ) -> tuple[Replica, aiohttp.ClientResponse, float]:
        """Send to the best replica that answers; return it, its response and when its ``window`` started.

        A replica that fails before sending anything, or sends no status line within ``window`` seconds, is
        passed over for the next (and a silent one benched); ``stalled`` replicas are not tried again.
        """
        errors = []
        tried_again: set[int] = set()
        stalled = set() if stalled is None else stalled
        order = [r for r in self._order() if r.index not in stalled]
        while order:
            replica = order.pop(0)
            replica.outstanding += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(window):
                    response = await self._send(replica, path, body)
            except _BeforeFirstByte as exc:
                replica.outstanding -= 1
                errors.append(str(exc))
                if exc.stale and replica.index not in tried_again:
                    tried_again.add(replica.index)
                    order.insert(0, replica)  # once more on a fresh connection
                continue
            except TimeoutError:
                replica.outstanding -= 1
                stalled.add(replica.index)
                self._stalled(replica, f"no answer within {window:g} s")
                continue
            except BaseException:  # cancelled (client gone) while waiting for the upstream
                replica.outstanding -= 1
                raise
            if response.status >= 400:
                replica.outstanding -= 1
                try:
                    data = await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    data = b""
                finally:
                    response.close()
                raise _error_from(response.status, data, response.headers.get("retry-after"))
            return replica, response, started
        if stalled and not errors:
            raise self._timeout(window)
        raise EngineError(
            f"no upstream replica of {self.config.id!r} could take the request: {'; '.join(errors)}"
        )

    def _stalled(self, replica: Replica, what: str) -> None:
        """A replica that went silent is down until a health check after ``STALL_BENCH_S`` finds it well."""
        replica.healthy = False
        replica.failures += 1
        replica.benched_until = time.monotonic() + STALL_BENCH_S
        log.warning("upstream %s of model %s stalled: %s; marked down", replica.url, self.config.id, what)

    def _timeout(self, seconds: float) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The model '{self.config.id}' did not answer within {seconds:g} s; retry later."
        )

    async def generate_batches(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        """The answer in batches, under the model's deadlines: the first token within ``first_byte_timeout_s``
        (else the next replica is tried, as nothing has been sent yet), then no silence longer than
        ``idle_timeout_s``; a non-streamed answer within ``request_timeout_s`` in all."""
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        body = self._body(request)
        config = self.config
        window = config.first_byte_timeout_s if request.stream else config.request_timeout_s
        stalled: set[int] = set()
        while True:
            replica, response, started = await self._open(path, body, window, stalled)
            bounds = UsageBounds.of(request, config.context_length, replica.url)
            if request.stream:
                answer = self._relay(request, response, bounds)
            else:
                answer = self._whole_answer(request, response, bounds)
            finished = False
            try:
                try:
                    async with asyncio.timeout_at(_loop_time(started + window)):
                        batch = await anext(answer, None)
                except TimeoutError:
                    stalled.add(replica.index)
                    self._stalled(replica, f"no first token within {window:g} s")
                    if request.stream and len(stalled) < len(self._replicas):
                        continue  # nothing was sent to the client yet: another replica may answer
                    raise self._timeout(window) from None
                while batch is not None:
                    yield batch
                    try:
                        async with asyncio.timeout(config.idle_timeout_s):
                            batch = await anext(answer, None)
                    except TimeoutError:
                        self._stalled(replica, f"silent for {config.idle_timeout_s:g} s mid-answer")
                        raise self._timeout(config.idle_timeout_s) from None
                finished = True
                return
            except aiohttp.ClientError as exc:
                raise EngineError(
                    f"upstream {replica.url} failed mid-answer: {exc.__class__.__name__}"
                ) from None
            finally:
                await answer.aclose()
                replica.outstanding -= 1
                if finished:
                    response.release()  # the connection goes back to the pool
                else:
                    response.close()  # abandoned mid-answer: closing the connection tells the upstream to stop

    async def _whole_answer(
        self, request: GenerationRequest, response: aiohttp.ClientResponse, bounds: UsageBounds
    ) -> AsyncIterator[list[Delta]]:
        yield [self._whole(request, await response.read(), bounds)]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        batches = self.generate_batches(request)
        try:
            async for batch in batches:
                for delta in batch:
                    yield delta
        finally:
            await batches.aclose()

    def _whole(self, request: GenerationRequest, data: bytes, bounds: UsageBounds) -> Delta:
        try:
            body = orjson.loads(data)
            choice = body["choices"][0]
            if not isinstance(choice, dict):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise EngineError("upstream sent an answer that is not an OpenAI completion") from None
        if request.kind == "chat":
            message = choice.get("message") or {}
            text = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            tool_calls = message.get("tool_calls")
        else:
            text, reasoning, tool_calls = choice.get("text") or "", "", None
        prompt, completion = bounds.usage(body.get("usage"))
        return Delta(
            cached_tokens=cached_tokens(body.get("usage"), prompt),
            text=text,
            reasoning=reasoning,
            tool_calls=tool_calls,
            finish_reason=choice.get("finish_reason") or "stop",
            tokens=completion if completion is not None else estimate_tokens(text + reasoning),
            prompt_tokens=prompt,
            completion_tokens=completion,
        )

    async def _relay(
        self, request: GenerationRequest, response: aiohttp.ClientResponse, bounds: UsageBounds
    ) -> AsyncIterator[list[Delta]]:
        """The upstream's SSE events as deltas, one list per network read: what arrived together leaves together."""
        chat = request.kind == "chat"
        pending = b""
        async for data in response.content.iter_any():
            *lines, pending = (pending + data).split(b"\n")
            batch: list[Delta] = []
            done = False
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                self._event(payload, chat, batch, bounds)
            if batch:
                yield batch
            if done:
                return

    @staticmethod
    def _event(payload: bytes, chat: bool, batch: list[Delta], bounds: UsageBounds) -> None:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        choices = chunk.get("choices") or ()
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            if chat:
                d = choice.get("delta") or {}
                text = d.get("content") or ""
                reasoning = d.get("reasoning_content") or d.get("reasoning") or ""
                tool_calls = d.get("tool_calls")
            else:
                text, reasoning, tool_calls = choice.get("text") or "", "", None
            finish = choice.get("finish_reason")
            if text or reasoning or tool_calls or finish:
                batch.append(
                    Delta(
                        text=text,
                        reasoning=reasoning,
                        tool_calls=tool_calls,
                        finish_reason=finish,
                        tokens=1 if (text or reasoning or tool_calls) else 0,
                    )
                )
        usage = chunk.get("usage")
        if usage:
            prompt, completion = bounds.usage(usage)
            batch.append(
                Delta(
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cached_tokens=cached_tokens(usage, prompt),
                )
            )

    async def embed(self, inputs: list[str], request_id: str) -> Embeddings:
        body = orjson.dumps({"model": self._model_name, "input": inputs})
        replica, response, _ = await self._open("/embeddings", body, self.config.request_timeout_s)
        try:
            data = orjson.loads(await response.read())
            vectors = [item["embedding"] for item in sorted(data["data"], key=lambda d: d.get("index", 0))]
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise EngineError(f"upstream failed mid-answer: {exc.__class__.__name__}") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise EngineError("upstream sent an answer that is not an OpenAI embedding list") from None
        finally:
            replica.outstanding -= 1
            response.release()
        size = sum(len(t.encode()) + PER_INPUT_TOKENS for t in inputs)
        bounds = UsageBounds(size, 0, replica.url)
        reported, _ = bounds.usage(data.get("usage") if isinstance(data, dict) else None)
        tokens = reported or sum(estimate_tokens(t) for t in inputs)
        return Embeddings(vectors=vectors, prompt_tokens=tokens)
