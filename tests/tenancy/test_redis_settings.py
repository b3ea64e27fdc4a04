"""The ``redis_prefix`` and ``revocation`` settings decide which running servers hear a revocation, and how."""

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest

from aiplus.app import create_app
from aiplus.config import Settings
from aiplus.storage.redis import create_redis
from aiplus.storage.tables import api_keys

pytestmark = pytest.mark.anyio
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}


@contextlib.asynccontextmanager
async def serving(settings: Settings):
    """The real app with its services started, and an HTTP client on it."""
    gateway = create_app(settings, say=None)
    async with gateway.app.router.lifespan_context(gateway.app):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://aiplus.test") as client:
            client.services = gateway.app.state.services
            yield client


@pytest.fixture
async def redis():
    client = create_redis(REDIS_URL)
    prefixes = [f"aiplus-test:{uuid.uuid4().hex[:12]}:" for _ in range(2)]
    yield client, prefixes
    for prefix in prefixes:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


async def channels(client, prefix: str) -> dict[bytes, int]:
    """The Redis channels under ``prefix`` that someone listens to, with their listener counts."""
    names = await client.pubsub_channels(f"{prefix}*")
    return dict(await client.pubsub_numsub(*names)) if names else {}


async def test_prefix_and_mode_decide_which_servers_hear_a_revocation(db_and_url, tmp_path, redis):
    client, (shared, other) = redis
    _engine, url = db_and_url
    base = Settings(database_url=url, redis_url=REDIS_URL, admin_token=ADMIN["Authorization"][7:])

    def settings(name: str, **changes) -> Settings:
        return replace(base, data_dir=str(tmp_path / name), **changes)

    async with (
        serving(settings("strict", redis_prefix=shared)) as strict,
        serving(settings("pubsub", redis_prefix=shared, revocation="pubsub")) as pubsub,
        serving(settings("apart", redis_prefix=other)) as apart,
    ):
        # only the pubsub server subscribes, and on its own prefix's channel
        deadline = asyncio.get_running_loop().time() + 30
        while list((await channels(client, shared)).values()) != [1]:
            assert asyncio.get_running_loop().time() < deadline, await channels(client, shared)
            await asyncio.sleep(0.05)
        assert await channels(client, other) == {}

        r = await strict.post("/admin/orgs", json={"name": "A", "sector": "ict", "id": "a"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        created = (await strict.post("/admin/orgs/a/keys", json={}, headers=ADMIN)).json()
        key = {"Authorization": f"Bearer {created['key']}"}

        async def answers(server) -> int:
            return (await server.get("/v1/usage", headers=key)).status_code

        for server in (strict, pubsub, apart):
            assert await answers(server) == 200  # now cached
        # Revoked behind the servers' backs: no auth-version change, so no database poller notices, and cached
        # keys are trusted for minutes. Only a Redis signal on a server's prefix makes it read the key again.
        with _engine.begin() as conn:
            conn.execute(
                api_keys.update().where(api_keys.c.id == created["id"]).values(revoked_at=datetime.now(UTC))
            )
        for server in (strict, pubsub, apart):
            assert await answers(server) == 200

        await strict.services.authenticator.signal.send()
        assert await answers(strict) == 401
        deadline = asyncio.get_running_loop().time() + 30
        while await answers(pubsub) != 401:  # the published message, about a millisecond later
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert await answers(apart) == 200  # another prefix: another deployment, never told
        version = await client.get(f"{other}auth:version")
        assert version is None and await client.exists(f"{shared}auth:version")


def test_aiplus_serve_takes_prefix_and_mode_from_the_environment(tmp_path):
    """The settings reach a real ``aiplus serve``: it listens for revocations on its prefix's channel only."""
    import redis as sync_redis

    from tests.conftest import start_server

    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    env = {"AIPLUS_REDIS_URL": REDIS_URL, "AIPLUS_REDIS_PREFIX": prefix, "AIPLUS_REVOCATION": "pubsub"}
    server = start_server(tmp_path, '[[models]]\nid = "sim"\nengine = "simulated"\n', env=env)
    try:
        with sync_redis.Redis.from_url(REDIS_URL) as client:
            deadline = time.monotonic() + 30
            while not client.pubsub_channels(f"{prefix}*"):
                assert time.monotonic() < deadline, "the server never subscribed under its prefix"
                time.sleep(0.05)
            (channel,) = client.pubsub_channels(f"{prefix}*")
            assert client.pubsub_numsub(channel) == [(channel, 1)]
    finally:
        server.stop()
