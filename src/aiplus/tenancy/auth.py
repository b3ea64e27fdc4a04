"""The hot-path authenticator: bearer key → Principal, served from memory, revalidated when keys change.

Steady state: one HMAC and one dict lookup per request, no database round trip. A revocation anywhere
changes an auth version; every cached key is revalidated against the database on its next use:
- in the changing process at once (``tenancy.changes`` signals through ``signal``, which drops the entry);
- in other processes sharing Redis at once: ``INCR`` of a version key, read with one ``GET`` per request
  (``revocation="strict"``, the default); or, with ``revocation="pubsub"``, no per-request round trip and
  a published change that reaches the other processes about a millisecond later;
- without Redis, within ``poll_interval`` seconds: a background task polls the version row in ``secrets``.
A database failure never turns into a cached rejection: entries are only cached from successful reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from aiplus.config import DEFAULT_REDIS_PREFIX, TierConfig
from aiplus.storage.redis import breaker
from aiplus.tenancy import changes
from aiplus.tenancy.errors import AuthUnavailable
from aiplus.tenancy.keys import KEY_PREFIX, key_digest, lookup_digest
from aiplus.tenancy.secrets import auth_version

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 200
MAX_CACHED = 100_000
MAX_NEGATIVE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    key_id: str
    tier: str
    weight: float
    models: frozenset[str] | None
    sector: str


@dataclass(slots=True)
class _Entry:
    principal: Principal | None  # None: no such key, or revoked
    expires_at: float | None  # the key's own expiry (epoch seconds)
    epoch: int  # the auth epoch it was read in
    fresh_until: (
        float  # monotonic time after which it is re-read (a stale one still serves if the DB is down)
    )


class Authenticator:
    """Bearer key → Principal. ``start()`` begins the version poller; ``close()`` stops it."""

    def __init__(
        self,
        engine: sa.Engine,
        secret: bytes,
        tiers: Sequence[TierConfig],
        *,
        redis=None,
        redis_prefix: str = DEFAULT_REDIS_PREFIX,
        ttl: float = 300.0,
        negative_ttl: float = 5.0,
        poll_interval: float = 1.0,
        revocation: str = "strict",
    ):
        self._engine = engine
        self._secret = secret
        self._weights = {t.name: t.weight for t in tiers}
        self._redis = redis
        self._breaker = breaker(redis) if redis is not None else None
        self._version_key = changes.version_key(redis_prefix)
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._poll_interval = poll_interval
        self._cache: dict[str, _Entry] = {}
        self._negative: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._epoch = 0
        self._db_version: str | None = None
        self._redis_version: bytes | None = None
        self._redis_ok = True
        self._db_ok = True
        if revocation not in ("strict", "pubsub"):
            raise ValueError("revocation must be 'strict' (one Redis GET per request) or 'pubsub'")
        self._strict = revocation == "strict"
        self._channel = changes.channel(redis_prefix)
        self.signal = changes.Signal(redis, redis_prefix, forget=self._forget)  # pass to tenancy.changes
        self._poller: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        self._db_version = await asyncio.to_thread(self._read_db_version)
        if self._redis is not None:
            try:
                self._redis_version = await self._redis.get(self._version_key)
            except Exception as exc:  # Redis down: the DB poller still carries revocations
                log.warning("auth: Redis unreachable at start (%s); revocations propagate by polling", exc)
        self._poller = asyncio.create_task(self._poll(), name="aiplus-auth-poll")
        if self._redis is not None and not self._strict:
            self._listener = asyncio.create_task(self._listen(), name="aiplus-auth-listen")

    async def _listen(self) -> None:
        """``pubsub`` mode: a change published by any process bumps the epoch here (~1 ms later)."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._epoch += 1  # changes missed while (re)subscribing
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._epoch += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the DB poller carries revocations meanwhile
                log.warning("auth: Redis subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None

    def _read_db_version(self) -> str | None:
        with self._engine.connect() as conn:
            return auth_version(conn)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                version = await asyncio.to_thread(self._read_db_version)
            except Exception as exc:
                if self._db_ok:
                    log.warning("auth: cannot poll the auth version (%s); retrying every second", exc)
                    self._db_ok = False
                continue
            self._db_ok = True
            if version != self._db_version:
                self._db_version = version
                self._epoch += 1

    async def _check_redis_version(self) -> None:
        if self._breaker.open:  # Redis failed a moment ago: no request waits on it; the DB poller carries on
            return
        try:
            version = await self._redis.get(self._version_key)
        except Exception as exc:  # fall back to the DB poller
            self._breaker.failed(exc, "auth")
            if self._redis_ok:
                log.warning(
                    "auth: Redis unreachable (%s); revocations propagate by polling until it is back", exc
                )
                self._redis_ok = False
            return
        self._redis_ok = True
        if version != self._redis_version:
            self._redis_version = version
            self._epoch += 1

    async def authenticate(self, bearer_token: str) -> Principal | None:
        """The principal for this key, or None (unknown, revoked, expired: answer 401).

        Raises AuthUnavailable (answer 503) when the key must be read and the database cannot be reached.
        """
        if not bearer_token.startswith(KEY_PREFIX) or len(bearer_token) > MAX_KEY_LENGTH:
            return None
        if self._redis is not None and self._strict:
            await self._check_redis_version()
        digest = key_digest(self._secret, bearer_token)
        now = time.monotonic()
        entry = self._cache.get(digest) or self._negative.get(digest)
        if entry is not None and entry.epoch == self._epoch and now < entry.fresh_until:
            return self._valid(entry)
        try:
            entry = await self._load(digest)
        except Exception as exc:
            stale = self._cache.get(digest)
            if stale is not None and stale.epoch == self._epoch:
                # Nothing was revoked since this entry was read: keep serving it while the DB is away.
                return self._valid(stale)
            raise AuthUnavailable(f"the key store is unavailable: {exc.__class__.__name__}") from exc
        return self._valid(entry)

    @staticmethod
    def _valid(entry: _Entry) -> Principal | None:
        if entry.principal is None:
            return None
        if entry.expires_at is not None and time.time() >= entry.expires_at:
            return None
        return entry.principal

    async def _load(self, digest: str) -> _Entry:
        """Read one key; concurrent misses of it share one query, which no caller's cancellation can cut short."""
        task = self._loading.get(digest)
        if task is None:
            task = self._loading[digest] = asyncio.ensure_future(self._read_entry(digest))
            task.add_done_callback(
                lambda done: (self._loading.pop(digest, None), done.cancelled() or done.exception())
            )
        return await asyncio.shield(task)

    async def _read_entry(self, digest: str) -> _Entry:
        epoch = self._epoch
        row = await asyncio.to_thread(self._read_key, digest)
        entry = self._entry(row, epoch)
        self._store(digest, entry)
        return entry

    def _read_key(self, digest: str) -> dict | None:
        with self._engine.connect() as conn:
            return lookup_digest(conn, digest)

    def _entry(self, row: dict | None, epoch: int) -> _Entry:
        now = time.monotonic()
        if row is None or row["revoked_at"] is not None:
            return _Entry(None, None, epoch, now + self._negative_ttl)
        principal = Principal(
            org_id=row["org_id"],
            key_id=row["id"],
            tier=row["tier"],
            weight=self._weights.get(row["tier"], 1.0),
            models=frozenset(row["models"]) if row["models"] is not None else None,
            sector=row["sector"],
        )
        expires = row["expires_at"].timestamp() if row["expires_at"] is not None else None
        return _Entry(principal, expires, epoch, now + self._ttl)

    def _store(self, digest: str, entry: _Entry) -> None:
        if entry.principal is None:
            self._cache.pop(digest, None)
            table, limit = self._negative, MAX_NEGATIVE
        else:
            self._negative.pop(digest, None)
            table, limit = self._cache, MAX_CACHED
        if len(table) >= limit and digest not in table:
            table.pop(next(iter(table)))  # oldest first: dicts keep insertion order
        table[digest] = entry

    def invalidate(self) -> None:
        """Revalidate every cached key on its next use (after any change to keys or orgs)."""
        self._epoch += 1

    def _forget(self, digest: str | None) -> None:
        """A change was committed here: drop ``digest`` and revalidate every other cached key."""
        if digest is not None:
            self._cache.pop(digest, None)
        self.invalidate()
