"""Admission limits per organization: requests/min and tokens/min buckets, a monthly token quota, concurrency.

A request reserves (prompt tokens + max_tokens) at admission and settles to its real usage at the end, so a
concurrent burst can overshoot a limit by no more than what was reserved and then not used. State lives in
the process by default; with Redis it lives there and every check-and-reserve is one atomic Lua script, so
several ``aiplus serve`` processes enforce one global limit. Reservations of a process that died (kill -9)
are dropped once its heartbeat key expires; monthly usage is seeded from the ledger's daily rollups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa

from aiplus.config import DEFAULT_REDIS_PREFIX, Settings, TierConfig
from aiplus.storage.tables import usage_daily

log = logging.getLogger(__name__)

RESERVATION_TTL_S = 900  # longer than any request may run; a reservation older than this is a leak
HEARTBEAT_TTL_S = 15
HEARTBEAT_EVERY_S = 5
MONTH_KEY_TTL_S = 40 * 86400

OK, CONCURRENCY, QUOTA_EXHAUSTED, RPM, TPM, TOO_LARGE, QUOTA_BUSY, NEED_SEED = 0, 1, 2, 3, 4, 5, 6, -1


class RateLimited(Exception):
    """A 429: ``code`` is ``rate_limit_exceeded`` or ``insufficient_quota``, as OpenAI sends them."""

    def __init__(self, code: str, message: str, retry_after: int, headers: dict[str, str]):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.headers = {**headers, "retry-after": str(retry_after)}


@dataclass(slots=True)
class Reservation:
    id: str
    org_id: str
    tokens: int
    tier: TierConfig
    month: str
    headers: dict[str, str]
    backend: _Backend
    settled: bool = False


@dataclass(slots=True)
class _Outcome:
    status: int
    detail: float = 0.0  # retry in ms (rpm/tpm), or the month's used tokens (quota)
    req_level: float = 0.0
    tok_level: float = 0.0


_month_cache: tuple[float, str] = (0.0, "")


def _month(now: datetime | None = None) -> str:
    global _month_cache
    if now is not None:
        return now.strftime("%Y-%m")
    t = time.time()
    if t - _month_cache[0] >= 1.0:  # re-read the calendar once a second, not once a request
        _month_cache = (t, datetime.now(UTC).strftime("%Y-%m"))
    return _month_cache[1]


def _month_bounds(month: str) -> tuple[date, date]:
    year, mon = int(month[:4]), int(month[5:7])
    start = date(year, mon, 1)
    end = date(year + (mon == 12), mon % 12 + 1, 1)
    return start, end


def _seconds_to_month_end(month: str) -> int:
    _start, end = _month_bounds(month)
    left = datetime(end.year, end.month, end.day, tzinfo=UTC) - datetime.now(UTC)
    return max(1, math.ceil(left.total_seconds()))


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``17ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def _headers(tier: TierConfig, req_level: float, tok_level: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if tier.requests_per_minute:
        rpm = tier.requests_per_minute
        level = min(rpm, max(0.0, req_level))
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(int(level))
        headers["x-ratelimit-reset-requests"] = _duration((rpm - level) * 60 / rpm)
    if tier.tokens_per_minute:
        tpm = tier.tokens_per_minute
        level = min(tpm, max(0.0, tok_level))
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(int(level))
        headers["x-ratelimit-reset-tokens"] = _duration((tpm - level) * 60 / tpm)
    return headers


def ledger_month_usage(engine: sa.Engine) -> Callable[[str, str], Awaitable[int]]:
    """Month-to-date tokens of an org, from the daily rollups (never the raw events)."""

    def _read(org_id: str, month: str) -> int:
        start, end = _month_bounds(month)
        query = sa.select(
            sa.func.coalesce(sa.func.sum(usage_daily.c.prompt_tokens + usage_daily.c.completion_tokens), 0)
        ).where(usage_daily.c.org_id == org_id, usage_daily.c.day >= start, usage_daily.c.day < end)
        with engine.connect() as conn:
            return int(conn.execute(query).scalar())

    async def used(org_id: str, month: str) -> int:
        return await asyncio.to_thread(_read, org_id, month)

    return used


async def _no_usage(_org_id: str, _month: str) -> int:
    return 0


class _Backend:
    async def reserve(self, org: str, tier: TierConfig, tokens: int, res_id: str, month: str) -> _Outcome:
        raise NotImplementedError

    async def settle(self, res: Reservation, actual: int) -> None:
        raise NotImplementedError

    async def seed(self, org: str, month: str, used: int) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class _OrgState:
    req: float | None = None
    req_ts: float = 0.0
    tok: float | None = None
    tok_ts: float = 0.0
    inflight: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (tokens, deadline)
    month: str = ""
    used: int | None = None


def _refill(level: float | None, ts: float, now: float, per_minute: int) -> float:
    if level is None:
        return float(per_minute)
    return min(float(per_minute), level + (now - ts) * per_minute / 60.0)


class MemoryBackend(_Backend):
    """State in this process; every check-and-reserve runs without an await, so it is atomic in the event loop."""

    def __init__(self) -> None:
        self._orgs: dict[str, _OrgState] = {}

    def _state(self, org: str, month: str) -> _OrgState:
        state = self._orgs.get(org)
        if state is None:
            state = self._orgs[org] = _OrgState(month=month)
        if state.month != month:
            state.month, state.used = month, None
        return state

    async def seed(self, org: str, month: str, used: int) -> None:
        state = self._state(org, month)
        if state.used is None:
            state.used = used

    async def reserve(self, org: str, tier: TierConfig, tokens: int, res_id: str, month: str) -> _Outcome:
        state = self._state(org, month)
        now = time.monotonic()
        if state.inflight:  # a reservation nobody settled (a caller's bug) must not hold a slot forever
            for stale in [k for k, (_t, deadline) in state.inflight.items() if deadline < now]:
                del state.inflight[stale]
        rpm, tpm = tier.requests_per_minute, tier.tokens_per_minute
        req = _refill(state.req, state.req_ts, now, rpm) if rpm else 0.0
        tok = _refill(state.tok, state.tok_ts, now, tpm) if tpm else 0.0
        if tier.monthly_token_quota and state.used is None:
            return _Outcome(NEED_SEED)
        if tier.max_concurrent and len(state.inflight) >= tier.max_concurrent:
            return _Outcome(CONCURRENCY, 1000, req, tok)
        if tier.monthly_token_quota:
            if state.used + tokens > tier.monthly_token_quota:
                return _Outcome(QUOTA_EXHAUSTED, state.used, req, tok)
            reserved = sum(t for t, _deadline in state.inflight.values())
            if state.used + reserved + tokens > tier.monthly_token_quota:
                return _Outcome(QUOTA_BUSY, 1000, req, tok)
        if tpm and tokens > tpm:
            return _Outcome(TOO_LARGE, 60_000, req, tok)
        if rpm and req < 1:
            return _Outcome(RPM, (1 - req) * 60_000 / rpm, req, tok)
        if tpm and tok < tokens:
            return _Outcome(TPM, (tokens - tok) * 60_000 / tpm, req, tok)
        if rpm:
            state.req, state.req_ts = req - 1, now
        if tpm:
            state.tok, state.tok_ts = tok - tokens, now
        state.inflight[res_id] = (tokens, now + RESERVATION_TTL_S)
        return _Outcome(OK, 0, req - 1, tok - tokens)

    async def settle(self, res: Reservation, actual: int) -> None:
        self.settle_now(res, actual)

    def settle_now(self, res: Reservation, actual: int) -> None:
        state = self._orgs.get(res.org_id)
        if state is None:
            return
        reserved = state.inflight.pop(res.id, None)
        if state.month == res.month and state.used is not None:
            state.used += actual
        tpm = res.tier.tokens_per_minute
        if tpm and state.tok is not None and (reserved is not None or actual > res.tokens):
            now = time.monotonic()
            level = _refill(state.tok, state.tok_ts, now, tpm)
            state.tok, state.tok_ts = min(float(tpm), level + res.tokens - actual), now


_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local quota, maxc = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, member, ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local procs = ARGV[8]
local used = 0
if quota > 0 then
  local u = redis.call('GET', KEYS[3])
  if not u then return {-1, 0, '0', '0'} end
  used = tonumber(u)
end
local inflight, reserved, alive = 0, 0, {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local m, v = all[i], all[i + 1]
  local sep = string.find(v, ':', 1, true)
  local tok, deadline = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1))
  local proc = string.sub(m, 1, string.find(m, '|', 1, true) - 1)
  if alive[proc] == nil then alive[proc] = redis.call('EXISTS', procs .. proc) == 1 end
  if deadline < now or not alive[proc] then
    redis.call('HDEL', KEYS[2], m)
  else
    inflight, reserved = inflight + 1, reserved + tok
  end
end
local b = redis.call('HMGET', KEYS[1], 'r', 'rt', 'k', 'kt')
local r, k = 0, 0
if rpm > 0 then
  r = tonumber(b[1]) or rpm
  r = math.min(rpm, r + (now - (tonumber(b[2]) or now)) * rpm / 60000)
end
if tpm > 0 then
  k = tonumber(b[3]) or tpm
  k = math.min(tpm, k + (now - (tonumber(b[4]) or now)) * tpm / 60000)
end
local rs, ks = tostring(r), tostring(k)
if maxc > 0 and inflight >= maxc then return {1, 1000, rs, ks} end
if quota > 0 then
  if used + tokens > quota then return {2, used, rs, ks} end
  if used + reserved + tokens > quota then return {6, 1000, rs, ks} end
end
if tpm > 0 and tokens > tpm then return {5, 60000, rs, ks} end
if rpm > 0 and r < 1 then return {3, math.ceil((1 - r) * 60000 / rpm), rs, ks} end
if tpm > 0 and k < tokens then return {4, math.ceil((tokens - k) * 60000 / tpm), rs, ks} end
if rpm > 0 then r = r - 1; redis.call('HSET', KEYS[1], 'r', tostring(r), 'rt', now) end
if tpm > 0 then k = k - tokens; redis.call('HSET', KEYS[1], 'k', tostring(k), 'kt', now) end
redis.call('PEXPIRE', KEYS[1], 120000)
redis.call('HSET', KEYS[2], member, tokens .. ':' .. (now + ttl))
redis.call('PEXPIRE', KEYS[2], ttl)
return {0, 0, tostring(r), tostring(k)}
"""

