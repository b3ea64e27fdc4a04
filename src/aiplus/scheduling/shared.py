"""One fair share across every gateway of a deployment, through Redis (``[scheduling] shared``).

Without it each ``aiplus serve`` process schedules its own part of a model's budget with its own counters,
and weights stop holding as soon as the load balancer routes orgs unevenly: org A only through gateway 1,
org B through both, weights 1:3, and B gets 7 parts in 8 (``bench/fairness.py``, "Across gateways"; NVIDIA
Dynamo's issue #15187 saw 4:1 become 163:162 the same way). With Redis:

- counters are the deployment's: every charge is added to one Redis hash (batched, a few ms late), and each
  process reads back the shared value of the orgs it has queued or running; an org that becomes backlogged
  is lifted to the lowest counter any other gateway bids in its band, as in a single queue;
- the model's in-flight budget is the deployment's: a process may start a request only when one Lua script
  finds a free slot (requests in flight summed over live processes) and no other live process bids lower
  (band first, then counter). The lowest bid over the whole deployment wins the next slot, as
  ``FairQueue.dispatch`` would pick it in one process;
- each process's in-flight count is a lease: it heartbeats with every call (at least every
  ``IDLE_POLL_S``), and a process not heard from for ``LEASE_S`` is dropped with its slots and bid, so a
  killed gateway gives back its share.

When Redis fails, each process schedules its own queue with the whole budget until it answers again.
Limits: band floors and the priority reserve are applied by each process to its own queue; under FCFS every
bid is equal, so the budget is shared but the order across gateways is first to ask. A request waits at
least one Redis round trip, and a gateway that is not the lowest bidder polls every ``BUSY_POLL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from aiplus.scheduling.fair_queue import BANDS

if TYPE_CHECKING:
    from aiplus.scheduling.dispatcher import Dispatcher

log = logging.getLogger("aiplus")
LEASE_S = 3.0
BUSY_POLL_S = 0.01
IDLE_POLL_S = 0.2

# KEYS: procs (zset proc -> expiry ms), inflight (hash proc -> n), bids (hash proc -> "rank counter")
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], p)
  redis.call('HDEL', KEYS[2], p)
  redis.call('HDEL', KEYS[3], p)
end
local function lower(other, rank, counter)
  local r, c = string.match(other, '(%S+) (%S+)')
  r, c = tonumber(r), tonumber(c)
  return r < rank or (r == rank and c < counter)
end
"""

# ARGV: proc, lease_ms, capacity, rank, counter -> 1 when a slot is granted
_GRANT = (
    _LIVE
    + """
local rank, counter = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4] .. ' ' .. ARGV[5])
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
if used >= tonumber(ARGV[3]) then return 0 end
local bids = redis.call('HGETALL', KEYS[3])
for i = 1, #bids, 2 do
  if bids[i] ~= ARGV[1] and lower(bids[i + 1], rank, counter) then return 0 end
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""
)

# ARGV: proc, lease_ms -> frees one slot of this process (never below zero; nothing if it was dropped)
_RELEASE = (
    _LIVE
    + """
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], -1) end
return n
"""
)

# KEYS: procs, inflight, bids, counters. ARGV: proc, lease_ms, bid ('' for none), n, n * (field, delta),
# m, m * (field, rank), then the fields to read back -> their shared counters
_SYNC = (
    _LIVE
    + """
if ARGV[3] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) else redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
local i = 4
local n = tonumber(ARGV[i])
for k = 1, n do redis.call('HINCRBYFLOAT', KEYS[4], ARGV[i + 2 * k - 1], ARGV[i + 2 * k]) end
i = i + 2 * n + 1
local m = tonumber(ARGV[i])
if m > 0 then
  local bids = redis.call('HGETALL', KEYS[3])
  for k = 1, m do
    local field, rank = ARGV[i + 2 * k - 1], tonumber(ARGV[i + 2 * k])
    local floor = nil
    for j = 1, #bids, 2 do
      if bids[j] ~= ARGV[1] then
        local r, c = string.match(bids[j + 1], '(%S+) (%S+)')
        if tonumber(r) == rank and (floor == nil or tonumber(c) < floor) then floor = tonumber(c) end
      end
    end
    local current = tonumber(redis.call('HGET', KEYS[4], field) or '0')
    if floor ~= nil and current < floor then redis.call('HSET', KEYS[4], field, tostring(floor)) end
  end
