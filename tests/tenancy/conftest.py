import httpx
import pytest

from aiplus.app import create_app
from aiplus.config import Settings
from aiplus.storage.testing import scratch_database


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, private database on SQLite and on the machine's PostgreSQL."""
    with scratch_database(request.param, tmp_path) as (engine, _url):
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db_and_url(request, tmp_path):
    with scratch_database(request.param, tmp_path) as (engine, url):
        yield engine, url


@pytest.fixture
def sqlite_db(tmp_path):
    with scratch_database("sqlite", tmp_path) as (engine, _url):
        yield engine


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
