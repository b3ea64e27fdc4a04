"""The long-lived services behind the HTTP edges, held once per app in ``Services`` (``app.state.services``).

``start_services`` opens them in order (the ledger replays journaled events before the limiter reads monthly
usage; the models come last), ``stop_services`` closes them in reverse. Routes reach them only through
``request.app.state.services``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from aiplus.api.serving import ModelRuntime
from aiplus.config import Settings
from aiplus.engines import create_engine as create_model_engine
from aiplus.metering.ledger import Ledger
from aiplus.metering.tariffs import Tariff
from aiplus.metrics import CallWindow
from aiplus.scheduling.budget import run_adaptive
from aiplus.scheduling.cost import CostModel
from aiplus.scheduling.dispatcher import Dispatcher
from aiplus.scheduling.limits import Limiter, create_limiter
from aiplus.scheduling.shared import SharedFairShare
from aiplus.storage.db import create_engine, migrate
from aiplus.storage.redis import breaker, create_redis
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
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    redis: Any = None
    admin_token: str | None = None  # generated at this start (already printed)
    demo_key: str | None = None  # created at this start (already printed)
    started: int = field(default_factory=lambda: int(time.time()))
    recent: CallWindow = field(default_factory=CallWindow)  # the live view's last minutes of calls
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _loops: list[asyncio.Task] = field(default_factory=list)  # run until stop (adaptive budgets)
    _shares: list[SharedFairShare] = field(default_factory=list)  # cross-gateway fair share, per model

    def band(self, tier: str) -> str:
        """The band of a tier's requests that name no ``service_tier``."""
        for t in self.settings.tiers:
            if t.name == tier:
                return t.service_tier
        return "default"

    def background(self, coro: Coroutine) -> None:
        """Run ``coro`` off the request path; ``stop_services`` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


async def start_services(settings: Settings, *, say: Callable[[str], None] | None = print) -> Services:
    """Open the database (migrated), bootstrap secrets and the demo org, start ledger, auth, limits and models."""
    db = create_engine(settings.db_url)
    await asyncio.to_thread(migrate, db)
    boot = await asyncio.to_thread(bootstrap, db, settings, say)
    redis = create_redis(settings.redis_url) if settings.redis_url else None
    ledger = Ledger(db, settings.data_path)
    await ledger.start()
    authenticator = Authenticator(
        db,
        boot.secret,
        settings.tiers,
        redis=redis,
        redis_prefix=settings.redis_prefix,
        revocation=settings.revocation,
    )
    await authenticator.start()
    limiter = create_limiter(settings, engine=db, redis=redis, prefix=settings.redis_prefix)
    await limiter.start()
    services = Services(
        settings=settings,
        db=db,
        secret=boot.secret,
        admin=boot.admin,
        authenticator=authenticator,
        limiter=limiter,
        ledger=ledger,
        tariff=Tariff(settings.prices, settings.tiers),
        redis=redis,
        admin_token=boot.admin_token,
        demo_key=boot.demo_key,
    )
    try:
        await _start_models(settings, services)
    except BaseException:
        await stop_services(services)
        raise
    return services


async def _start_models(settings: Settings, services: Services) -> None:
    models = services.models
    if settings.workers > 1 and not settings.redis_url:
        log.warning(
            "%d workers without redis_url: each enforces the rate limits and quotas on its own, so an "
            "organization can use up to %d times its limits; set AIPLUS_REDIS_URL",
            settings.workers,
            settings.workers,
        )
    sched = settings.scheduling
    for config in settings.models:
        engine = create_model_engine(config)
        await engine.start()
        shared = (
            services.redis is not None and sched.shared and engine.remote
        )  # local engines are per process
        # workers share remote replicas: without Redis each schedules its part of their budget
        share = settings.workers if engine.remote and settings.workers > 1 and not shared else 1
        tokens = config.max_inflight_tokens * engine.replicas if config.max_inflight_tokens else None
        dispatcher = Dispatcher(
            config.id,
            max(1, -(-engine.capacity // share)),
            policy=sched.policy,
            w_in=sched.w_in,
            w_out=sched.w_out,
            queue_timeout_s=sched.queue_timeout_s,
            flex_timeout_s=sched.flex_timeout_s,
            max_inflight_tokens=max(1, -(-tokens // share)) if tokens else None,
            cost=CostModel() if sched.cost == "engine" else None,
            band_floors={"default": sched.default_floor, "flex": sched.flex_floor},
            priority_reserve=sched.priority_reserve,
        )
        models[config.id] = ModelRuntime(config, engine, dispatcher)
        if shared:
            fair_share = SharedFairShare(dispatcher, services.redis, settings.redis_prefix)
            dispatcher.shared = fair_share
            fair_share.start()
            services._shares.append(fair_share)
        if config.adaptive:
            loop = asyncio.get_running_loop().create_task(run_adaptive(config, engine, dispatcher, share))
            services._loops.append(loop)
        log.info(
            "model %s ready (%s engine, %d in flight at most)", config.id, config.engine, engine.capacity
        )


async def stop_services(services: Services) -> None:
    """Close the models, let pending settles finish, flush the ledger, close connections."""
    for loop in services._loops:
        loop.cancel()
    for fair_share in services._shares:
        await fair_share.close()
    await asyncio.gather(*(m.engine.close() for m in services.models.values()), return_exceptions=True)
    if services._tasks:
        await asyncio.wait(list(services._tasks), timeout=10)
    await services.limiter.close()
    await services.authenticator.close()
    await services.ledger.close()
    if services.redis is not None:
        breaker(services.redis).close()
        await services.redis.aclose()
    await asyncio.to_thread(services.db.dispose)
