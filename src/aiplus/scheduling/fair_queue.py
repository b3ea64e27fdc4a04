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

Bands (OpenAI's ``service_tier``): ``priority``, ``default`` (``auto``), ``flex``. Each band has its own
orgs and counters; dispatch takes the highest backlogged band, except that a lower band whose share of the
charged service has fallen below its floor (``band_floors``, default: default 20%, flex 10%) goes first, so
lower bands never starve. A band's service is lifted to its floor when it becomes backlogged, the same rule
as an org's counter: a band earns no credit while idle. Once ``priority`` traffic has been seen, the lower
bands may not fill the last ``priority_reserve`` of the budget (slots and tokens), so that a priority request
finds room at the next admission instead of waiting for a bulk request to finish: without it, priority's
time to first token under overload was 3.5x its unloaded value in the simulator, with it 1.55x. FCFS ignores
bands.

What a request is charged is ``cost`` (``scheduling/cost.py``): price-list tokens (``w_in``, ``w_out``), or
engine seconds (``alpha`` per uncached prompt token, ``beta`` per output token) from a ``CostModel`` read at
dispatch.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aiplus.config import SERVICE_TIERS as BANDS
from aiplus.scheduling.cost import CostModel

POLICIES = ("fair", "fcfs")
SERVICE_TIERS = {"priority": "priority", "default": "default", "auto": "default", "flex": "flex"}
DEFAULT_BAND_FLOORS = {"default": 0.2, "flex": 0.1}

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
CANCELLED = "cancelled"


class Ticket:
    """One request, from submission to finish. ``payload`` belongs to the caller (a future, a record...)."""

    __slots__ = (
        "band",
        "bypassed",
        "cached_tokens",
        "dispatched_at",
        "enqueued_at",
        "in_rate",
        "max_tokens",
        "need",
        "org",
        "out_cost",
        "out_rate",
        "payload",
        "prompt_charge",
        "prompt_tokens",
        "seq",
        "state",
        "tier",
        "weight",
    )

    def __init__(
        self,
        org: _Org,
        band: _Band,
        tier: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        seq: int,
        now: float,
        payload: Any,
    ):
        self.org = org
        self.band = band
        self.tier = tier
        self.weight = weight
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.max_tokens = max_tokens
        self.need = prompt_tokens + max_tokens
        self.seq = seq
        self.enqueued_at = now
        self.dispatched_at: float | None = None
        self.state = QUEUED
        self.bypassed = 0
        self.in_rate = 0.0  # charge per uncached prompt token / weight, fixed at dispatch
        self.out_rate = 0.0  # charge per output token / weight
        self.out_cost = 0.0  # charge per output token (unweighted, for the band's service)
        self.prompt_charge = 0.0  # unweighted charge of the prompt
        self.payload = payload

    @property
    def org_id(self) -> str:
        return self.org.id


class _Org:
    __slots__ = ("counter", "id", "inflight", "queue")

    def __init__(self, org_id: str):
        self.id = org_id
        self.counter = 0.0
        self.queue: deque[Ticket] = deque()
        self.inflight = 0


class _Band:
    """One ``service_tier`` band: its orgs' counters and queues, and the service it received."""

    __slots__ = ("active", "backlogged", "floor", "last_served", "name", "orgs", "service")

    def __init__(self, name: str, floor: float):
        self.name = name
        self.floor = floor
        self.service = 0.0
        self.orgs: dict[str, _Org] = {}
        self.backlogged: dict[str, _Org] = {}  # orgs with queued work, in activation order
        self.active: dict[str, _Org] = {}  # orgs with queued or in-flight work
        self.last_served: _Org | None = None


def band_of(service_tier: str | None, default: str = "default") -> str:
    """The band of an OpenAI ``service_tier`` value (None: ``default``, the tier's default band)."""
    if service_tier is None:
        return default
    try:
        return SERVICE_TIERS[service_tier]
    except KeyError:
        raise ValueError(
            f"service_tier must be one of {', '.join(SERVICE_TIERS)}, not {service_tier!r}"
        ) from None


class FairQueue:
    """Per-band, per-org FIFO queues and an in-flight budget; ``dispatch`` says which request runs next."""

    def __init__(
        self,
        capacity: int,
        *,
        policy: str = "fair",
        w_in: float = 1.0,
        w_out: float = 2.0,
        max_inflight_tokens: int | None = None,
        max_bypass: int = 4,
        cost: CostModel | None = None,
        band_floors: dict[str, float] | None = None,
        priority_reserve: float = 0.1,
    ):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if max_inflight_tokens is not None and max_inflight_tokens < 1:
            raise ValueError("max_inflight_tokens must be >= 1 or None")
        floors = {**DEFAULT_BAND_FLOORS, **(band_floors or {})}
        if sum(floors.get(b, 0.0) for b in BANDS[1:]) >= 1.0:
            raise ValueError("the lower bands' floors must add up to less than 1")
        self.capacity = capacity
        self.policy = policy
        self.w_in = w_in
        self.w_out = w_out
        self.cost = cost
        self.max_inflight_tokens = max_inflight_tokens
        self.max_bypass = max_bypass
        self.priority_reserve = priority_reserve
        self.in_flight = 0
        self.inflight_tokens = 0
        self.queued = 0
        self.service = 0.0  # charged service over all bands
        # called with (band, org, amount / weight) on every charge: the cross-gateway mode mirrors it to Redis
        self.on_charge: Any = None
        self.on_activate: Any = None  # called with (band, org) when an org becomes backlogged
        self._fair = policy == "fair"
        self._seq = 0
        self._bands = {name: _Band(name, floors.get(name, 0.0)) for name in BANDS}
        self._ranked = list(self._bands.values())

    def submit(
        self,
        org_id: str,
        weight: float,
        prompt_tokens: int,
        max_tokens: int,
        *,
        tier: str = "standard",
        band: str = "default",
        now: float = 0.0,
        payload: Any = None,
    ) -> Ticket:
        """Queue a request; lift the org's counter (and its band's service) if it makes them backlogged."""
        if weight <= 0:
            raise ValueError(f"weight must be > 0, not {weight}")
        b = self._bands.get(band)
        if b is None:
            raise ValueError(f"band must be one of {', '.join(BANDS)}, not {band!r}")
        org = b.orgs.get(org_id)
        if org is None:
            org = b.orgs[org_id] = _Org(org_id)
        if not b.backlogged and b.service < b.floor * self.service:
            b.service = b.floor * self.service
        if not org.queue:
            self._lift(b, org)
            b.backlogged[org_id] = org
            b.active[org_id] = org
            if self.on_activate is not None:
                self.on_activate(band, org_id)
        self._seq += 1
        ticket = Ticket(org, b, tier, weight, prompt_tokens, max_tokens, self._seq, now, payload)
        org.queue.append(ticket)
        self.queued += 1
        return ticket

    @staticmethod
    def _lift(band: _Band, org: _Org) -> None:
        floor = None
        for other in band.active.values():
            if other is not org and (floor is None or other.counter < floor):
                floor = other.counter
        if floor is None and band.last_served is not None:
            floor = band.last_served.counter
        if floor is not None and org.counter < floor:
            org.counter = floor

    def _band(self) -> _Band | None:
        """The band to serve next: the highest backlogged one, unless a lower one is below its floor."""
        top = None
        for band in self._ranked:
            if not band.backlogged:
                continue
            if top is None:
                top = band
            elif band.service < band.floor * self.service:
                return band
        return top

    def dispatch(self, now: float = 0.0) -> Ticket | None:
        """The next request to run, charged and counted in flight; None when nothing may run now."""
        if self.in_flight >= self.capacity or not self.queued:
            return None
        fair = self._fair
        cap = self.max_inflight_tokens
        room = None if cap is None else cap - self.inflight_tokens
        if fair:
            band = self._band()
            assert band is not None
            candidates: Any = band.backlogged.values()
            priority = self._ranked[0]
            if band is not priority and priority.service > 0 and self.priority_reserve > 0:
                if self.in_flight and self.in_flight >= self.capacity - int(
                    self.capacity * self.priority_reserve
                ):
                    return None
                if room is not None:
                    room -= int(cap * self.priority_reserve)
        else:
            candidates = [org for band in self._ranked for org in band.backlogged.values()]
        best = fit = None
        best_key = fit_key = 0.0
        for org in candidates:
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

    def _prompt_charge(self, prompt_tokens: int, cached_tokens: int) -> float:
        if self.cost is not None:
            return self.cost.charge(prompt_tokens, 0, cached_tokens)
        return self.w_in * prompt_tokens

    def _start(self, ticket: Ticket, now: float) -> None:
        org = ticket.org
        band = ticket.band
        org.queue.popleft()
        if not org.queue:
            del band.backlogged[org.id]
        org.inflight += 1
        cost = self.cost
        alpha = cost.alpha if cost is not None else self.w_in
        ticket.out_cost = cost.beta if cost is not None else self.w_out
        ticket.in_rate = alpha / ticket.weight
        ticket.out_rate = ticket.out_cost / ticket.weight
        ticket.prompt_charge = self._prompt_charge(ticket.prompt_tokens, ticket.cached_tokens)
        self._charge(ticket, ticket.prompt_charge)
        self.queued -= 1
        self.in_flight += 1
        self.inflight_tokens += ticket.need
        band.last_served = org
        ticket.state = RUNNING
        ticket.dispatched_at = now

    def _charge(self, ticket: Ticket, amount: float) -> None:
        ticket.org.counter += amount / ticket.weight
        ticket.band.service += amount
        self.service += amount
        if self.on_charge is not None:
            self.on_charge(ticket.band.name, ticket.org.id, amount / ticket.weight)

    def output(self, ticket: Ticket, n: int = 1) -> None:
        """``n`` more output tokens were produced for ``ticket``: charge its org."""
        self._charge(ticket, n * ticket.out_cost)

    def adjust_prompt(
        self, ticket: Ticket, actual_prompt_tokens: int, cached_tokens: int | None = None
    ) -> None:
        """Correct an estimated prompt size (and say how much of it the engine's prefix cache served): the
        charge (if dispatched) and the tokens held in flight."""
        delta = actual_prompt_tokens - ticket.prompt_tokens
        ticket.prompt_tokens = actual_prompt_tokens
        if cached_tokens is not None:
            ticket.cached_tokens = cached_tokens
        ticket.need += delta
        if ticket.state is RUNNING:
            charge = self._prompt_charge(ticket.prompt_tokens, ticket.cached_tokens)
            self._charge(ticket, charge - ticket.prompt_charge)
            ticket.prompt_charge = charge
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
            del ticket.band.active[org.id]

    def cancel(self, ticket: Ticket) -> bool:
        """Take a queued request out of its queue; False when it was not queued (dispatched or gone)."""
        if ticket.state is not QUEUED:
            return False
        ticket.state = CANCELLED
        org = ticket.org
        band = ticket.band
        if org.queue[0] is ticket:
            org.queue.popleft()
        else:
            org.queue.remove(ticket)
        self.queued -= 1
        if not org.queue:
            del band.backlogged[org.id]
            if not org.inflight:
                del band.active[org.id]
        return True

    def _org(self, org_id: str, band: str) -> _Org | None:
        return self._bands[band].orgs.get(org_id)

    def bid(self) -> tuple[int, float] | None:
        """What this queue would dispatch next, lowest first: (the band's rank, the org's counter). None
        when nothing is queued. Gateways that share a budget
        compare bids (``shared.py``); under FCFS every bid is equal (first to ask, first served)."""
        if not self.queued:
            return None
        if not self._fair:
            return 0, 0.0
        band = self._band()
        assert band is not None
        return self._ranked.index(band), min(org.counter for org in band.backlogged.values())

    def set_counter(self, org_id: str, band: str, value: float) -> None:
        """Replace an org's counter with the deployment's shared value (cross-gateway mode)."""
        org = self._org(org_id, band)
        if org is not None:
            org.counter = value

    def active(self) -> list[tuple[str, str]]:
        """(band, org) pairs with queued or in-flight work."""
        return [(band.name, org) for band in self._ranked for org in band.active]

    def counter(self, org_id: str, band: str = "default") -> float:
        org = self._org(org_id, band)
        return org.counter if org is not None else 0.0

    def queue_length(self, org_id: str, band: str = "default") -> int:
        org = self._org(org_id, band)
        return len(org.queue) if org is not None else 0

    def inflight_of(self, org_id: str, band: str = "default") -> int:
        org = self._org(org_id, band)
        return org.inflight if org is not None else 0

    def backlogged(self) -> list[str]:
        """Orgs with queued requests (in any band)."""
        return list(dict.fromkeys(org for band in self._ranked for org in band.backlogged))

    def band_service(self) -> dict[str, float]:
        """Charged service per band so far (lifts included)."""
        return {band.name: band.service for band in self._ranked}

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state for /metrics, the admin API and tests."""
        by_tier: dict[str, int] = {}
        by_org: dict[str, int] = {}
        by_band: dict[str, int] = {}
        in_flight: dict[str, int] = {}
        counters: dict[str, float] = {}
        for band in self._ranked:
            by_band[band.name] = 0
            for org in band.backlogged.values():
                by_org[org.id] = by_org.get(org.id, 0) + len(org.queue)
                by_band[band.name] += len(org.queue)
                for ticket in org.queue:
                    by_tier[ticket.tier] = by_tier.get(ticket.tier, 0) + 1
            for org in band.active.values():
                if org.inflight:
                    in_flight[org.id] = in_flight.get(org.id, 0) + org.inflight
            for org in band.orgs.values():
                counters[org.id if band.name == "default" else f"{org.id}/{band.name}"] = org.counter
        return {
            "policy": self.policy,
            "cost": "tokens" if self.cost is None else "engine",
            "cost_model": None if self.cost is None else self.cost.snapshot(),
            "capacity": self.capacity,
            "max_inflight_tokens": self.max_inflight_tokens,
            "in_flight": self.in_flight,
            "inflight_tokens": self.inflight_tokens,
            "queued": self.queued,
            "queued_by_org": by_org,
            "queued_by_tier": by_tier,
            "queued_by_band": by_band,
            "in_flight_by_org": in_flight,
            "counters": counters,
        }
