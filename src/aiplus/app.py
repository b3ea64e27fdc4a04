"""Builds the ASGI app from settings: wires the rooms together and owns start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aiplus.api import admin as admin_api
from aiplus.api import adoption as adoption_api
from aiplus.api import billing as billing_api
from aiplus.api import openai as openai_api
from aiplus.api.auth import require_admin_dependency
from aiplus.api.errors import APIError
from aiplus.api.serving import ClientGone
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


async def _http_error(_: Request, exc: HTTPException) -> Response:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
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


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return _envelope(500, "The server had an error while processing your request.", "server_error")


async def _metrics(request: Request) -> Response:
    for model_id, model in request.app.state.services.models.items():
        for replica, n in enumerate(model.engine.inflight() or [model.dispatcher.queue.in_flight]):
            INFLIGHT.labels(model_id, str(replica)).set(n)
        cost = model.dispatcher.cost
        if cost is not None:
            COST_COEFFICIENT.labels(model_id, "alpha").set(cost.alpha)
            COST_COEFFICIENT.labels(model_id, "beta").set(cost.beta)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class Gateway:
    """The ASGI entry point. The OpenAI routes go straight to their handlers, skipping the middleware stack that
    FastAPI puts around every route (a fifth of the gateway's CPU per request in the overhead profile);
    everything else — admin, docs, metrics, lifespan — is the FastAPI app's."""

    def __init__(self, app: FastAPI, routes: list[Route]):
        self.app = app
        self._fast = {route.path: route for route in routes if "{" not in route.path}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._fast.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
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
                response = await _unexpected(None, exc)
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
    for route in openai_api.routes:
        app.router.routes.append(route)
    app.include_router(admin_api.router)
    app.include_router(billing_api.router)
    app.include_router(adoption_api.router, tags=["adoption"], dependencies=[require_admin_dependency])
    app.add_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    return Gateway(app, openai_api.routes)
