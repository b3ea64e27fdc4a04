import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from aiplus.config import DEFAULT_TIERS
from aiplus.storage.redis import create_redis
from aiplus.tenancy import changes
from aiplus.tenancy.auth import Authenticator
from aiplus.tenancy.errors import AuthUnavailable
from aiplus.tenancy.keys import create_key, revoke_key
from aiplus.tenancy.orgs import create_org

pytestmark = pytest.mark.anyio
SECRET = b"s" * 32


def setup_org(engine, org_id="a", **key_args) -> tuple[dict, str]:
    with engine.begin() as conn:
        create_org(conn, name=org_id, sector="education", tier="lifeline", org_id=org_id)
        return create_key(conn, SECRET, org_id, **key_args)


async def test_principal_and_cache(db):
    row, key = setup_org(db, models=["m1"])
    auth = Authenticator(db, SECRET, DEFAULT_TIERS)
    await auth.start()
    principal = await auth.authenticate(key)
    assert (principal.org_id, principal.key_id, principal.tier, principal.weight) == (
        "a",
        row["id"],
        "lifeline",
        2.0,
    )
    assert principal.models == frozenset({"m1"}) and principal.sector == "education"
    reads = []
    auth._read_key = lambda digest: reads.append(digest)  # any DB read from now on is recorded
    for _ in range(100):
        assert await auth.authenticate(key) == principal
    assert reads == []  # steady state: no database round trip
    assert await auth.authenticate("aip_" + "x" * 43) is None
    assert await auth.authenticate("not-a-key") is None
    await auth.close()


async def test_expired_key_is_refused(db):
    expires = datetime.now(UTC) + timedelta(seconds=3)
    _row, key = setup_org(db, expires_at=expires)
    auth = Authenticator(db, SECRET, DEFAULT_TIERS)
    assert await auth.authenticate(key) is not None
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
    assert await auth.authenticate(key) is None


async def test_database_failure_does_not_poison_the_cache(db):
    _row, key = setup_org(db)
    _row2, other = create_second_key(db)
    auth = Authenticator(db, SECRET, DEFAULT_TIERS, ttl=0.0)  # every use re-reads the key
    assert await auth.authenticate(key) is not None
    real = auth._read_key

    def down(digest):
        raise ConnectionError("database down")

    auth._read_key = down
    assert await auth.authenticate(key) is not None  # nothing revoked since: the stale entry still serves
    with pytest.raises(AuthUnavailable):  # never seen: 503, not 401
        await auth.authenticate(other)
    auth.invalidate()
    with pytest.raises(AuthUnavailable):  # something changed and the DB is away: do not guess
        await auth.authenticate(key)
    auth._read_key = real
    assert await auth.authenticate(other) is not None  # back at once, no restart
    assert await auth.authenticate(key) is not None


def create_second_key(engine):
    with engine.begin() as conn:
        return create_key(conn, SECRET, "a", name="second")


async def test_revocation_reaches_another_process_at_once_through_redis(db, redis_prefix):
    client, prefix = redis_prefix
    _row, key = setup_org(db)
    one = Authenticator(db, SECRET, DEFAULT_TIERS, redis=client, redis_prefix=prefix, poll_interval=3600)
    two = Authenticator(db, SECRET, DEFAULT_TIERS, redis=client, redis_prefix=prefix, poll_interval=3600)
    await one.start()
    await two.start()
    assert await one.authenticate(key) is not None and await two.authenticate(key) is not None
    await changes.revoke_key(db, one.signal, _row["id"])
    assert await two.authenticate(key) is None  # the very next request, no waiting
    assert await one.authenticate(key) is None
    await one.close()
    await two.close()


async def test_revocation_without_redis_arrives_by_polling(db):
    row, key = setup_org(db)
    server = Authenticator(db, SECRET, DEFAULT_TIERS, poll_interval=0.1)
    await server.start()
    assert await server.authenticate(key) is not None
    with db.begin() as conn:  # as `aiplus keys revoke` in another process does
        revoke_key(conn, row["id"])
    assert await refused_within(server, key, seconds=30)
    await server.close()


async def refused_within(auth: Authenticator, key: str, seconds: float) -> bool:
    """Whether ``auth`` refuses ``key`` before a deadline: a loaded machine makes the poller slower, not wrong."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await auth.authenticate(key) is None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_redis_outage_falls_back_to_polling(sqlite_db):
    """Redis is down, so another server's revocation signal is lost: this server still sees it, by polling."""
    row, key = setup_org(sqlite_db)
    dead = create_redis("redis://127.0.0.1:1")  # nothing listens there
    here = Authenticator(sqlite_db, SECRET, DEFAULT_TIERS, redis=dead, poll_interval=0.1)
    there = Authenticator(sqlite_db, SECRET, DEFAULT_TIERS, redis=dead, poll_interval=0.1)
    await here.start()
    assert await here.authenticate(key) is not None
    await changes.revoke_key(
        sqlite_db, there.signal, row["id"]
    )  # its Redis INCR and PUBLISH fail; only the database knows
    assert await refused_within(here, key, seconds=30)
    await here.close()
    await dead.aclose()


async def test_pubsub_mode_revokes_without_polling_or_a_per_request_round_trip(db, redis_prefix):
    client, prefix = redis_prefix
    row, key = setup_org(db)
    kw = {"redis": client, "redis_prefix": prefix, "poll_interval": 3600, "revocation": "pubsub"}
    one, two = Authenticator(db, SECRET, DEFAULT_TIERS, **kw), Authenticator(db, SECRET, DEFAULT_TIERS, **kw)
    await one.start()
    await two.start()
    deadline = time.monotonic() + 30
    while (await client.pubsub_numsub(f"{prefix}auth:changed"))[0][1] < 2:  # both listeners subscribed
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await two.authenticate(key) is not None
    calls = []
    real_get = client.get
    client.get = lambda *a: calls.append(a) or real_get(*a)
    assert await two.authenticate(key) is not None and calls == []
    client.get = real_get
    await changes.revoke_key(db, one.signal, row["id"])
    # the poller (an hour) cannot be what tells `two`; 5 s is a margin for a loaded machine, not a target
    assert await refused_within(two, key, seconds=5)
    await one.close()
    await two.close()
