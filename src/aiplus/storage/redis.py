"""The Redis client for shared rate-limit and auth state (optional: without it, state lives in the process)."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

DEFAULT_PREFIX = "aiplus:"


def create_redis(url: str) -> aioredis.Redis:
    """An asyncio Redis client; replies are bytes (callers decode what they need)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30
    )


# TODO(config owner): a ``redis_prefix`` setting; until then AIPLUS_REDIS_PREFIX lets several deployments
# (or test runs) share one Redis without sharing rate-limit and auth state.
def key_prefix() -> str:
    return os.environ.get("AIPLUS_REDIS_PREFIX") or DEFAULT_PREFIX
