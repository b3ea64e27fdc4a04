"""The OpenAI-compatible edge: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.

Handlers are plain Starlette endpoints (no dependency-injection layer on the hot path): parse and validate with
``protocol``, then hand the call to ``serving.Call``, which admits, dispatches, generates and meters it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from aiplus import protocol
from aiplus.api.auth import authenticate
from aiplus.api.errors import APIError
from aiplus.api.serving import Call, find_model
from aiplus.api.streams import json_response
from aiplus.engines.base import GenerationRequest

if TYPE_CHECKING:
    from aiplus.services import Services


def _param(loc: tuple) -> str:
    parts = [
        str(p) for p in loc if not (isinstance(p, str) and p in ("str", "list[str]", "int", "float", "bool"))
    ]
    return ".".join(p if not p.isdigit() else f"[{p}]" for p in parts).replace(".[", "[") or "body"


def invalid(exc: ValidationError) -> APIError:
    err = exc.errors(include_url=False)[0]
    param = _param(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        message = f"'{param}' is a required property"
    elif err["type"] == "extra_forbidden":
        message = f"unrecognized request argument: {param}"
    else:
        message = f"Invalid value for '{param}': {message}"
    return APIError(
        400,
        message,
        param=param,
        code="invalid_value" if err["type"] != "missing" else "missing_required_parameter",
    )


def _too_deep(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit``: orjson parses 1,024 levels but writes only 255,
    and a request is re-serialized on its way to an upstream (a 500 before this check)."""
    level: list[Any] = [data]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


async def _read_body(request: Request, limit: int) -> bytes:
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(
                    413, f"request body exceeds the limit of {limit} bytes", code="request_too_large"
                )
            chunks.append(chunk)
    except ClientDisconnect:  # the client left mid-body: its mistake, not a server error
        raise APIError(
            400, "the connection closed before the whole body arrived", code="invalid_json"
        ) from None
    return b"".join(chunks)


async def read_json(request: Request, limit: int, deadline_s: float = 30.0) -> dict[str, Any]:
    """The body as a JSON object, or a 400/408/413 that says what is wrong with it. A body that does not
    arrive within ``deadline_s`` is refused (a slow sender would otherwise hold its connection for ever)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(
            413, f"request body is {length} bytes; the limit is {limit} bytes", code="request_too_large"
        )
    try:
        async with asyncio.timeout(deadline_s):
            body = await _read_body(request, limit)
    except TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {deadline_s:g} s", code="request_timeout"
        ) from None
    if not body:
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    if _too_deep(data, protocol.MAX_JSON_DEPTH):
        raise APIError(
            400,
            f"request body nests arrays and objects more than {protocol.MAX_JSON_DEPTH} levels deep",
            code="invalid_json",
        )
    return data


def parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "response_format",
        "user",
    }
)
_COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "user",
        "echo",
    }
)


async def read_body(request: Request, services: Services) -> dict[str, Any]:
    """The request's JSON body within the server's size and time limits (read after authentication)."""
    settings = services.settings
    return await read_json(request, settings.max_body_bytes, settings.body_timeout_s)


async def chat_completions(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = await authenticate(request)  # from the header, before a byte of the body is read
    data = await read_body(request, services)
    body: protocol.ChatCompletionRequest = parse(protocol.ChatCompletionRequest, data)
    call = Call.open(services, request, principal, body.model, "chat")
    gen = GenerationRequest(
        request_id=call.request_id,
        model=body.model,
        kind="chat",
        stream=body.stream,
        messages=data["messages"],  # validated above; passed on as sent (no re-serialization per request)
        max_tokens=body.token_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_list,
        seed=body.seed,
        tools=data.get("tools") or None,
        tool_choice=body.tool_choice,
        response_format=data.get("response_format"),
        extra={k: v for k, v in data.items() if k not in _CHAT_FIELDS},
    )
    return await call.run(gen, stream=body.stream, include_usage=body.include_usage)


async def completions(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = await authenticate(request)  # from the header, before a byte of the body is read
    data = await read_body(request, services)
    body: protocol.CompletionRequest = parse(protocol.CompletionRequest, data)
    call = Call.open(services, request, principal, body.model, "completion")
    gen = GenerationRequest(
        request_id=call.request_id,
        model=body.model,
        kind="completion",
        stream=body.stream,
        prompt=body.prompt_text,
        max_tokens=body.max_tokens or 16,  # OpenAI's default for the legacy completions endpoint
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_list,
        seed=body.seed,
        extra={k: v for k, v in data.items() if k not in _COMPLETION_FIELDS},
    )
    return await call.run(gen, stream=body.stream, include_usage=body.include_usage, echo=body.echo)


async def embeddings(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = await authenticate(request)  # from the header, before a byte of the body is read
    data = await read_body(request, services)
    body: protocol.EmbeddingRequest = parse(protocol.EmbeddingRequest, data)
    if body.dimensions is not None:
        raise APIError(
            400, "this model does not support 'dimensions'", param="dimensions", code="unsupported_parameter"
        )
    call = Call.open(services, request, principal, body.model, "embedding")
    return await call.embed(body.inputs, body.encoding_format)


async def list_models(request: Request) -> Response:
    services: Services = request.app.state.services
    allowed = (await authenticate(request)).models
    data = [
        protocol.model_card(m.config.id, services.started)
        for m in services.models.values()
        if allowed is None or m.config.id in allowed
    ]
    return json_response({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    services: Services = request.app.state.services
    model = find_model(services, request.path_params["model"], await authenticate(request))
    return json_response(protocol.model_card(model.config.id, services.started))


async def healthz(request: Request) -> Response:
    services: Services = request.app.state.services
    models = {mid: ("ok" if m.engine.healthy() else "unavailable") for mid, m in services.models.items()}
    ok = all(v == "ok" for v in models.values())
    return json_response(
        {
            "status": "ok" if ok else "degraded",
            "models": models,
            "uptime_s": int(time.time() - services.started),
        },
        status=200 if ok else 503,
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
