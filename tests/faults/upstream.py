"""A stand-in for a remote GPU server (OpenAI-compatible) whose fault is switched while it runs.

Run as ``python upstream.py PORT``; ``POST /fault {"mode": ..., "retry_after": "7"}`` switches it, ``GET /served``
counts the generations it answered. Only for what is outside this machine (a remote GPU server); loopback only.

Modes: ``ok``; ``429`` (with ``Retry-After`` when given), ``500``, ``401`` (an error status and an OpenAI error
body naming an internal host, as real upstreams' errors do); ``reset`` (the connection is aborted before an
answer); ``cut`` (a stream aborted after two chunks); ``stall`` (nothing is sent, for at most an hour).
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

PIECES = ["The ", "answer ", "is ", "four", "."]
state = {"mode": "ok", "retry_after": None, "served": 0}


async def fault(request: web.Request) -> web.Response:
    body = await request.json()
    state["mode"] = body.get("mode", "ok")
    state["retry_after"] = body.get("retry_after")
    return web.json_response(state)


async def served(_: web.Request) -> web.Response:
    return web.json_response(state)


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "created": 1}]})


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    mode = state["mode"]
    if mode in ("429", "500", "401"):
        headers = {"retry-after": str(state["retry_after"])} if state["retry_after"] else {}
        error = {"message": "gpu-node-7.internal:8000 said no (RuntimeError)", "type": "server_error"}
        return web.json_response({"error": error}, status=int(mode), headers=headers)
    if mode == "reset":
        request.transport.abort()
        await asyncio.sleep(1)
        return web.Response()
    if mode == "stall":
        await asyncio.sleep(3600)
    chat = "messages" in body
    base = {"id": "up-1", "created": 1, "model": body["model"]}
    usage = {"prompt_tokens": 11, "completion_tokens": len(PIECES), "total_tokens": 11 + len(PIECES)}
    if not body.get("stream"):
        state["served"] += 1
        text = "".join(PIECES)
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        kind = "chat.completion" if chat else "text_completion"
        return web.json_response({**base, "object": kind, "usage": usage, "choices": [choice]})
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    kind = "chat.completion.chunk" if chat else "text_completion"

    async def event(choices: list, **extra) -> None:
        payload = {**base, "object": kind, "choices": choices, **extra}
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    for i, piece in enumerate(PIECES):
        if mode == "cut" and i == 2:
            request.transport.abort()
            return response
        delta = {"delta": {"content": piece}} if chat else {"text": piece}
        await event([{"index": 0, "finish_reason": None, **delta}])
    await event([{"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}])
    if (body.get("stream_options") or {}).get("include_usage"):
        await event([], usage=usage)
    await response.write(b"data: [DONE]\n\n")
    state["served"] += 1
    return response


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/chat/completions", generate)
    application.router.add_post("/v1/completions", generate)
    application.router.add_get("/v1/models", models)
    application.router.add_post("/fault", fault)
    application.router.add_get("/served", served)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
