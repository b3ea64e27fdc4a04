"""A stand-in for a remote DeepSeek-R1 server: answers with <think> text, and with a tool call when given tools.

Run as ``python think_upstream.py PORT``. Only for what is outside this machine (a remote GPU server).
"""

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

PIECES = ["<thi", "nk>\nI should add ", "two and two.</th", "ink>\n\n", "The answer ", "is 4."]
USAGE = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
SEEN: list[dict] = []


def tool_call(body):
    name = body["tools"][0]["function"]["name"]
    return [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"city": "Paris"})},
        }
    ]


async def chat(request: Request):
    body = await request.json()
    SEEN.append(body)
    base = {"id": "up-1", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": tool_call(body)}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": "".join(PIECES)}
            finish = "stop"
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "usage": USAGE,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }
        )

    async def events():
        def chunk(delta, finish=None):
            return (
                "data: "
                + json.dumps(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                )
                + "\n\n"
            )

        yield chunk({"role": "assistant", "content": ""})
        if body.get("tools"):
            yield chunk({"tool_calls": tool_call(body)})
            yield chunk({}, "tool_calls")
        else:
            for piece in PIECES:
                yield chunk({"content": piece})
            yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield (
                "data: "
                + json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
                + "\n\n"
            )
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def last(request: Request):
    return JSONResponse(SEEN[-1] if SEEN else {})


async def models(request: Request):
    return JSONResponse(
        {"object": "list", "data": [{"id": "r1", "object": "model", "created": 1, "owned_by": "x"}]}
    )


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/last", last),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
