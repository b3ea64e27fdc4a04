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


@pytest.fixture
async def redis_prefix():
    """A Redis client and a key prefix private to this test; its keys are deleted afterwards."""
    import uuid

    from aiplus.storage.redis import create_redis

    client = create_redis("redis://127.0.0.1:6379")
    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
