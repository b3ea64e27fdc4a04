"""Changes every gateway must see at once (a revoked key, an org's new tier) and the signal that tells them.

One service function per change; the admin API and the CLI both call them. Each commits the change, which also
bumps the auth version row (gateways without Redis see it by polling, within a second), then sends the signal:
the local authenticator, if any, forgets at once; with Redis, the version key is incremented (every gateway in
``strict`` mode reads it on its next request) and a message is published (``pubsub`` gateways hear it about a
millisecond later). These two Redis names are spelled here only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from aiplus.config import DEFAULT_REDIS_PREFIX, TierConfig
from aiplus.tenancy import keys, orgs

log = logging.getLogger(__name__)


def version_key(prefix: str) -> str:
    """The Redis counter every change increments; strict gateways compare it on each request."""
    return f"{prefix}auth:version"


def channel(prefix: str) -> str:
    """The Redis channel every change is published on; pubsub gateways listen to it."""
    return f"{prefix}auth:changed"


class Signal:
    """Tells every gateway that keys or orgs changed: ``forget`` in this process, Redis for the others."""

    def __init__(
        self,
        redis: Any = None,
        prefix: str = DEFAULT_REDIS_PREFIX,
        *,
        forget: Callable[[str | None], None] | None = None,
    ):
        self._redis = redis
        self._version_key = version_key(prefix)
        self._channel = channel(prefix)
        self._forget = forget

    async def send(self, digest: str | None = None) -> bool:
        """Signal one committed change (``digest``: a key to drop now); False if Redis could not be told."""
        if self._forget is not None:
            self._forget(digest)
        if self._redis is None:
            return True
        try:
            await self._redis.incr(self._version_key)
            await self._redis.publish(self._channel, "changed")
        except Exception as exc:
            log.warning(
                "cannot signal Redis (%s); other processes see the change by polling, within a second", exc
            )
            return False
        return True


async def revoke_key(engine: sa.Engine, signal: Signal, key_id: str) -> dict:
    """Revoke a key (raises NotFound) and make every gateway reject it from its next request on."""

    def revoke() -> tuple[dict, str]:
        with engine.begin() as conn:
            return keys.revoke_key(conn, key_id)

    key, digest = await asyncio.to_thread(revoke)
    await signal.send(digest)
    return key


async def update_org(
    engine: sa.Engine, signal: Signal, org_id: str, *, tiers: Sequence[TierConfig], **changes: Any
) -> dict:
    """Change an org (tier, name, region, head count) and refresh its keys' principals on every gateway."""

    def update() -> dict:
        with engine.begin() as conn:
            return orgs.update_org(conn, org_id, tiers=tiers, **changes)

    org = await asyncio.to_thread(update)
    await signal.send()
    return org
