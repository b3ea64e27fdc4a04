"""The long-lived services behind the HTTP edges, started and stopped with the app (see ``app.py``).

Start order matters: the ledger replays journaled events before the limiter reads monthly usage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from aiplus.config import Settings
from aiplus.metering.ledger import Ledger
from aiplus.metering.tariffs import Tariff
from aiplus.scheduling.limits import Limiter, create_limiter
from aiplus.storage.db import create_engine, migrate
from aiplus.storage.redis import DEFAULT_PREFIX, breaker, create_redis, key_prefix
from aiplus.tenancy.auth import Authenticator
from aiplus.tenancy.bootstrap import bootstrap
from aiplus.tenancy.secrets import AdminAuth

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: sa.Engine
    secret: bytes
    admin: AdminAuth
    authenticator: Authenticator
    limiter: Limiter
    ledger: Ledger
    tariff: Tariff
    redis: Any = None
    redis_prefix: str = DEFAULT_PREFIX
    admin_token: str | None = None  # generated at this start (already printed)
    demo_key: str | None = None  # created at this start (already printed)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def background(self, coro: Coroutine) -> None:
        """Run ``coro`` off the request path; ``stop_services`` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


async def start_services(
    settings: Settings,
    *,
    say: Callable[[str], None] | None = print,
    redis_prefix: str | None = None,
    terminal: bool | None = None,
) -> Services:
    """Open the database (migrated), bootstrap secrets and the demo org, start ledger, auth and limits."""
    redis_prefix = redis_prefix or key_prefix()
    db = create_engine(settings.db_url)
    await asyncio.to_thread(migrate, db)
    boot = await asyncio.to_thread(bootstrap, db, settings, say, terminal)
    redis = create_redis(settings.redis_url) if settings.redis_url else None
    ledger = Ledger(db, settings.data_path)
    await ledger.start()
    authenticator = Authenticator(db, boot.secret, settings.tiers, redis=redis, redis_prefix=redis_prefix)
    await authenticator.start()
    limiter = create_limiter(settings, engine=db, redis=redis, prefix=redis_prefix)
    await limiter.start()
    return Services(
        settings=settings,
        db=db,
        secret=boot.secret,
        admin=boot.admin,
        authenticator=authenticator,
        limiter=limiter,
        ledger=ledger,
        tariff=Tariff(settings.prices, settings.tiers),
        redis=redis,
        redis_prefix=redis_prefix,
        admin_token=boot.admin_token,
        demo_key=boot.demo_key,
    )


async def stop_services(services: Services) -> None:
    """Let pending settles finish, flush the ledger, close connections."""
    if services._tasks:
        await asyncio.wait(list(services._tasks), timeout=10)
    await services.limiter.close()
    await services.authenticator.close()
    await services.ledger.close()
    if services.redis is not None:
        breaker(services.redis).close()
        await services.redis.aclose()
    await asyncio.to_thread(services.db.dispose)
