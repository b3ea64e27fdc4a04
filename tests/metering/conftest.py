import pytest

from aiplus.storage.testing import scratch_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, private database on SQLite and on the machine's PostgreSQL."""
    with scratch_database(request.param, tmp_path) as (engine, _url):
        yield engine


@pytest.fixture
def sqlite_db(tmp_path):
    with scratch_database("sqlite", tmp_path) as (engine, _url):
        yield engine


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_and_url(request, tmp_path):
    with scratch_database(request.param, tmp_path) as (engine, url):
        yield engine, url
