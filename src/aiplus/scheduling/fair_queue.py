"""Fair sharing of a model's in-flight budget among organizations.

``FairQueue`` is the whole policy, synchronous and clock-agnostic: the live server drives it through the
asyncio ``Dispatcher`` (``scheduling/dispatcher.py``), the simulator (``scheduling/simulation.py``) drives it
from a virtual clock.

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

from collections import deque
from typing import Any

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
