"""The Redis client for shared rate-limit and auth state (optional: without it, state lives in the process).

Key names start with the ``redis_prefix`` setting, so several deployments (or test runs) can share one Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis


def create_redis(url: str) -> aioredis.Redis:
    """An asyncio Redis client; replies are bytes (callers decode what they need)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30
    )
