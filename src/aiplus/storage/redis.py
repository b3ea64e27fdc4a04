"""The Redis client for shared rate-limit and auth state (optional: without it, state lives in the process),
and the circuit breaker its callers share.

Key names start with the ``redis_prefix`` setting, so several deployments (or test runs) can share one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

import redis.asyncio as aioredis

TIMEOUT_S = 2.0  # one socket operation (connect, or an answer); a partition costs this once, then the breaker
BREAKER_PERIOD_S = 5.0  # while open, Redis is probed this often in the background; requests use the fallback

log = logging.getLogger(__name__)


def create_redis(url: str) -> aioredis.Redis:
    """An asyncio Redis client; replies are bytes (callers decode what they need)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, health_check_interval=30
    )


class Breaker:
    """Whether Redis is worth asking right now.

    A failed call opens it (callers then use their documented fallback at once, instead of each waiting for a
    timeout); a background probe (``PING``) every ``period`` seconds closes it again. So a partition costs one
    timeout to the calls in flight when it began, and none to any call after.
    """

    def __init__(self, client: aioredis.Redis, period: float = BREAKER_PERIOD_S):
        self._client = client
        self.period = period
        self.open = False
        self._probe: asyncio.Task | None = None

    def failed(self, exc: BaseException, who: str) -> None:
        """Report a failed call (from inside the event loop)."""
        if not self.open:
            log.error(
                "redis: unreachable (%s, from %s); using the fallback, probing every %g s",
                exc,
                who,
                self.period,
            )
        self.open = True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._until_back(), name="aiplus-redis-probe"
            )

    async def _until_back(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self._client.ping()
            except Exception:  # still away
                continue
            self.open = False
            log.warning("redis: reachable again; shared state back in use")
            return

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()


_BREAKERS: weakref.WeakKeyDictionary[aioredis.Redis, Breaker] = weakref.WeakKeyDictionary()


def breaker(client: aioredis.Redis) -> Breaker:
    """The one breaker of ``client``: every caller sharing a client shares what it learned of Redis's health."""
    found = _BREAKERS.get(client)
    if found is None:
        found = _BREAKERS[client] = Breaker(client)
    return found
