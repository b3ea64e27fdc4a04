"""A stand-in for a remote GPU server whose model calls tools (the embedded SmolLM2 cannot).

Chat completions only, as vLLM serves them, and as strict about the conversation: a ``tool`` message must answer
a ``tool_calls`` entry of an earlier assistant message, else 400. Its answers describe what it was sent, so tests
can see that a conversation was replayed whole:
- tools given and the last message from the user: a call of the first tool, ``{"city": <the user's text>}``;
- otherwise text: ``"turns=<user messages> calls=<tool calls> results=<tool results> last=<last message's text>"``.
Streams split the call into name and argument pieces, as real servers do. ``GET /seen`` returns the bodies sent.

Run as ``python tool_upstream.py PORT``.
"""

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

SEEN: list[dict] = []


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content)
    return content or ""


def _check(messages: list[dict]) -> str | None:
    calls: set[str] = set()
    for i, m in enumerate(messages):
        for call in m.get("tool_calls") or ():
            calls.add(call["id"])
        if m["role"] == "tool" and m.get("tool_call_id") not in calls:
            return f"messages[{i}]: tool message for unknown tool_call_id {m.get('tool_call_id')!r}"
    return None


def _answer(body: dict) -> tuple[str | None, dict | None]:
    messages = body["messages"]
    last = messages[-1]
    if body.get("tools") and body.get("tool_choice") != "none" and last["role"] == "user":
        n = sum(len(m.get("tool_calls") or ()) for m in messages)
        name = body["tools"][0]["function"]["name"]
        return None, {
            "id": f"call_{n + 1}",
            "name": name,
            "arguments": json.dumps({"city": _text(last["content"])}),
        }
    users = sum(m["role"] == "user" for m in messages)
    calls = sum(len(m.get("tool_calls") or ()) for m in messages)
    results = sum(m["role"] == "tool" for m in messages)
    return f"turns={users} calls={calls} results={results} last={_text(last['content'])}", None


async def chat(request: Request):
    body = await request.json()
    SEEN.append(body)
    problem = _check(body["messages"])
    if problem:
        return JSONResponse({"error": {"message": problem, "type": "invalid_request_error"}}, status_code=400)
    text, call = _answer(body)
    usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    base = {"id": "up-1", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        message = {"role": "assistant", "content": text}
        if call:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ]
        finish = "tool_calls" if call else "stop"
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }
        )

    def chunk(delta, finish=None, **extra):
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return (
            "data: "
            + json.dumps({**base, "object": "chat.completion.chunk", "choices": choices, **extra})
            + "\n\n"
        )

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        if call:
            head = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            yield chunk({"tool_calls": [head]})
            half = len(call["arguments"]) // 2
            for piece in (call["arguments"][:half], call["arguments"][half:]):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield chunk({}, "tool_calls")
        else:
            for word in text.split(" "):
                yield chunk({"content": word + " "})
            yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield (
                "data: "
                + json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                + "\n\n"
            )
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(_: Request):
    return JSONResponse({"object": "list", "data": [{"id": "tool-model", "object": "model"}]})


async def seen(_: Request):
    return JSONResponse(SEEN)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/seen", seen),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
