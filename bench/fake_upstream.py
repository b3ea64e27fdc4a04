"""A minimal, fast OpenAI-compatible upstream for overhead benchmarks.

Answers ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true, with a final usage chunk when
``stream_options.include_usage`` is set), ``POST /v1/completions``, ``GET /v1/models``, ``GET /healthz`` and ``GET /bench/stats`` (requests and connections so far)
with fixed text and fixed usage. It is a raw asyncio Protocol on uvloop with httptools parsing and responses
pre-encoded per model name, so that it answers in tens of microseconds and the gateway in front of it is
what a benchmark measures.

Run: ``python bench/fake_upstream.py --port 9100``; it prints ``READY <port>`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import httptools
import orjson

PROMPT_TOKENS = 12
PIECES = ("Hello", " from", " the", " fake", " upstream", ".")
COMPLETION_TOKENS = len(PIECES)
CREATED = 1_700_000_000
MAX_CACHED_MODELS = 64


def _usage() -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _http(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """Pre-encoded responses for one model name (built once, reused for every request)."""

    def __init__(self, model: str) -> None:
        text = "".join(PIECES)
        chat = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(),
        }
        self.chat = _http("200 OK", orjson.dumps(chat))
        completion = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(),
        }
        self.completion = _http("200 OK", orjson.dumps(completion))
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

        def event(delta: dict, finish: str | None, usage: dict | None = None, choices: bool = True) -> bytes:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                if choices
                else [],
            }
            if usage is not None:
                chunk["usage"] = usage
            return _chunked(b"data: " + orjson.dumps(chunk) + b"\n\n")

        first = event({"role": "assistant", "content": ""}, None)
        pieces = [event({"content": p}, None) for p in PIECES]
        last = event({}, "stop")
        usage = event({}, None, _usage(), choices=False)
        done = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.stream_parts = [head + first, *pieces, last]
        self.stream = b"".join(self.stream_parts) + done
        self.stream_usage = b"".join(self.stream_parts) + usage + done
        self.done = done
        self.usage_event = usage


MODELS_BODY = _http(
    "200 OK",
    orjson.dumps(
        {
            "object": "list",
            "data": [{"id": "fake", "object": "model", "created": CREATED, "owned_by": "bench"}],
        }
    ),
)
HEALTH = _http("200 OK", b'{"status":"ok"}')
NOT_FOUND = _http("404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
BAD_REQUEST = _http("400 Bad Request", b'{"error":{"message":"bad json","type":"invalid_request_error"}}')


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer from the pre-encoded cache."""

    __slots__ = ("body", "parser", "server", "transport", "url")

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        keep_alive = self.parser.should_keep_alive()
        self.server.requests += 1
        self.server.answer(self.transport, self.parser.get_method(), url.split(b"?", 1)[0], body)
        if not keep_alive:
            self.transport.close()


class FakeUpstream:
    """The server: routes a parsed request to a cached answer; streams optionally paced by ``chunk_delay``."""

    def __init__(self, chunk_delay: float = 0.0) -> None:
        self.chunk_delay = chunk_delay
        self.answers: dict[str, Answers] = {}
        self.requests = 0
        self.connections = 0

    def answers_for(self, model: str) -> Answers:
        answers = self.answers.get(model)
        if answers is None:
            if len(self.answers) >= MAX_CACHED_MODELS:
                self.answers.clear()
            answers = self.answers[model] = Answers(model)
        return answers

    def answer(self, transport: asyncio.Transport, method: bytes, path: bytes, body: bytes) -> None:
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            try:
                req = orjson.loads(body)
                answers = self.answers_for(str(req.get("model") or "fake"))
            except (orjson.JSONDecodeError, AttributeError):
                transport.write(BAD_REQUEST)
                return
            if not req.get("stream"):
                transport.write(answers.chat)
                return
            options = req.get("stream_options") or {}
            with_usage = bool(options.get("include_usage"))
            if self.chunk_delay <= 0:
                transport.write(answers.stream_usage if with_usage else answers.stream)
            else:
                asyncio.get_running_loop().create_task(self._paced(transport, answers, with_usage))
        elif method == b"POST" and path in (b"/v1/completions", b"/completions"):
            try:
                answers = self.answers_for(str(orjson.loads(body).get("model") or "fake"))
            except (orjson.JSONDecodeError, AttributeError):
                transport.write(BAD_REQUEST)
                return
            transport.write(answers.completion)
        elif method == b"GET" and path in (b"/v1/models", b"/models"):
            transport.write(MODELS_BODY)
        elif method == b"GET" and path == b"/bench/stats":
            # Connections accepted so far: a gateway that keeps its upstream connections alive opens few.
            transport.write(
                _http("200 OK", b'{"requests":%d,"connections":%d}' % (self.requests, self.connections))
            )
        elif method == b"GET" and path in (b"/healthz", b"/health", b"/"):
            transport.write(HEALTH)
        else:
            transport.write(NOT_FOUND)

    async def _paced(self, transport: asyncio.Transport, answers: Answers, with_usage: bool) -> None:
        # Pacing lets a benchmark tell a relaying gateway from a buffering one (time to first token).
        for part in answers.stream_parts:
            if transport.is_closing():
                return
            transport.write(part)
            await asyncio.sleep(self.chunk_delay)
        if not transport.is_closing():
            transport.write((answers.usage_event if with_usage else b"") + answers.done)


async def serve(host: str, port: int, chunk_delay: float) -> None:
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream(chunk_delay)
    server = await loop.create_server(
        lambda: UpstreamProtocol(upstream), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()
    print(f"served {upstream.requests} requests", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the READY line)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between stream chunks")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("uvloop not installed: using the default asyncio loop", file=sys.stderr)
    asyncio.run(serve(args.host, args.port, args.chunk_delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
