"""Builds the ASGI app from settings: wires the rooms together and owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from aiplus.api import admin as admin_api
from aiplus.api import adoption as adoption_api
from aiplus.api import billing as billing_api
from aiplus.api import openai as openai_api
from aiplus.api import portal as portal_api
from aiplus.api import responses as responses_api
from aiplus.api import vouchers as vouchers_api
from aiplus.api import web as web_api
from aiplus.api import web_billing as web_billing_api
from aiplus.api.auth import require_admin_dependency
from aiplus.api.errors import APIError, from_storage
from aiplus.api.lockout import Lockout
from aiplus.api.openapi import describe
from aiplus.api.pages import render
from aiplus.api.serving import REQUEST_ID, new_request_id
from aiplus.api.streams import ClientGone
from aiplus.config import Settings
from aiplus.metrics import COST_COEFFICIENT, INFLIGHT
from aiplus.services import start_services, stop_services

log = logging.getLogger("aiplus")


def _envelope(
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return APIError(status, message, type=type_, param=param, code=code, headers=headers).to_response()


async def _api_error(_: Request, exc: APIError) -> Response:
    return exc.to_response()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and request.url.path.startswith(web_api.PAGE_PREFIXES):
        return render(request, "error.html", 404, title="Not found", message="There is no such page here.")
    if exc.status_code == 404:
        message = "Not found: no such route. The OpenAI-compatible API is under /v1 (see /docs for /admin)."
    return _envelope(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    return _envelope(
        400,
        f"Invalid value for '{param}': {err.get('msg')}" if param else str(err.get("msg")),
        param=param,
        code="invalid_value",
    )


async def _client_gone(_: Request, __: ClientGone) -> Response:
    return Response(status_code=499)  # nobody is listening; nginx's code for "client closed request"


async def _unexpected(request: Request | None, exc: Exception) -> Response:
    rid = request.scope.get(REQUEST_ID) if request is not None else None
    away = from_storage(exc)
    if away is not None:
        log.warning("request %s: database unavailable: %s", rid, exc)
        return away.to_response()
    log.exception("request %s: unexpected error", rid, exc_info=exc)
    return _envelope(500, "The server had an error while processing your request.", "server_error")


def _with_request_id(scope: Scope, send: Send) -> Send:
    """``send`` that adds the request's id to an answer that has none (an error, an admin route, the docs)."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", scope[REQUEST_ID].encode()))
                message = {**message, "headers": headers}
        await send(message)

    return send_with_id


async def _metrics(request: Request) -> Response:
    for model_id, model in request.app.state.services.models.items():
        for replica, n in enumerate(model.engine.inflight() or [model.dispatcher.queue.in_flight]):
            INFLIGHT.labels(model_id, str(replica)).set(n)
        cost = model.dispatcher.cost
        if cost is not None:
            COST_COEFFICIENT.labels(model_id, "alpha").set(cost.alpha)
            COST_COEFFICIENT.labels(model_id, "beta").set(cost.beta)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _bounded_body(scope: Scope, receive: Receive, limit: int, deadline_s: float) -> Receive:
    """``receive`` for the FastAPI routes, which read a body before their checks run: at most ``limit`` bytes
    (413), all of them within ``deadline_s`` (408); the OpenAI routes check the key first and bound their own."""
    length = dict(scope["headers"]).get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"request body is {int(length)} bytes; the limit is {limit} bytes")
    size = 0
    until: float | None = None
    done = False

    async def bounded() -> Message:
        nonlocal size, until, done
        if done:
            return await receive()
        loop = asyncio.get_running_loop()
        until = until or loop.time() + deadline_s
        try:
            async with asyncio.timeout_at(until):
                message = await receive()
        except TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {deadline_s:g} s") from None
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            done = not message.get("more_body", False)
        return message

    return bounded


class Gateway:
    """The ASGI entry point. The OpenAI routes go straight to their handlers, skipping the middleware stack that
    FastAPI puts around every route (a fifth of the gateway's CPU per request in the overhead profile);
    everything else — admin, docs, metrics, lifespan — is the FastAPI app's."""

    def __init__(self, app: FastAPI, routes: list[Route], settings: Settings | None = None):
        self.app = app
        self._fast = {route.path: route for route in routes if "{" not in route.path}
        settings = settings or Settings()
        self._body_limits = (settings.max_body_bytes, settings.body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._fast.get(scope["path"])
        if route is None:
            scope[REQUEST_ID] = new_request_id()
            send = _with_request_id(scope, send)
            try:
                receive = _bounded_body(scope, receive, *self._body_limits)
            except HTTPException as exc:
                await (await _http_error(Request(scope), exc))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        if scope["method"] not in route.methods:
            response = _envelope(
                405,
                f"Method {scope['method']} is not allowed on {scope['path']}.",
                headers={"allow": ", ".join(sorted(route.methods))},
            )
        else:
            try:
                response = await route.endpoint(Request(scope, receive, send))
            except APIError as exc:
                response = exc.to_response()
            except ClientGone:
                return
            except Exception as exc:
                scope.setdefault(REQUEST_ID, new_request_id())
                response = await _unexpected(Request(scope), exc)
        if "x-request-id" not in response.headers:  # errors before a call, or outside one
            response.headers["x-request-id"] = scope.get(REQUEST_ID) or new_request_id()
        await response(scope, receive, send)


def create_app(settings: Settings, *, say: Callable[[str], None] | None = print) -> Gateway:
    """The whole app: every route with its exception handlers; its lifespan starts the services (``say`` prints
    the first start's admin token and demo key) and holds them in ``app.state.services``, the one place routes
    reach them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = services = await start_services(settings, say=say)
        try:
            yield
        finally:
            await stop_services(services)

    app = FastAPIOffline(  # FastAPI whose /docs page ships its own assets: no CDN on an offline machine
        title="aiplus",
        summary="Open-weight AI as a public utility: OpenAI-compatible API, metering, fair sharing, adoption.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.admin_lockout = Lockout()
    app.openapi = lambda: describe(app, settings)  # type: ignore[method-assign]
    routes = [*openai_api.routes, *responses_api.routes]
    for route in routes:
        app.router.routes.append(route)
    app.include_router(admin_api.router)
    app.include_router(billing_api.router)
    app.include_router(vouchers_api.router)
    app.include_router(
        adoption_api.router,
        tags=["adoption"],
        dependencies=[require_admin_dependency, Depends(admin_api.plain_input)],
    )
    app.add_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    app.include_router(web_api.router)  # the front door and the control room
    app.include_router(web_billing_api.router)
    app.include_router(portal_api.router)
    app.mount("/static", StaticFiles(packages=[("aiplus", "web/static")]), name="static")
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    return Gateway(app, routes, settings)
