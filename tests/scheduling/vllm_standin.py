"""A stand-in for a remote vLLM server with a hidden capacity, for the scheduling live tests.

Run as ``python vllm_standin.py PORT CAPACITY``. At most CAPACITY requests generate at once; the rest wait in
its own FIFO queue, and ``/metrics`` publishes ``vllm:num_requests_waiting``, ``vllm:num_requests_running`` and
``vllm:kv_cache_usage_perc`` as vLLM does. Each output token takes ``TOKEN_S``; usage reports half of the prompt
as served from the prefix cache (``prompt_tokens_details.cached_tokens``). ``/stats`` says the largest waiting
queue seen. Only for what is outside this machine (a remote GPU server).
"""

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

TOKEN_S = 0.02
STATE = {"waiting": 0, "running": 0, "max_waiting": 0, "served": 0}
SLOTS: asyncio.Semaphore | None = None


async def chat(request: Request):
    global SLOTS
    if SLOTS is None:
        SLOTS = asyncio.Semaphore(int(sys.argv[2]))
    body = await request.json()
    prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4 + 1
    n = int(body.get("max_tokens") or 16)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": n,
        "total_tokens": prompt + n,
        "prompt_tokens_details": {"cached_tokens": prompt // 2},
    }
    base = {"id": "up-1", "created": 1, "model": body["model"], "object": "chat.completion.chunk"}

    async def events():
        STATE["waiting"] += 1
        STATE["max_waiting"] = max(STATE["max_waiting"], STATE["waiting"])
        async with SLOTS:
            STATE["waiting"] -= 1
            STATE["running"] += 1
            try:
                for i in range(n):
                    await asyncio.sleep(TOKEN_S)
                    finish = "length" if i == n - 1 else None
                    choice = {"index": 0, "delta": {"content": " tok"}, "finish_reason": finish}
                    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                STATE["served"] += 1
            finally:
                STATE["running"] -= 1

    if body.get("stream"):
        return StreamingResponse(events(), media_type="text/event-stream")
    async for _ in events():
        pass
    choice = {"index": 0, "message": {"role": "assistant", "content": " tok" * n}, "finish_reason": "length"}
    return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})


async def metrics(request: Request):
    capacity = int(sys.argv[2])
    return PlainTextResponse(
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="standin"}} {float(STATE["waiting"])}\n'
        f'vllm:num_requests_running{{model_name="standin"}} {float(STATE["running"])}\n'
        f'vllm:kv_cache_usage_perc{{model_name="standin"}} {0.8 * STATE["running"] / capacity}\n'
    )


async def stats(request: Request):
    return JSONResponse(STATE)


async def models(request: Request):
    return JSONResponse({"object": "list", "data": [{"id": "standin", "object": "model", "owned_by": "x"}]})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/metrics", metrics),
        Route("/stats", stats),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
