"""The live server's side of fair sharing: requests wait in asyncio for the turn ``FairQueue`` gives them.

The policy itself (weighted VTC, its lift, the token cap) is ``scheduling/fair_queue.py``, shared with the
simulator; this module adds waiting, timeouts, cancellation and the Prometheus gauges.

With ``cost = "engine"`` it also feeds the model's ``CostModel``: when a request ends, the engine time it
took — as the engine reported it (``Lease.engine_time``), or else its processor-sharing part of the time
the budget was busy (each second shared equally among the requests then in flight) — is one observation of
``alpha * uncached prompt + beta * output``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiplus import metrics
from aiplus.scheduling.clock import Clock, RealClock
from aiplus.scheduling.cost import CostModel
from aiplus.scheduling.fair_queue import QUEUED, RUNNING, FairQueue, Ticket


class QueueTimeout(Exception):
    """The request waited longer than the queue timeout; answer 429 with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Lease:
    """A dispatched request's hold on the budget: report output tokens, then release (idempotent)."""

    __slots__ = ("_dispatcher", "_ticket", "engine_s", "output_tokens", "waited_s")

    def __init__(self, dispatcher: Dispatcher, ticket: Ticket, waited_s: float):
        self._dispatcher = dispatcher
        self._ticket = ticket
        self.waited_s = waited_s
        self.output_tokens = 0
        self.engine_s: float | None = None  # as reported by the engine, when it does

    @property
    def org_id(self) -> str:
        return self._ticket.org.id

    @property
    def band(self) -> str:
        return self._ticket.band.name

    def output(self, n: int) -> None:
        """``n`` more output tokens were produced (charges the org's counter)."""
        self.output_tokens += n
        self._dispatcher.queue.output(self._ticket, n)

    def adjust_prompt(self, actual_prompt_tokens: int, cached_tokens: int | None = None) -> None:
        """Replace the estimated prompt size given to ``acquire`` with the engine's exact count, and say how
        many of those tokens the engine's prefix cache served (charged as cached under ``cost = "engine"``)."""
        self._dispatcher.queue.adjust_prompt(self._ticket, actual_prompt_tokens, cached_tokens)

    def engine_report(self, cached_tokens: int | None, engine_s: float | None) -> None:
        """What the engine said of this request beyond its token counts: prompt tokens its prefix cache served
        (charged as cached under ``cost = "engine"``), and its own measure of the seconds it spent on it."""
        if cached_tokens is not None:
            self._dispatcher.queue.adjust_prompt(self._ticket, self._ticket.prompt_tokens, cached_tokens)
        if engine_s is not None:
            self.engine_s = engine_s

    def release(self) -> None:
        """Free the slot and dispatch the next waiter; safe to call more than once."""
        if self._ticket.state is RUNNING:
            self._dispatcher._release(self._ticket, self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Dispatcher:
    """The asyncio face of a ``FairQueue`` for one model: ``acquire`` waits for a turn, ``Lease`` gives it back.

    Not thread-safe: every call happens on the event loop's thread, as everything in the server does.
    """

    def __init__(
        self,
        model_id: str,
        capacity: int,
        *,
        policy: str = "fair",
        w_in: float = 1.0,
        w_out: float = 2.0,
        queue_timeout_s: float = 120.0,
        flex_timeout_s: float | None = None,
        max_inflight_tokens: int | None = None,
        clock: Clock | None = None,
        cost: CostModel | None = None,
        band_floors: dict[str, float] | None = None,
        priority_reserve: float = 0.1,
    ):
        self.model_id = model_id
        self.queue = FairQueue(
            capacity,
            policy=policy,
            w_in=w_in,
            w_out=w_out,
            max_inflight_tokens=max_inflight_tokens,
            cost=cost,
            band_floors=band_floors,
            priority_reserve=priority_reserve,
        )
        self.cost = cost
        self.queue_timeout_s = queue_timeout_s
        self.flex_timeout_s = queue_timeout_s if flex_timeout_s is None else flex_timeout_s
        self._ps = 0.0  # processor-sharing integral: seconds per in-flight request, summed
        self._ps_at = 0.0
        self._ps_start: dict[int, float] = {}
        self.shared: Any = None  # a SharedFairShare when the deployment shares counters and budget
        self._now = (clock or RealClock()).now
        self._tier_metrics: dict[str, tuple[Any, Any]] = {}
        self._hold_s = 1.0  # moving average of how long a lease is held, for Retry-After
        self.dispatched = 0
        self.timeouts = 0
        self.cancelled = 0

    def _metrics(self, tier: str, band: str) -> tuple[Any, Any, Any]:
        children = self._tier_metrics.get((tier, band))
        if children is None:
            children = self._tier_metrics[(tier, band)] = (
                metrics.QUEUE_LENGTH.labels(self.model_id, tier),
                metrics.QUEUE_WAIT_SECONDS.labels(self.model_id, tier),
                metrics.BAND_QUEUE_LENGTH.labels(self.model_id, band),
            )
        return children

    def _queued(self, ticket: Ticket, n: int) -> None:
        children = self._metrics(ticket.tier, ticket.band.name)
        children[0].inc(n)
        children[2].inc(n)

    def _enter(
        self, org_id: str, weight: float, prompt_tokens: int, max_tokens: int, tier: str, band: str
    ) -> Ticket:
        ticket = self.queue.submit(
            org_id, weight, prompt_tokens, max_tokens, tier=tier, band=band, now=self._now()
        )
        self._queued(ticket, 1)
        self._pump()
        return ticket

    def acquire_nowait(
        self,
        org_id: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        tier: str = "standard",
        band: str = "default",
    ) -> Lease | None:
        """A turn at once when nobody waits and the budget has room — the common case, served without
        creating a waiter; None means the request must ``acquire`` (and wait) like everyone else."""
        q = self.queue
        if q.queued or q.in_flight >= q.capacity or self.shared is not None:
            return None
        cap = q.max_inflight_tokens
        if cap is not None and q.in_flight and q.inflight_tokens + prompt_tokens + max_tokens > cap:
            return None
        ticket = self._enter(org_id, weight, prompt_tokens, max_tokens, tier, band)
        if ticket.state is not RUNNING:  # cannot happen with nothing queued, but never strand a ticket
            self._drop(ticket)
            return None
        return Lease(self, ticket, 0.0)

    async def acquire(
        self,
        org_id: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        tier: str = "standard",
        band: str = "default",
    ) -> Lease:
        """Wait until dispatched. Raises QueueTimeout after ``queue_timeout_s`` (``flex_timeout_s`` in the
        flex band); cancelling the awaiting task (client gone) takes the request out of the queue."""
        ticket = self._enter(org_id, weight, prompt_tokens, max_tokens, tier, band)
        if ticket.state is RUNNING:
            return Lease(self, ticket, 0.0)
        loop = asyncio.get_running_loop()
        waiter = ticket.payload = loop.create_future()
        timer = loop.call_later(self._timeout(ticket), self._expire, ticket)
        try:
            await waiter
        except asyncio.CancelledError:
            if ticket.state is QUEUED:
                self._drop(ticket)
                self.cancelled += 1
            elif ticket.state is RUNNING:
                self._release(ticket)
            raise
        finally:
            timer.cancel()
        return Lease(self, ticket, ticket.dispatched_at - ticket.enqueued_at)

    def _timeout(self, ticket: Ticket) -> float:
        return self.flex_timeout_s if ticket.band.name == "flex" else self.queue_timeout_s

    def _share(self, now: float) -> float:
        """Advance the processor-sharing integral to ``now`` (call before in_flight changes)."""
        if self.queue.in_flight:
            self._ps += (now - self._ps_at) / self.queue.in_flight
        self._ps_at = now
        return self._ps

    def _pump(self) -> None:
        if self.shared is not None:  # the deployment decides who starts next (scheduling/shared.py)
            self.shared.kick()
            return
        queue = self.queue
        now = self._now()
        ps = self._share(now)  # the time up to now belongs to the requests already running
        while (ticket := queue.dispatch(now)) is not None:
            self._started(ticket, now, ps)

    def _dispatch_one(self) -> bool:
        """Start the next local request on a slot the deployment granted; False when none may start."""
        queue = self.queue
        now = self._now()
        ps = self._share(now)
        capacity = queue.capacity
        queue.capacity = queue.in_flight + 1
        try:
            ticket = queue.dispatch(now)
        finally:
            queue.capacity = capacity
        if ticket is None:
            return False
        self._started(ticket, now, ps)
        return True

    def _started(self, ticket: Ticket, now: float, ps: float) -> None:
        queue = self.queue
        if self.cost is not None:
            self._ps_start[id(ticket)] = ps
        self.dispatched += 1
        gauge, histogram, band_gauge = self._metrics(ticket.tier, ticket.band.name)
        gauge.dec()
        band_gauge.dec()
        metrics.BAND_REQUESTS.labels(self.model_id, ticket.band.name).inc()
        histogram.observe(now - ticket.enqueued_at)
        waiter = ticket.payload
        if waiter is None:
            return  # the caller is still inside acquire and sees the state itself
        if waiter.done():  # its task was cancelled a moment ago and has not run its handler yet
            queue.finish(ticket)
            if self.shared is not None:
                self.shared.released()
            return
        waiter.set_result(None)

    def _drop(self, ticket: Ticket) -> None:
        if self.queue.cancel(ticket):
            self._queued(ticket, -1)
            self._pump()  # the dropped request may have been a blocked head holding dispatch back

    def _expire(self, ticket: Ticket) -> None:
        if ticket.state is not QUEUED or ticket.payload.done():  # dispatched, or its waiter already gone
            return
        self._drop(ticket)
        self.timeouts += 1
        metrics.QUEUE_TIMEOUTS.labels(self.model_id, ticket.tier).inc()
        retry_after = self.retry_after()
        ticket.payload.set_exception(
            QueueTimeout(
                f"model {self.model_id!r} is busy: waited {self._timeout(ticket):g}s in the queue; "
                f"retry in {retry_after}s",
                retry_after,
            )
        )

    def _release(self, ticket: Ticket, lease: Lease | None = None) -> None:
        now = self._now()
        if self.cost is not None:
            shared = self._share(now) - self._ps_start.pop(id(ticket), self._ps)
            if lease is not None and lease.output_tokens:  # abandoned or failed requests say little
                seconds = lease.engine_s if lease.engine_s is not None else shared
                uncached = ticket.prompt_tokens - ticket.cached_tokens
                self.cost.observe(uncached, lease.output_tokens, seconds)
        self.queue.finish(ticket)
        if lease is not None:
            tokens = ticket.prompt_tokens + lease.output_tokens
            metrics.BAND_TOKENS.labels(self.model_id, ticket.band.name).inc(tokens)
        if self.shared is not None:
            self.shared.released()
        if ticket.dispatched_at is not None:
            self._hold_s += 0.05 * (now - ticket.dispatched_at - self._hold_s)
        self._pump()

    def resize(self, capacity: int, max_inflight_tokens: int | None = None) -> None:
        """Change the budget (replicas came or went); waiters are dispatched at once if it grew."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.queue.capacity = capacity
        self.queue.max_inflight_tokens = max_inflight_tokens
        self._pump()

    def retry_after(self) -> int:
        """Seconds a client should wait before retrying: the time the current queue needs to drain."""
        queue = self.queue
        estimate = self._hold_s * (queue.queued + 1) / queue.capacity
        return max(1, min(math.ceil(estimate), max(1, math.ceil(self.queue_timeout_s))))

    def snapshot(self) -> dict[str, Any]:
        """Queue lengths per org and tier, in flight, counters -- for /metrics, the admin API and tests."""
        snap = self.queue.snapshot()
        snap.update(
            model=self.model_id,
            flex_timeout_s=self.flex_timeout_s,
            dispatched=self.dispatched,
            timeouts=self.timeouts,
            cancelled=self.cancelled,
            queue_timeout_s=self.queue_timeout_s,
        )
        return snap
