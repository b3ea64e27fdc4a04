"""How an answer reaches the client: JSON bodies, server-sent events, and noticing that the client has left.

Plumbing shared by every route that answers a call (``serving.Call``); it knows nothing of calls themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

JSON = "application/json"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


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