end
i = i + 2 * m + 1
if i > #ARGV then return {} end
return redis.call('HMGET', KEYS[4], unpack(ARGV, i))
"""
)


class SharedFairShare:
    """Joins one model's Dispatcher to the deployment's counters and budget in Redis; ``start`` runs it."""

    def __init__(self, dispatcher: Dispatcher, redis: Any, prefix: str, process: str | None = None):
        self.dispatcher = dispatcher
        self.process = process or f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
        base = f"{prefix}fair:{dispatcher.model_id}:"
        self._keys = [base + "procs", base + "inflight", base + "bids", base + "counters"]
        self._grant = redis.register_script(_GRANT)
        self._release = redis.register_script(_RELEASE)
        self._sync = redis.register_script(_SYNC)
        self._charges: dict[str, float] = {}
        self._lifts: dict[str, int] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lease_ms = str(int(LEASE_S * 1000))
        self.errors = 0
        self._closed = False
        queue = dispatcher.queue
        queue.on_charge = self._charged
        queue.on_activate = self._activated
        self._ranks = {name: i for i, name in enumerate(BANDS)}

    def _charged(self, band: str, org: str, amount: float) -> None:
        field = f"{band}|{org}"
        self._charges[field] = self._charges.get(field, 0.0) + amount

    def _activated(self, band: str, org: str) -> None:
        self._lifts[f"{band}|{org}"] = self._ranks[band]

    def kick(self) -> None:
        """Something changed locally (a request queued or finished): try for slots now."""
        self._kick.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"fair-{self.dispatcher.model_id}"
        )

    async def close(self) -> None:
        """Stop taking part (the slots still held expire with the lease, as when a process dies)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def released(self) -> None:
        """A local request ended: give its slot back to the deployment (in the background)."""
        task = asyncio.get_running_loop().create_task(
            self._release(self._keys[:3], [self.process, self._lease_ms])
        )
        task.add_done_callback(_quiet)
        self._kick.set()

    async def sync(self) -> None:
        """Heartbeat, publish this process's bid, push charges, lift newly backlogged orgs, read counters."""
        queue = self.dispatcher.queue
        charges, self._charges = self._charges, {}
        lifts, self._lifts = self._lifts, {}
        bid = queue.bid()
        args: list[Any] = [self.process, self._lease_ms, "" if bid is None else f"{bid[0]} {bid[1]!r}"]
        args.append(len(charges))
        for field, delta in charges.items():
            args += [field, repr(delta)]
        args.append(len(lifts))
        for field, rank in lifts.items():
            args += [field, rank]
        fields = [f"{band}|{org}" for band, org in queue.active()]
        values = await self._sync(self._keys, args + fields)
        for field, value in zip(fields, values, strict=False):
            if value is not None:
                band, org = field.split("|", 1)
                queue.set_counter(org, band, float(value) + self._charges.get(field, 0.0))

    async def _take(self) -> None:
        """Start local requests while the deployment grants this process the next slot."""
        dispatcher = self.dispatcher
        queue = dispatcher.queue
        while (bid := queue.bid()) is not None:
            granted = await self._grant(
                self._keys[:3], [self.process, self._lease_ms, queue.capacity, bid[0], repr(bid[1])]
            )
            if not granted:
                return
            if not dispatcher._dispatch_one():
                await self._release(self._keys[:3], [self.process, self._lease_ms])
                return

    async def _run(self) -> None:
        while not self._closed:
            self._kick.clear()  # a kick from here on wakes the next round
            try:
                await self.sync()
                await self._take()
                if self.dispatcher.queue.queued == 0:
                    await self.sync()  # withdraw the bid at once
                self.errors = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: schedule this process's queue on its own until it is back
                self.errors += 1
                if self.errors == 1:
                    log.exception(
                        "fair share of %s: Redis call failed; scheduling locally", self.dispatcher.model_id
                    )
                queue = self.dispatcher.queue
                while queue.in_flight < queue.capacity and self.dispatcher._dispatch_one():
                    pass
            wait = BUSY_POLL_S if self.dispatcher.queue.queued else IDLE_POLL_S
            try:
                async with asyncio.timeout(wait):
                    await self._kick.wait()
            except TimeoutError:
                pass


def _quiet(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("fair share: releasing a slot failed: %s", task.exception())
