"""A closed-loop HTTP/1.1 load generator on raw keep-alive connections (uvloop + httptools).

Each of ``concurrency`` connections sends one request, waits for the whole response, and sends the next,
until ``duration`` seconds or ``max_requests`` have passed (bounded in both). Requests of the first
``warmup`` seconds are sent but not counted. For each counted request it records the latency (request
written to response complete), the time to first byte, and for streams the time to first token: the
first SSE event whose delta carries non-empty content.

Run in its own process: ``python bench/loadgen.py --port 9100 --concurrency 16 --duration 5 [--stream]``
prints one JSON object with the results. Loopback only: it refuses any other host.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import resource
import socket
import sys
import time
from array import array
from dataclasses import dataclass, field

import httptools
import orjson

LOOPBACK_NAMES = {"localhost"}


def _require_loopback(host: str) -> None:
    if host in LOOPBACK_NAMES:
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"loadgen: refusing non-loopback target {host!r}")


def chat_body(model: str, stream: bool, max_tokens: int = 16) -> bytes:
    """The request every target gets: a short chat, optionally streamed with a usage chunk."""
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def build_request(host: str, port: int, path: str, body: bytes, api_key: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "User-Agent: aiplus-bench-loadgen",
        "Accept: */*",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Results:
    latency: array = field(default_factory=lambda: array("d"))
    ttfb: array = field(default_factory=lambda: array("d"))
    ttft: array = field(default_factory=lambda: array("d"))
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    no_token: int = 0
    sample_error: str = ""


class ClientProtocol(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends the pre-encoded request and awaits the full answer."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.t_first_byte = 0.0
        self.t_first_token = 0.0
        self.sse_buffer = b""
        self.body: list[bytes] = []
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def request(self, data: bytes) -> asyncio.Future:
        self.t_first_byte = 0.0
        self.t_first_token = 0.0
        self.sse_buffer = b""
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if not self.t_first_byte:
            self.t_first_byte = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self.stream or self.parser.get_status_code() != 200:
            if len(self.body) < 4:
                self.body.append(body)
            return
        if self.t_first_token:
            return
        # Look for the first event with non-empty content; events may be split across body pieces.
        buf = self.sse_buffer + body
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and _has_content(line[5:].strip()):
                    self.t_first_token = time.perf_counter()
                    self.sse_buffer = b""
                    return
        self.sse_buffer = buf

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())


def _has_content(payload: bytes) -> bool:
    if not payload or payload == b"[DONE]":
        return False
    try:
        chunk = orjson.loads(payload)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                return True
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return False


async def _connect(host: str, port: int, stream: bool) -> ClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: ClientProtocol(stream), host, port)
    return proto


async def _worker(host: str, port: int, stream: bool, request: bytes, res: Results, state: dict) -> None:
    proto: ClientProtocol | None = None
    while not state["stop"]:
        try:
            if proto is None or proto.transport.is_closing() or not proto.keep_alive:
                if proto is not None:
                    proto.transport.close()
                proto = await _connect(host, port, stream)
            t0 = time.perf_counter()
            status = await asyncio.wait_for(proto.request(request), state["timeout"])
            t1 = time.perf_counter()
        except (TimeoutError, OSError, ConnectionError, httptools.HttpParserError) as exc:
            if state["counting"]:
                res.errors += 1
                res.sample_error = res.sample_error or f"{type(exc).__name__}: {exc}"
            if proto is not None:
                proto.transport.close()
            proto = None
            await asyncio.sleep(0.01)
            continue
        state["sent"] += 1
        if state["sent"] >= state["max_requests"]:
            state["stop"] = True
        if not state["counting"]:
            continue
        res.statuses[status] = res.statuses.get(status, 0) + 1
        if status != 200:
            res.errors += 1
            if not res.sample_error:
                res.sample_error = f"HTTP {status}: {b''.join(proto.body)[:300].decode(errors='replace')}"
            continue
        res.ok += 1
        res.latency.append(t1 - t0)
        res.ttfb.append((proto.t_first_byte or t1) - t0)
        if stream:
            if proto.t_first_token:
                res.ttft.append(proto.t_first_token - t0)
            else:
                res.no_token += 1
    if proto is not None:
        proto.transport.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize(values: array) -> dict[str, float | None]:
    """Percentiles in milliseconds; None when nothing was measured (JSON has no NaN)."""
    ordered = sorted(values)
    if not ordered:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p90_ms": percentile(ordered, 90) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "mean_ms": sum(ordered) / len(ordered) * 1000,
    }


async def run_load(
    host: str,
    port: int,
    *,
    path: str = "/v1/chat/completions",
    model: str = "fake",
    api_key: str | None = None,
    stream: bool = False,
    concurrency: int = 1,
    duration: float = 5.0,
    warmup: float = 1.0,
    max_requests: int = 1_000_000,
    timeout: float = 60.0,
) -> dict:
    """Drive the target and return the results as a plain dict (what the CLI prints as JSON)."""
    _require_loopback(host)
    request = build_request(host, port, path, chat_body(model, stream), api_key)
    res = Results()
    state = {
        "stop": False,
        "counting": warmup <= 0,
        "sent": 0,
        "max_requests": max_requests,
        "timeout": timeout,
    }
    workers = [
        asyncio.create_task(_worker(host, port, stream, request, res, state)) for _ in range(concurrency)
    ]
    started = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if warmup > 0:
        await asyncio.sleep(warmup)
        state["counting"] = True
    t0 = time.perf_counter()
    sent0 = state["sent"]
    deadline = started + warmup + duration
    while not state["stop"] and time.perf_counter() < deadline:
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
    state["counting"] = False
    elapsed = time.perf_counter() - t0
    state["stop"] = True
    _done, pending = await asyncio.wait(workers, timeout=timeout)
    for task in pending:
        task.cancel()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    counted = res.ok + res.errors
    out = {
        "concurrency": concurrency,
        "stream": stream,
        "elapsed_s": elapsed,
        "requests": counted,
        "sent_total": state["sent"],
        "sent_measured": state["sent"] - sent0,
        "ok": res.ok,
        "errors": res.errors,
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "sample_error": res.sample_error,
        "rps": res.ok / elapsed if elapsed > 0 else 0.0,
        "latency": summarize(res.latency),
        "ttfb": summarize(res.ttfb),
        "loadgen_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }
    if stream:
        out["ttft"] = summarize(res.ttft)
        out["no_token"] = res.no_token
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--model", default="fake")
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY"))
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (after warmup)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not counted")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="hard bound on requests sent")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run_load(
            args.host,
            args.port,
            path=args.path,
            model=args.model,
            api_key=args.api_key,
            stream=args.stream,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            max_requests=args.max_requests,
            timeout=args.timeout,
        )
    )
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
