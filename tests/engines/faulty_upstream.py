"""A stand-in for a remote GPU server that misbehaves: it lies about usage, or stalls.

Run as ``python faulty_upstream.py PORT [STALL]``. Only for what is outside this machine (a remote GPU server).

- The last user message picks the usage it reports: ``huge`` (2**64-1), ``negative``, ``string``, ``float``,
  ``not-an-object``, ``too-many`` (more completion tokens than ``max_tokens``); anything else gets honest usage.
  ``slow`` streams 100 pieces, one every 0.3 s.
- ``STALL`` makes every generation stall (``/v1/models`` keeps answering, as a wedged engine's HTTP server often
  does): ``first`` sends nothing at all; ``idle`` sends the status line and two chunks, then nothing.
"""

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

PIECES = ["The ", "answer ", "is ", "four", "."]
HONEST = {"prompt_tokens": 11, "completion_tokens": len(PIECES)}
LIES = {
    "huge": {"prompt_tokens": 2**64 - 1, "completion_tokens": 2**64 - 1},
    "negative": {"prompt_tokens": -5, "completion_tokens": -3},
    "string": {"prompt_tokens": "11", "completion_tokens": "5"},
    "float": {"prompt_tokens": 1e300, "completion_tokens": 5.5},
    "not-an-object": "lots",
    "too-many": {"prompt_tokens": 11, "completion_tokens": 1_000_000},
}
STALL = sys.argv[2] if len(sys.argv) > 2 else ""
SERVED = {"requests": 0}


def usage_for(body: dict) -> object:
    messages = body.get("messages") or [{"content": body.get("prompt", "")}]
    return LIES.get(str(messages[-1].get("content")), HONEST)


async def generate(request: Request):
    body = await request.json()
    SERVED["requests"] += 1
    if STALL == "first":
        await asyncio.sleep(3600)
    usage = usage_for(body)
    chat = "messages" in body
    base = {"id": "up-1", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        text = "".join(PIECES)
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        kind = "chat.completion" if chat else "text_completion"
        return JSONResponse({**base, "object": kind, "usage": usage, "choices": [choice]})

    def event(choices, **extra) -> str:
        kind = "chat.completion.chunk" if chat else "text_completion"
        return "data: " + json.dumps({**base, "object": kind, "choices": choices, **extra}) + "\n\n"

    slow = usage_for(body) is HONEST and "slow" in json.dumps(body.get("messages", ""))
    pieces = ["word "] * 100 if slow else PIECES

    async def events():
        for i, piece in enumerate(pieces):
            if slow:
                await asyncio.sleep(0.3)
            if STALL == "idle" and i == 2:
                await asyncio.sleep(3600)
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            yield event([{"index": 0, "finish_reason": None, **delta}])
        yield event([{"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request):
    return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model", "created": 1}]})


async def served(request: Request):
    return JSONResponse(SERVED)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/models", models),
        Route("/served", served),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
