"""The Responses API edge: ``POST /v1/responses`` (streamed or not), ``GET``/``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``.

A request is translated to a chat generation (``responses.items``) so that every engine serves it, run through
``serving.Call`` (admission, fair turn, generation, one usage event with endpoint ``responses``), and answered
as Responses output (``responses.output``). Responses are stored per organization (``responses.store``) unless
``store`` is false; ``previous_response_id`` rebuilds the conversation from the database, so any gateway sharing
it can continue any conversation, and another organization's id answers as an unknown one: 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiplus import protocol
from aiplus.api.auth import authenticate
from aiplus.api.errors import APIError
from aiplus.api.openai import parse, read_body
from aiplus.api.serving import Call
from aiplus.api.streams import json_response
from aiplus.engines.base import Delta, EngineError, GenerationRequest
from aiplus.responses import items as translate
from aiplus.responses import store
from aiplus.responses.output import OutputWriter, now, response_object, usage

if TYPE_CHECKING:
    from aiplus.services import Services

log = logging.getLogger("aiplus")
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "service_tier",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
    "metadata",
)


class NotStored(EngineError):
    status = 503
    type = "server_error"
    code = "response_not_stored"


def _invalid(exc: translate.InvalidInput) -> APIError:
    return APIError(400, exc.message, param=exc.param, code=exc.code)


def _not_found(response_id: str, param: str | None = None) -> APIError:
    code = "previous_response_not_found" if param else "not_found"
    what = "Previous response" if param else "Response"
    return APIError(404, f"{what} with id '{response_id}' not found.", param=param, code=code)


async def _db(services: Services, fn: Callable, *args: Any) -> Any:
    def run() -> Any:
        with services.db.begin() as conn:
            return fn(conn, *args)

    return await asyncio.to_thread(run)


async def _read_chain(services: Services, org_id: str, response_id: str) -> list[store.Turn]:
    """The conversation to continue. SQLite's walk is a local read of a few tenths of a millisecond (WAL:
    never behind a writer), cheaper in the event loop than the two thread switches of ``to_thread``, which
    cost a millisecond or more on a loaded machine; a database server's round trip is left off the loop."""
    if services.db.dialect.name == "sqlite":
        with services.db.connect() as conn:
            return store.chain(conn, org_id, response_id)

    def read() -> list[store.Turn]:
        # one statement, consistent on its own: autocommit spares the BEGIN and ROLLBACK round trips
        with services.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return store.chain(conn, org_id, response_id)

    return await asyncio.to_thread(read)


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponseRenderer:
    """One response's output: items built from the deltas, stored when asked, as JSON or as stream events."""

    def __init__(self, call: Call, echo: dict[str, Any], new_items: list[dict], store_it: bool, ids: Any):
        self.call = call
        self.echo = echo
        self.new_items = new_items
        self.store_it = store_it
        self.writer = OutputWriter(ids, bool(call.model.config.reasoning))

    def _body(self, status: str) -> dict[str, Any]:
        echo = {
            **self.echo,
            "service_tier": self.call.band,
        }  # the band the request ran in, as chat answers it
        return response_object(self.call.request_id, self.call.model.config.id, echo, status, [])

    def _complete(self, finish: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The finished response and the events that close its last item."""
        incomplete = finish == "length"
        events = self.writer.close("incomplete" if incomplete else "completed")
        body = self._body("incomplete" if incomplete else "completed")
        body["output"] = self.writer.items
        body["usage"] = usage(self.call.prompt_tokens, self.call.completion_tokens)
        if self.call.cached_tokens:
            cached = min(self.call.cached_tokens, self.call.prompt_tokens)
            body["usage"]["input_tokens_details"]["cached_tokens"] = cached
        if incomplete:
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        return body, events

    async def _store(self, body: dict[str, Any]) -> None:
        if not self.store_it:
            return
        services = self.call.services
        try:
            await _db(
                services,
                store.save,
                self.call.principal.org_id,
                body,
                self.new_items,
                services.settings.responses_retention_days,
            )
        except Exception as exc:  # the database is away: say so as the answer's failure, not a broken stream
            log.exception("response %s could not be stored", body["id"], exc_info=exc)
            raise NotStored(
                "The response was generated but could not be stored; retry shortly, or send store=false."
            ) from None

    async def whole(self, deltas: list[Delta]) -> dict[str, Any]:
        finish = None
        for delta in deltas:
            self.writer.feed(delta.text, delta.reasoning, delta.tool_calls)
            finish = delta.finish_reason or finish
        body, _ = self._complete(finish)
        await self._store(body)
        return body

    async def events(self, batches: AsyncIterator[list[Delta]]) -> AsyncIterator[bytes]:
        w = self.writer
        started = self._body("in_progress")
        yield _sse(w.event("response.created", response=started)) + _sse(
            w.event("response.in_progress", response=started)
        )
        finish = None
        async for batch in batches:
            out = []
            for delta in batch:
                out.extend(w.feed(delta.text, delta.reasoning, delta.tool_calls))
                finish = delta.finish_reason or finish
            if out:
                yield b"".join(_sse(e) for e in out)
        body, closing = self._complete(finish)
        if closing:
            yield b"".join(_sse(e) for e in closing)
        await self._store(body)  # before the last event: a client that continues at once finds it stored
        done = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield _sse(w.event(done, response=body))

    def failed(self, error: APIError) -> bytes:
        body = self._body("failed")
        body["output"] = self.writer.items
        body["error"] = {"code": error.code or "server_error", "message": error.message}
        return _sse(self.writer.event("response.failed", response=body))


async def create(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = await authenticate(request)  # from the header, before a byte of the body is read
    data = await read_body(request, services)
    body: protocol.ResponsesRequest = parse(protocol.ResponsesRequest, data)
    try:
        tools = translate.chat_tools(body.tools)
        tool_choice = translate.chat_tool_choice(body.tool_choice, tools)
        response_format = translate.chat_format(body.text)
        call = Call.open(services, request, principal, body.model, "responses")
        ids = translate.ItemIds(call.request_id)
        new_items = translate.normalize(body.input, ids)
        earlier: list[dict[str, Any]] = []
        if body.previous_response_id:
            try:
                turns = await _read_chain(services, call.principal.org_id, body.previous_response_id)
            except store.ResponseNotFound:
                raise _not_found(body.previous_response_id, "previous_response_id") from None
            except store.BrokenChain as exc:
                raise APIError(
                    404,
                    f"Previous response '{exc.response_id}' continues '{exc.missing_id}', which was deleted or "
                    "has expired: the conversation cannot be rebuilt.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                ) from None
            for turn in turns:
                earlier += turn.input_items
                earlier += turn.output
        messages = translate.to_messages(body.instructions, earlier + new_items, len(earlier))
    except translate.InvalidInput as exc:
        raise _invalid(exc) from None
    if not messages:
        raise APIError(400, "'input' is empty: send at least one item", param="input", code="invalid_value")
    extra: dict[str, Any] = {}
    if body.parallel_tool_calls is not None:
        extra["parallel_tool_calls"] = body.parallel_tool_calls
    if body.service_tier is not None:
        extra["service_tier"] = body.service_tier
    if body.reasoning and body.reasoning.get("effort"):
        extra["reasoning_effort"] = body.reasoning["effort"]
    stream = bool(body.stream)
    gen = GenerationRequest(
        request_id=call.request_id,
        model=body.model,
        kind="chat",
        stream=stream,
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        extra=extra,
    )
    # as chat counts tool calls returned; a response also counts when its input carries calls or their results
    call.used_tools = translate.has_function_calls(new_items)
    echo = {name: data.get(name) for name in _ECHOED}
    echo.update(created_at=now(), store=body.store is not False)
    renderer = ResponseRenderer(call, echo, new_items, body.store is not False, ids)
    return await call.render(gen, renderer)


async def _org(request: Request) -> str:
    return (await authenticate(request)).org_id


async def response(request: Request) -> Response:
    """``GET`` (the stored response) or ``DELETE`` on ``/v1/responses/{id}``."""
    services: Services = request.app.state.services
    org_id = await _org(request)
    response_id = request.path_params["response_id"]
    try:
        if request.method == "DELETE":
            await _db(services, store.delete, org_id, response_id)
            return json_response({"id": response_id, "object": "response", "deleted": True})
        if request.query_params.get("stream", "false").lower() not in ("false", "0"):
            raise APIError(
                400,
                "streaming a stored response is not supported",
                param="stream",
                code="unsupported_parameter",
            )
        return json_response(await _db(services, store.get, org_id, response_id))
    except store.ResponseNotFound:
        raise _not_found(response_id) from None


def _page_params(request: Request) -> tuple[int, str, str | None]:
    query = request.query_params
    raw = query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise APIError(400, "limit must be an integer from 1 to 100", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "order must be 'asc' or 'desc'", param="order", code="invalid_value")
    return int(raw), order, query.get("after")


async def input_items(request: Request) -> Response:
    """One page of the input items a response added, newest first unless ``order=asc``; ``after`` an item id."""
    services: Services = request.app.state.services
    org_id = await _org(request)
    limit, order, after = _page_params(request)
    response_id = request.path_params["response_id"]
    try:
        found = await _db(services, store.input_items, org_id, response_id)
    except store.ResponseNotFound:
        raise _not_found(response_id) from None
    if order == "desc":
        found.reverse()
    start = 0
    if after is not None:
        position = next((i for i, item in enumerate(found) if item.get("id") == after), None)
        if position is None:
            raise APIError(
                400, f"no input item with id '{after}' in this response", param="after", code="invalid_value"
            )
        start = position + 1
    page = found[start : start + limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(found),
        }
    )


routes = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", response, methods=["GET", "DELETE"]),
    Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
]