_SETTLE_LUA = """
local existed = redis.call('HDEL', KEYS[2], ARGV[1])
local reserved, actual, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], actual) end
if tpm > 0 and (existed == 1 or actual > reserved) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local b = redis.call('HMGET', KEYS[1], 'k', 'kt')
  if b[1] then
    local k = math.min(tpm, tonumber(b[1]) + (now - tonumber(b[2])) * tpm / 60000)
    k = math.min(tpm, k + reserved - actual)
    redis.call('HSET', KEYS[1], 'k', tostring(k), 'kt', now)
    redis.call('PEXPIRE', KEYS[1], 120000)
  end
end
return existed
"""


class RedisBackend(_Backend):
    """State in Redis, shared by every process: one atomic Lua script per reserve and per settle."""

    def __init__(self, redis, prefix: str = DEFAULT_REDIS_PREFIX):
        self._redis = redis
        self._prefix = f"{prefix}rl:"
        self._proc = uuid.uuid4().hex[:12]
        from aiplus.storage.redis import breaker

        self.breaker = breaker(redis)  # shared with every other user of this client
        self._reserve = redis.register_script(_RESERVE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._heartbeat: asyncio.Task | None = None

    def _keys(self, org: str, month: str) -> list[str]:
        p = self._prefix
        return [f"{p}bucket:{org}", f"{p}inflight:{org}", f"{p}used:{org}:{month}"]

    async def start(self) -> None:
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="aiplus-limits-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            try:
                await self._heartbeat
            except asyncio.CancelledError:
                pass
        with contextlib.suppress(Exception):  # the key expires by itself
            await self._redis.delete(f"{self._prefix}proc:{self._proc}")

    async def _beat(self) -> None:
        await self._redis.set(f"{self._prefix}proc:{self._proc}", "1", ex=HEARTBEAT_TTL_S)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self._beat()
            except Exception as exc:
                log.warning("limits: Redis heartbeat failed: %s", exc)

    async def seed(self, org: str, month: str, used: int) -> None:
        await self._redis.set(self._keys(org, month)[2], used, nx=True, ex=MONTH_KEY_TTL_S)

    async def reserve(self, org: str, tier: TierConfig, tokens: int, res_id: str, month: str) -> _Outcome:
        args = [
            tier.requests_per_minute or 0,
            tier.tokens_per_minute or 0,
            tier.monthly_token_quota or 0,
            tier.max_concurrent or 0,
            tokens,
            f"{self._proc}|{res_id}",
            RESERVATION_TTL_S * 1000,
            f"{self._prefix}proc:",
        ]
        status, detail, req, tok = await self._reserve(keys=self._keys(org, month), args=args)
        return _Outcome(int(status), float(detail), float(req), float(tok))

    async def settle(self, res: Reservation, actual: int) -> None:
        args = [f"{self._proc}|{res.id}", res.tokens, actual, res.tier.tokens_per_minute or 0]
        await self._settle(keys=self._keys(res.org_id, res.month), args=args)


class Limiter:
    """Reserve at admission, settle at the end. ``reserve`` raises RateLimited; ``settle`` is idempotent."""

    def __init__(
        self,
        tiers: Sequence[TierConfig],
        backend: _Backend,
        month_usage: Callable[[str, str], Awaitable[int]] = _no_usage,
        *,
        fallback: _Backend | None = None,
    ):
        self._tiers = {t.name: t for t in tiers}
        self._default = self._tiers.get("standard", TierConfig("standard"))
        self._backend = backend
        self._fallback = fallback
        self._month_usage = month_usage
        self._redis_down_logged = False
        self.owned_redis = None  # a client create_limiter opened, closed with the limiter

    async def start(self) -> None:
        if isinstance(self._backend, RedisBackend):
            await self._backend.start()

    async def close(self) -> None:
        if isinstance(self._backend, RedisBackend):
            await self._backend.close()
        if self.owned_redis is not None:
            await self.owned_redis.aclose()

    def tier(self, name: str) -> TierConfig:
        return self._tiers.get(name, self._default)

    async def reserve(self, principal, tokens: int) -> Reservation:
        """Admit one request that may use ``tokens`` (prompt + max_tokens), or raise RateLimited."""
        tier = self.tier(principal.tier)
        org, month, res_id = principal.org_id, _month(), os.urandom(12).hex()
        tokens = max(0, int(tokens))
        backend = self._backend
        shared = getattr(backend, "breaker", None)
        if self._fallback is not None and shared is not None and shared.open:
            backend = self._fallback  # shared state failed a moment ago: do not make every request wait on it
        try:
            outcome = await self._reserve(backend, org, tier, tokens, res_id, month)
        except Exception as exc:
            if self._fallback is None or backend is self._fallback:
                raise
            if shared is not None:
                shared.failed(exc, "limits")
            if not self._redis_down_logged:
                log.error(
                    "limits: shared state unreachable (%s); enforcing per process until it is back", exc
                )
                self._redis_down_logged = True
            backend = self._fallback
            outcome = await self._reserve(backend, org, tier, tokens, res_id, month)
        else:
            if backend is self._backend and self._redis_down_logged:
                log.warning("limits: shared state reachable again")
                self._redis_down_logged = False
        headers = _headers(tier, outcome.req_level, outcome.tok_level)
        if outcome.status != OK:
            raise self._refusal(outcome, tier, tokens, month, headers)
        return Reservation(res_id, org, tokens, tier, month, headers, backend)

    async def _reserve(self, backend: _Backend, org, tier, tokens, res_id, month) -> _Outcome:
        outcome = await backend.reserve(org, tier, tokens, res_id, month)
        if outcome.status == NEED_SEED:
            await backend.seed(org, month, await self._month_usage(org, month))
            outcome = await backend.reserve(org, tier, tokens, res_id, month)
        return outcome

    def settle_nowait(self, reservation: Reservation, actual_tokens: int) -> Coroutine | None:
        """Settle at once when the state lives in this process; otherwise the coroutine to run off the request
        path (shared state is a round trip away)."""
        if isinstance(reservation.backend, MemoryBackend):
            if not reservation.settled:
                reservation.settled = True
                reservation.backend.settle_now(reservation, max(0, int(actual_tokens)))
            return None
        return self.settle(reservation, actual_tokens)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Charge the real usage, refund the rest of the reservation, free the concurrency slot. Idempotent."""
        if reservation.settled:
            return
        reservation.settled = True
        shared = getattr(reservation.backend, "breaker", None)
        if shared is not None and shared.open:
            return  # Redis is away: the slot expires with its TTL rather than each settle waiting on a timeout
        try:
            await reservation.backend.settle(reservation, max(0, int(actual_tokens)))
        except Exception as exc:  # the slot expires with its TTL; metering is the ledger's job
            log.warning("limits: cannot settle reservation %s: %s", reservation.id, exc)

    @staticmethod
    def _refusal(outcome: _Outcome, tier: TierConfig, tokens: int, month: str, headers) -> RateLimited:
        status = outcome.status
        retry = max(1, math.ceil(outcome.detail / 1000))
        if status == QUOTA_EXHAUSTED:
            return RateLimited(
                "insufficient_quota",
                f"You exceeded your monthly token quota: {int(outcome.detail)} of "
                f"{tier.monthly_token_quota} tokens used this month, this request needs up to {tokens}. "
                "The quota renews at the start of next month (UTC).",
                _seconds_to_month_end(month),
                headers,
            )
        messages = {
            CONCURRENCY: f"Too many concurrent requests: the limit is {tier.max_concurrent} at a time.",
            QUOTA_BUSY: "Requests in flight hold the rest of your monthly token quota; retry when they finish.",
            TOO_LARGE: f"Request too large: it may use up to {tokens} tokens (prompt + max_tokens), "
            f"more than the {tier.tokens_per_minute} tokens per minute allowed. Lower max_tokens or the prompt.",
            RPM: f"Rate limit reached for requests per minute: limit {tier.requests_per_minute}.",
            TPM: f"Rate limit reached for tokens per minute: limit {tier.tokens_per_minute}, "
            f"requested {tokens}.",
        }
        return RateLimited(
            "rate_limit_exceeded", messages[status] + f" Retry after {retry}s.", retry, headers
        )


def create_limiter(
    settings: Settings,
    redis_url: str | None = None,
    engine: sa.Engine | None = None,
    *,
    redis=None,
    prefix: str = DEFAULT_REDIS_PREFIX,
) -> Limiter:
    """A Limiter for ``settings.tiers``: Redis-backed when a client or URL is given, else in the process."""
    month_usage = ledger_month_usage(engine) if engine is not None else _no_usage
    owned = None
    if redis is None and redis_url:
        from aiplus.storage.redis import create_redis

        redis = owned = create_redis(redis_url)
    if redis is None:
        return Limiter(settings.tiers, MemoryBackend(), month_usage)
    limiter = Limiter(settings.tiers, RedisBackend(redis, prefix), month_usage, fallback=MemoryBackend())
    limiter.owned_redis = owned
    return limiter
