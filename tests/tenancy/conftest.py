import httpx
import pytest

from aiplus.app import create_app
from aiplus.config import Settings


@pytest.fixture
async def stack(db_and_url, tmp_path):
    """The real app with its services started (its lifespan, as under uvicorn) and an HTTP client on it."""
    _engine, url = db_and_url
    said: list[str] = []
    settings = Settings(data_dir=str(tmp_path / "data"), database_url=url)
    gateway = create_app(settings, say=said.append)
    async with gateway.app.router.lifespan_context(gateway.app):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://aiplus.test") as client:
            client.said = said
            client.services = services = gateway.app.state.services
            client.admin_headers = {"Authorization": f"Bearer {services.admin_token}"}
            yield client
