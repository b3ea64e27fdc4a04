import asyncio
import time
from datetime import UTC, datetime

import pytest

from aiplus.config import Settings, TierConfig
from aiplus.metering.ledger import UsageEvent, write_events
from aiplus.scheduling.limits import RateLimited, create_limiter
from aiplus.tenancy.auth import Principal

pytestmark = pytest.mark.anyio


def principal(org="a", tier="t"):
    return Principal(org_id=org, key_id="k", tier=tier, weight=1.0, models=None, sector="ict")


def settings(**limits) -> Settings:
    return Settings(tiers=(TierConfig("t", **limits),))


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request, redis_prefix):
    client, prefix = redis_prefix
    made = []

    async def make(engine=None, **limits):
        redis = client if request.param == "redis" else None
        limiter = create_limiter(settings(**limits), engine=engine, redis=redis, prefix=prefix)
        await limiter.start()
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def test_requests_per_minute_bucket(make_limiter):
    limiter = await make_limiter(requests_per_minute=5, tokens_per_minute=10_000)
    reservations = [await limiter.reserve(principal(), 10) for _ in range(5)]
    assert reservations[0].headers["x-ratelimit-limit-requests"] == "5"
    assert reservations[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert reservations[-1].headers["x-ratelimit-remaining-tokens"] == "9950"
    with pytest.raises(RateLimited) as err:
        await limiter.reserve(principal(), 10)
    assert err.value.code == "rate_limit_exceeded"
    assert 1 <= err.value.retry_after <= 13 and err.value.headers["retry-after"] == str(err.value.retry_after)
    await limiter.reserve(principal("b"), 10)  # another org has its own buckets


async def test_settle_refunds_unused_tokens_once(make_limiter):
    limiter = await make_limiter(tokens_per_minute=1000)
    res = await limiter.reserve(principal(), 1000)
    with pytest.raises(RateLimited):
        await limiter.reserve(principal(), 800)
    await limiter.settle(res, 100)
    await limiter.settle(res, 100)  # idempotent: no second refund
    second = await limiter.reserve(principal(), 800)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < 110
    with pytest.raises(RateLimited) as err:
        await limiter.reserve(principal(), 2000)
    assert "too large" in err.value.message


async def test_concurrency_slots_are_released_by_settle(make_limiter):
    limiter = await make_limiter(max_concurrent=2)
    first, _second = await limiter.reserve(principal(), 1), await limiter.reserve(principal(), 1)
    with pytest.raises(RateLimited):
        await limiter.reserve(principal(), 1)
    await limiter.settle(first, 1)
    await limiter.reserve(principal(), 1)


async def test_concurrent_burst_cannot_overshoot_quota(make_limiter):
    limiter = await make_limiter(monthly_token_quota=1000, max_concurrent=1000)
    admitted = []

    async def one():
        try:
            res = await limiter.reserve(principal(), 50)
        except RateLimited as exc:
            return exc.code
        admitted.append(res)
        await asyncio.sleep(0.01)
        await limiter.settle(res, 50)
        return "ok"

    codes = await asyncio.gather(*(one() for _ in range(100)))
    assert codes.count("ok") == 20  # 20 x 50 = the quota, not one token more
    with pytest.raises(RateLimited) as err:
        await limiter.reserve(principal(), 1)
    assert err.value.code == "insufficient_quota" and err.value.retry_after > 1


async def test_monthly_quota_is_seeded_from_the_ledger(make_limiter, sqlite_db):
    from aiplus.tenancy.orgs import create_org

    with sqlite_db.begin() as conn:
        create_org(conn, name="A", sector="ict", org_id="a")
        write_events(conn, [_event(i, 300) for i in range(3)])  # 900 tokens used this month
    limiter = await make_limiter(engine=sqlite_db, monthly_token_quota=1000)
    await limiter.reserve(principal(), 100)
    with pytest.raises(RateLimited) as err:
        await limiter.reserve(principal(), 1)
    assert err.value.code in ("insufficient_quota", "rate_limit_exceeded")


def _event(i: int, tokens: int) -> UsageEvent:
    return UsageEvent(f"r{i}", "a", None, "m", "chat", tokens, 0, "ok", False, datetime.now(UTC), 1, 1, 0)


async def test_two_limiters_sharing_redis_hold_one_global_limit(redis_prefix):
    client, prefix = redis_prefix
    tpm, size = 12_000, 20
    limiters = [
        create_limiter(settings(tokens_per_minute=tpm), redis=client, prefix=prefix) for _ in range(2)
    ]
    for limiter in limiters:
        await limiter.start()
    admitted = [0, 0]
    start = time.monotonic()
    duration = 3.0

    async def hammer(i):
        refused = False  # go on until this hammer has met the empty bucket, however slow the machine
        while time.monotonic() - start < duration or not refused:
            try:
                res = await limiters[i].reserve(principal(), size)
            except RateLimited:
                refused = True
                await asyncio.sleep(0.005)
                continue
            admitted[i] += size
            await limiters[i].settle(res, size)

    await asyncio.gather(*(hammer(i % 2) for i in range(8)))
    elapsed = time.monotonic() - start
    allowed = tpm + tpm * elapsed / 60  # a full bucket plus its refill
    assert min(admitted) > 0
    # the whole bucket was used (the last refusal leaves less than one request in it), and never more than the
    # bucket and its refill: two limiters that did not share would admit about twice as much
    assert tpm - size <= sum(admitted) <= allowed + size, (admitted, allowed)
    for limiter in limiters:
        await limiter.close()


async def test_reservations_of_a_dead_process_do_not_leak(redis_prefix):
    client, prefix = redis_prefix
    dead = create_limiter(settings(max_concurrent=2), redis=client, prefix=prefix)
    await dead.start()
    await dead.reserve(principal(), 1)
    await dead.reserve(principal(), 1)
    dead._backend._heartbeat.cancel()  # as after kill -9: no more heartbeats, no settles
    alive = create_limiter(settings(max_concurrent=2), redis=client, prefix=prefix)
    await alive.start()
    with pytest.raises(RateLimited):
        await alive.reserve(principal(), 1)
    await client.delete(f"{prefix}rl:proc:{dead._backend._proc}")  # its heartbeat key expires
    await alive.reserve(principal(), 1)
    await alive.reserve(principal(), 1)
    await alive.close()


async def test_redis_outage_falls_back_to_the_process():
    from aiplus.storage.redis import create_redis

    dead = create_redis("redis://127.0.0.1:1")
    limiter = create_limiter(settings(requests_per_minute=2), redis=dead)
    first = await limiter.reserve(principal(), 1)  # served, enforced per process while Redis is away
    await limiter.reserve(principal(), 1)
    with pytest.raises(RateLimited):
        await limiter.reserve(principal(), 1)
    await limiter.settle(first, 1)
    await dead.aclose()
