"""Fair sharing of a model's in-flight budget among organizations.

``FairQueue`` is the whole policy, synchronous and clock-agnostic: the live server drives it through the
asyncio ``Dispatcher`` below, the simulator (``scheduling/simulation.py``) drives it from a virtual clock.

Policy "fair" is the weighted Virtual Token Counter (Sheng et al., OSDI 2024): dispatch the head of the
backlogged org with the smallest counter; charge ``w_in * prompt / weight`` at dispatch and
``w_out * n / weight`` for every ``n`` output tokens. Whenever an org becomes backlogged (its queue goes from
empty to non-empty: a newcomer, a returning org, or one whose queue drained while requests still ran), its
counter is lifted to at least the smallest counter among the *other* orgs that are backlogged or in flight
(with none, to the counter of the org served last). Credit is thus earned only while waiting. The paper's
reference code takes that minimum over queued orgs only: on an empty queue a newcomer keeps a stale low
counter and takes nearly all the service for minutes. Lifting also when the queue drained under running
requests (not only from fully idle) halves the worst service gap on the LMSYS trace (41.9k to 21.8k units
against a bound of 40k), since an org cannot bank credit between two bursts either.
Policy "fcfs" dispatches by arrival order from the same queues (counters are kept, for comparison).

The budget is ``capacity`` requests in flight and, optionally, ``max_inflight_tokens`` of
``prompt + max_tokens`` in flight. A free slot is never left idle while a request waits, except briefly under
the token cap. When the cap blocks the chosen head of line, the best-ranked request that fits is dispatched
instead, so the engine's memory does not sit idle; but a blocked head may be passed over at most
``max_bypass`` times, after which dispatch pauses until it fits: without that bound a stream of small
requests could starve a large one forever. The pause lasts until running requests free enough tokens, and
only happens when a large request was already passed over. ``max_bypass=0`` is strict head of line, as
engines admit from their own queues (vLLM, lightllm); the simulator uses it to model an engine. A request
larger than the whole cap runs when nothing else is in flight (refusing it is the engine's business).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

from aiplus import metrics
from aiplus.scheduling.clock import Clock, RealClock

POLICIES = ("fair", "fcfs")

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
CANCELLED = "cancelled"


class Ticket:
    """One request, from submission to finish. ``payload`` belongs to the caller (a future, a record...)."""

    __slots__ = (
        "org",
        "tier",
        "prompt_tokens",
        "max_tokens",
        "need",
        "seq",
        "enqueued_at",
        "dispatched_at",
        "state",
        "bypassed",
        "in_rate",
        "out_rate",
        "payload",
    )

    def __init__(
        self,
        org: _Org,
        tier: str,
        prompt_tokens: int,
        max_tokens: int,
        seq: int,
        now: float,
        in_rate: float,
        out_rate: float,
        payload: Any,
    ):
        self.org = org
        self.tier = tier
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.need = prompt_tokens + max_tokens
        self.seq = seq
        self.enqueued_at = now
        self.dispatched_at: float | None = None
        self.state = QUEUED
        self.bypassed = 0
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.payload = payload

    @property
    def org_id(self) -> str:
        return self.org.id


class _Org:
    __slots__ = ("id", "counter", "queue", "inflight")

    def __init__(self, org_id: str):
        self.id = org_id
        self.counter = 0.0
        self.queue: deque[Ticket] = deque()
        self.inflight = 0


class FairQueue:
    """Per-org FIFO queues and an in-flight budget; ``dispatch`` says which request runs next."""

    def __init__(
        self,
        capacity: int,
        *,
        policy: str = "fair",
        w_in: float = 1.0,
        w_out: float = 2.0,
        max_inflight_tokens: int | None = None,
        max_bypass: int = 4,
    ):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if max_inflight_tokens is not None and max_inflight_tokens < 1:
            raise ValueError("max_inflight_tokens must be >= 1 or None")
        self.capacity = capacity
        self.policy = policy
        self.w_in = w_in
        self.w_out = w_out
        self.max_inflight_tokens = max_inflight_tokens
        self.max_bypass = max_bypass
        self.in_flight = 0
        self.inflight_tokens = 0
        self.queued = 0
        self._fair = policy == "fair"
        self._seq = 0
        self._orgs: dict[str, _Org] = {}
        self._backlogged: dict[str, _Org] = {}  # orgs with queued work, in activation order
        self._active: dict[str, _Org] = {}  # orgs with queued or in-flight work
        self._last_served: _Org | None = None

    def submit(
        self,
        org_id: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        *,
        tier: str = "standard",
        now: float = 0.0,
        payload: Any = None,
    ) -> Ticket:
        """Queue a request; lift the org's counter if this request makes it backlogged."""
        if weight <= 0:
            raise ValueError(f"weight must be > 0, not {weight}")
        org = self._orgs.get(org_id)
        if org is None:
            org = self._orgs[org_id] = _Org(org_id)
        if not org.queue:
            self._lift(org)
            self._backlogged[org_id] = org
            self._active[org_id] = org
        self._seq += 1
        ticket = Ticket(
            org,
            tier,
            prompt_tokens,
            max_tokens,
            self._seq,
            now,
            self.w_in / weight,
            self.w_out / weight,
            payload,
        )
        org.queue.append(ticket)
        self.queued += 1
        return ticket

    def _lift(self, org: _Org) -> None:
        floor = None
        for other in self._active.values():
            if other is not org and (floor is None or other.counter < floor):
                floor = other.counter
        if floor is None and self._last_served is not None:
            floor = self._last_served.counter
        if floor is not None and org.counter < floor:
            org.counter = floor

    def dispatch(self, now: float = 0.0) -> Ticket | None:
        """The next request to run, charged and counted in flight; None when nothing may run now."""
        if self.in_flight >= self.capacity or not self._backlogged:
            return None
        cap = self.max_inflight_tokens
        room = None if cap is None else cap - self.inflight_tokens
        fair = self._fair
        best = fit = None
        best_key = fit_key = 0.0
        for org in self._backlogged.values():
            head = org.queue[0]
            key = org.counter if fair else head.seq
            if best is None or key < best_key or (key == best_key and head.seq < best.seq):
                best, best_key = head, key
            if room is not None and (head.need <= room or self.in_flight == 0):
                if fit is None or key < fit_key or (key == fit_key and head.seq < fit.seq):
                    fit, fit_key = head, key
        assert best is not None
        if room is None or fit is best:
            chosen = best
        elif fit is not None and best.bypassed < self.max_bypass:
            best.bypassed += 1
            chosen = fit
        else:
            return None
        self._start(chosen, now)
        return chosen

    def _start(self, ticket: Ticket, now: float) -> None:
        org = ticket.org
        org.queue.popleft()
        if not org.queue:
            del self._backlogged[org.id]
        org.inflight += 1
        org.counter += ticket.prompt_tokens * ticket.in_rate
        self.queued -= 1
        self.in_flight += 1
        self.inflight_tokens += ticket.need
        self._last_served = org
        ticket.state = RUNNING
        ticket.dispatched_at = now

    def output(self, ticket: Ticket, n: int = 1) -> None:
        """``n`` more output tokens were produced for ``ticket``: charge its org."""
        ticket.org.counter += n * ticket.out_rate

    def adjust_prompt(self, ticket: Ticket, actual_prompt_tokens: int) -> None:
        """Correct an estimated prompt size: the charge (if dispatched) and the tokens held in flight."""
        delta = actual_prompt_tokens - ticket.prompt_tokens
        if delta == 0:
            return
        ticket.prompt_tokens = actual_prompt_tokens
        ticket.need += delta
        if ticket.state is RUNNING:
            ticket.org.counter += delta * ticket.in_rate
            self.inflight_tokens += delta

    def finish(self, ticket: Ticket) -> None:
        """The request is over (complete, failed or abandoned): free its budget. Idempotent."""
        if ticket.state is not RUNNING:
            return
        ticket.state = DONE
        org = ticket.org
        org.inflight -= 1
        self.in_flight -= 1
        self.inflight_tokens -= ticket.need
        if not org.inflight and not org.queue:
            del self._active[org.id]

    def cancel(self, ticket: Ticket) -> bool:
        """Take a queued request out of its queue; False when it was not queued (dispatched or gone)."""
        if ticket.state is not QUEUED:
            return False
        ticket.state = CANCELLED
        org = ticket.org
        if org.queue[0] is ticket:
            org.queue.popleft()
        else:
            org.queue.remove(ticket)
        self.queued -= 1
        if not org.queue:
            del self._backlogged[org.id]
            if not org.inflight:
                del self._active[org.id]
        return True

    def counter(self, org_id: str) -> float:
        org = self._orgs.get(org_id)
        return org.counter if org is not None else 0.0

    def queue_length(self, org_id: str) -> int:
        org = self._orgs.get(org_id)
        return len(org.queue) if org is not None else 0

    def inflight_of(self, org_id: str) -> int:
        org = self._orgs.get(org_id)
        return org.inflight if org is not None else 0

    def backlogged(self) -> list[str]:
        """Orgs with queued requests."""
        return list(self._backlogged)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state for /metrics, the admin API and tests."""
        by_tier: dict[str, int] = {}
        for org in self._backlogged.values():
            for ticket in org.queue:
                by_tier[ticket.tier] = by_tier.get(ticket.tier, 0) + 1
        return {
            "policy": self.policy,
            "capacity": self.capacity,
            "max_inflight_tokens": self.max_inflight_tokens,
            "in_flight": self.in_flight,
            "inflight_tokens": self.inflight_tokens,
            "queued": self.queued,
            "queued_by_org": {org.id: len(org.queue) for org in self._backlogged.values()},
            "queued_by_tier": by_tier,
            "in_flight_by_org": {org.id: org.inflight for org in self._active.values() if org.inflight},
            "counters": {org.id: org.counter for org in self._orgs.values()},
        }


class QueueTimeout(Exception):
    """The request waited longer than the queue timeout; answer 429 with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Lease:
    """A dispatched request's hold on the budget: report output tokens, then release (idempotent)."""

    __slots__ = ("_dispatcher", "_ticket", "waited_s")

    def __init__(self, dispatcher: Dispatcher, ticket: Ticket, waited_s: float):
        self._dispatcher = dispatcher
        self._ticket = ticket
        self.waited_s = waited_s

    @property
    def org_id(self) -> str:
        return self._ticket.org.id

    def output(self, n: int) -> None:
        """``n`` more output tokens were produced (charges the org's counter)."""
        self._ticket.org.counter += n * self._ticket.out_rate

    def adjust_prompt(self, actual_prompt_tokens: int) -> None:
        """Replace the estimated prompt size given to ``acquire`` with the engine's exact count."""
        self._dispatcher.queue.adjust_prompt(self._ticket, actual_prompt_tokens)

    def release(self) -> None:
        """Free the slot and dispatch the next waiter; safe to call more than once."""
        if self._ticket.state is RUNNING:
            self._dispatcher._release(self._ticket)

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
        max_inflight_tokens: int | None = None,
        clock: Clock | None = None,
    ):
        self.model_id = model_id
        self.queue = FairQueue(
            capacity, policy=policy, w_in=w_in, w_out=w_out, max_inflight_tokens=max_inflight_tokens
        )
        self.queue_timeout_s = queue_timeout_s
        self._now = (clock or RealClock()).now
        self._tier_metrics: dict[str, tuple[Any, Any]] = {}
        self._hold_s = 1.0  # moving average of how long a lease is held, for Retry-After
        self.dispatched = 0
        self.timeouts = 0
        self.cancelled = 0

    def _metrics(self, tier: str) -> tuple[Any, Any]:
        children = self._tier_metrics.get(tier)
        if children is None:
            children = self._tier_metrics[tier] = (
                metrics.QUEUE_LENGTH.labels(self.model_id, tier),
                metrics.QUEUE_WAIT_SECONDS.labels(self.model_id, tier),
            )
        return children

    def _enter(self, org_id: str, weight: float, prompt_tokens: int, max_tokens: int, tier: str) -> Ticket:
        ticket = self.queue.submit(org_id, weight, prompt_tokens, max_tokens, tier=tier, now=self._now())
        self._metrics(tier)[0].inc()
        self._pump()
        return ticket

    def acquire_nowait(
        self, org_id: str, weight: float, prompt_tokens: int, max_tokens: int, tier: str = "standard"
    ) -> Lease | None:
        """A turn at once when nobody waits and the budget has room — the common case, served without
        creating a waiter; None means the request must ``acquire`` (and wait) like everyone else."""
        q = self.queue
        if q.queued or q.in_flight >= q.capacity:
            return None
        cap = q.max_inflight_tokens
        if cap is not None and q.in_flight and q.inflight_tokens + prompt_tokens + max_tokens > cap:
            return None
        ticket = self._enter(org_id, weight, prompt_tokens, max_tokens, tier)
        if ticket.state is not RUNNING:  # cannot happen with nothing queued, but never strand a ticket
            self._drop(ticket)
            return None
        return Lease(self, ticket, 0.0)

    async def acquire(
        self, org_id: str, weight: float, prompt_tokens: int, max_tokens: int, tier: str = "standard"
    ) -> Lease:
        """Wait until dispatched. Raises QueueTimeout after ``queue_timeout_s``; cancelling the awaiting
        task (client gone) takes the request out of the queue."""
        ticket = self._enter(org_id, weight, prompt_tokens, max_tokens, tier)
        if ticket.state is RUNNING:
            return Lease(self, ticket, 0.0)
        loop = asyncio.get_running_loop()
        waiter = ticket.payload = loop.create_future()
        timer = loop.call_later(self.queue_timeout_s, self._expire, ticket)
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

    def _pump(self) -> None:
        queue = self.queue
        now = self._now()
        while (ticket := queue.dispatch(now)) is not None:
            self.dispatched += 1
            gauge, histogram = self._metrics(ticket.tier)
            gauge.dec()
            histogram.observe(now - ticket.enqueued_at)
            waiter = ticket.payload
            if waiter is None:
                continue  # the caller is still inside acquire and sees the state itself
            if waiter.done():  # its task was cancelled a moment ago and has not run its handler yet
                queue.finish(ticket)
                continue
            waiter.set_result(None)

    def _drop(self, ticket: Ticket) -> None:
        if self.queue.cancel(ticket):
            self._metrics(ticket.tier)[0].dec()
            self._pump()  # the dropped request may have been a blocked head holding dispatch back

    def _expire(self, ticket: Ticket) -> None:
        if ticket.state is not QUEUED:
            return
        self._drop(ticket)
        self.timeouts += 1
        metrics.QUEUE_TIMEOUTS.labels(self.model_id, ticket.tier).inc()
        retry_after = self.retry_after()
        ticket.payload.set_exception(
            QueueTimeout(
                f"model {self.model_id!r} is busy: waited {self.queue_timeout_s:g}s in the queue; "
                f"retry in {retry_after}s",
                retry_after,
            )
        )

    def _release(self, ticket: Ticket) -> None:
        self.queue.finish(ticket)
        if ticket.dispatched_at is not None:
            self._hold_s += 0.05 * (self._now() - ticket.dispatched_at - self._hold_s)
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
            dispatched=self.dispatched,
            timeouts=self.timeouts,
            cancelled=self.cancelled,
            queue_timeout_s=self.queue_timeout_s,
        )
        return snap
