import uuid

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import Response

from aiplus.api import admin
from aiplus.api.errors import APIError
from aiplus.config import Settings
from aiplus.services import start_services, stop_services


def make_app(services) -> FastAPI:
    async def api_error(_request, exc: APIError) -> Response:
        return exc.to_response()

    app = FastAPI(default_response_class=Response)
    app.include_router(admin.router)
    app.add_exception_handler(APIError, api_error)
    app.state.services = services
    app.state.settings = services.settings
    app.state.db = services.db
    app.state.authenticator = services.authenticator
    app.state.limiter = services.limiter
    app.state.ledger = services.ledger
    return app


@pytest.fixture
async def stack(db_and_url, tmp_path):
    """The services started as the server starts them, an app with the admin routes, and an HTTP client."""
    _engine, url = db_and_url
    said: list[str] = []
    settings = Settings(data_dir=str(tmp_path / "data"), database_url=url)
    services = await start_services(
        settings, say=said.append, redis_prefix=f"aiplus-test:{uuid.uuid4().hex}:"
    )
    transport = httpx.ASGITransport(app=make_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://aiplus.test") as client:
        client.said = said
        client.services = services
        client.admin_headers = {"Authorization": f"Bearer {services.admin_token}"}
        yield client
    await stop_services(services)
