"""Deterministic simulation: the live ``FairQueue`` in front of a ``BatchModel``, on a virtual clock.

The engine's room is the dispatch budget: ``capacity`` is its batch limit and ``max_inflight_tokens`` its
KV memory, so every request the queue dispatches joins the batch at the next admission point (every
``admit_every`` decode steps, or at once when the engine is idle), as in lightllm and vLLM's routers.
Those engines admit strictly in order (a head that does not fit stops admission), hence ``max_bypass=0``
by default; other values study the live dispatcher's bounded backfill.

``cost="engine"`` fits the live ``CostModel`` from every engine step (prefill tokens, decode tokens, seconds)
and charges with it, as the server does from finished requests. Each org's engine time is also measured
directly: a step's prefill part goes to the sequences it prefilled, the rest is split evenly over the batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aiplus.engines.simulated import DEFAULT_KV_TOKENS, DEFAULT_MAX_BATCH, BatchModel, StepCost
from aiplus.scheduling.clock import VirtualClock
from aiplus.scheduling.cost import CostModel
from aiplus.scheduling.fair_queue import FairQueue


@dataclass(frozen=True, slots=True)
class SimRequest:
    arrival: float
    org: str
    prompt_tokens: int
    output_tokens: int
    band: str = "default"


@dataclass
class SimResult:
    """What happened to every request, and each org's cumulative service sampled after every step."""

    policy: str
    orgs: list[str]
    weights: np.ndarray  # per org
    w_in: float
    w_out: float
    kv_tokens: int
    end: float  # horizon, or the last finish when the run drained
    tokens: int  # prompt tokens prefilled plus output tokens produced by ``end``
    prompt_tokens: int  # of which prompt tokens
    busy_s: float  # time the engine spent stepping
    kv_token_s: float  # integral of KV tokens reserved over time (for mean occupancy)
    org_of: np.ndarray  # per request: index into orgs
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    first_token: np.ndarray  # NaN: no token by the end
    finish: np.ndarray  # NaN: unfinished
    rejected: np.ndarray  # bool: left the queue on timeout
    times: np.ndarray  # sample times (after each step)
    service: np.ndarray  # [sample, org]: what the counter charged / weight, cumulative
    engine: np.ndarray  # [sample, org]: engine seconds spent on the org's requests, cumulative
    backlogged: np.ndarray  # [sample, org]: had queued requests
    band: np.ndarray  # per request: its band
    cost: str = "tokens"
    alpha: float = 0.0  # the cost model's final values (cost="engine")
    beta: float = 0.0

    @property
    def throughput(self) -> float:
        """Prompt plus completion tokens per second."""
        return self.tokens / self.end if self.end > 0 else 0.0

    @property
    def kv_used(self) -> float:
        """Mean fraction of the KV capacity reserved over the run: how well the engine's memory was used."""
        return self.kv_token_s / (self.kv_tokens * self.end) if self.end > 0 else 0.0

    @property
    def rejections(self) -> int:
        return int(self.rejected.sum())

    def bound(self) -> float:
        """The VTC guarantee for two backlogged orgs: ``2 * max(w_in * L_in, w_out * M)`` (per unit weight),
        in the counter's units (tokens, or engine seconds with the final alpha and beta)."""
        longest = int(self.prompt.max()) if len(self.prompt) else 0
        w_in, w_out = (self.alpha, self.beta) if self.cost == "engine" else (self.w_in, self.w_out)
        return 2 * max(w_in * longest, w_out * self.kv_tokens) / float(self.weights.min())

    def max_service_difference(self) -> float:
        """Largest ``|ΔW_f - ΔW_g|`` over any interval in which orgs f and g were both backlogged."""
        worst = 0.0
        n = len(self.orgs)
        for f in range(n):
            for g in range(f + 1, n):
                both = self.backlogged[:, f] & self.backlogged[:, g]
                if not both.any():
                    continue
                diff = self.service[:, f] - self.service[:, g]
                for start, stop in _runs(both):
                    # include the sample before the run: the interval starts when the second org queued up
                    segment = diff[max(0, start - 1) : stop]
                    worst = max(worst, float(segment.max() - segment.min()))
        return worst

    def jain_windows(self, window_s: float = 60.0) -> list[float]:
        """Jain's index of weighted service per window, over the orgs backlogged throughout that window."""
        values = []
        edges = np.arange(0.0, self.end + 1e-9, window_s)
        for lo, hi in zip(edges[:-1], edges[1:], strict=False):
            inside = (self.times > lo) & (self.times <= hi)
            if inside.sum() < 2:
                continue
            idx = np.flatnonzero(inside)
            first, last = idx[0], idx[-1]
            orgs = np.flatnonzero(self.backlogged[idx].all(axis=0))
            if len(orgs) < 2:
                continue
            before = self.service[first - 1, orgs] if first > 0 else 0.0
            got = self.service[last, orgs] - before
            if got.sum() <= 0:
                continue
            values.append(float(got.sum() ** 2 / (len(got) * (got**2).sum())))
        return values

    def shares(self, start: float = 0.0, stop: float | None = None, engine: bool = False) -> dict[str, float]:
        """Each org's fraction of the service in [start, stop]: what its counter was charged (unweighted),
        or with ``engine`` the engine time its requests took."""
        stop = self.end if stop is None else stop
        if engine:
            got = _at(self.times, self.engine, stop) - _at(self.times, self.engine, start)
        else:
            lo = _at(self.times, self.service, start)
            hi = _at(self.times, self.service, stop)
            got = (hi - lo) * self.weights
        total = got.sum()
        return {org: float(v / total) if total else 0.0 for org, v in zip(self.orgs, got, strict=True)}

    def lighter_half(self) -> list[str]:
        """The half of the orgs (rounded down, at least one) that asked for the fewest tokens."""
        demand = np.bincount(self.org_of, weights=self.prompt + self.output, minlength=len(self.orgs))
        order = np.argsort(demand, kind="stable")
        return [self.orgs[i] for i in order[: max(1, len(self.orgs) // 2)]]

    def band_shares(self) -> dict[str, float]:
        """Each band's fraction of the engine time over the run."""
        total = self.engine[-1].sum() if len(self.times) else 0.0
        per_org = self.engine[-1] if len(self.times) else np.zeros(len(self.orgs))
        out: dict[str, float] = {}
        for i in range(len(self.orgs)):
            band = str(self.band[self.org_of == i][0]) if (self.org_of == i).any() else "default"
            out[band] = out.get(band, 0.0) + float(per_org[i] / total if total else 0.0)
        return out

    def ttft(self, orgs: Iterable[str] | None = None) -> np.ndarray:
        """Time to first token of the requests of ``orgs`` that were not rejected; a request still waiting
        at the end counts with the time it had waited so far (a lower bound, so starvation shows)."""
        mask = ~self.rejected
        if orgs is not None:
            wanted = np.isin(self.org_of, [self.orgs.index(o) for o in orgs])
            mask &= wanted
        first = np.where(np.isnan(self.first_token), self.end, self.first_token)
        mask &= self.arrival <= self.end
        return first[mask] - self.arrival[mask]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _at(times: np.ndarray, service: np.ndarray, t: float) -> np.ndarray:
    i = int(np.searchsorted(times, t, side="right")) - 1
    return service[i] if i >= 0 else np.zeros(service.shape[1])


def simulate(
    requests: Sequence[SimRequest],
    *,
    policy: str = "fair",
    weights: Mapping[str, float] | None = None,
    w_in: float = 1.0,
    w_out: float = 2.0,
    kv_tokens: int = DEFAULT_KV_TOKENS,
    max_batch: int = DEFAULT_MAX_BATCH,
    cost: StepCost | None = None,
    admit_every: int = 10,
    horizon: float | None = None,
    queue_timeout_s: float | None = None,
    max_bypass: int = 0,
    cost_model: str = "tokens",
    band_floors: Mapping[str, float] | None = None,
) -> SimResult:
    """Run ``requests`` through a FairQueue and a BatchModel; stop at ``horizon`` or when all are done.

    An org's requests all carry the band of its first request (bands are per org in these workloads)."""
    reqs = sorted(requests, key=lambda r: r.arrival)
    weights = dict(weights or {})
    orgs = list(dict.fromkeys(r.org for r in reqs))
    index = {org: i for i, org in enumerate(orgs)}
    weight = np.array([weights.get(org, 1.0) for org in orgs])
    n = len(reqs)
    org_of = np.array([index[r.org] for r in reqs], dtype=np.int64)
    first = [math.nan] * n
    finish = [math.nan] * n
    rejected = [False] * n

    clock = VirtualClock()
    fitted = CostModel() if cost_model == "engine" else None
    queue = FairQueue(
        max_batch,
        policy=policy,
        w_in=w_in,
        w_out=w_out,
        max_inflight_tokens=kv_tokens,
        max_bypass=max_bypass,
        cost=fitted,
        band_floors=dict(band_floors) if band_floors else None,
    )
    model = BatchModel(kv_tokens=kv_tokens, max_batch=max_batch, cost=cost)
    per_prefill_token = model.cost.c
    queued = [0] * len(orgs)
    service = [0.0] * len(orgs)
    engine = [0.0] * len(orgs)
    deadlines: deque = deque()
    times: list[float] = []
    service_rows: list[list[float]] = []
    engine_rows: list[list[float]] = []
    backlog_rows: list[list[bool]] = []
    tokens = prompt_done = 0
    busy = kv_token_s = 0.0
    nxt = 0
    steps = 0
    while True:
        now = clock.now()
        if horizon is not None and now >= horizon:
            break
        while nxt < n and reqs[nxt].arrival <= now:
            r = reqs[nxt]
            o = index[r.org]
            ticket = queue.submit(
                r.org,
                float(weight[o]),
                r.prompt_tokens,
                r.output_tokens,
                band=r.band,
                now=r.arrival,
                payload=nxt,
            )
            queued[o] += 1
            if queue_timeout_s is not None:
                deadlines.append((r.arrival + queue_timeout_s, ticket))
            nxt += 1
        while deadlines and deadlines[0][0] <= now:
            _, ticket = deadlines.popleft()
            if queue.cancel(ticket):
                rejected[ticket.payload] = True
                queued[index[ticket.org_id]] -= 1
        if not len(model) or steps % admit_every == 0:
            while (ticket := queue.dispatch(now)) is not None:
                o = index[ticket.org_id]
                queued[o] -= 1
                service[o] += ticket.prompt_charge / ticket.weight
                model.admit(ticket, ticket.prompt_tokens, ticket.max_tokens)
        if not len(model):
            if nxt >= n:
                break
            clock.advance_to(reqs[nxt].arrival)
            continue
        reserved = model.used_tokens
        seconds, produced, finished = model.step()
        busy += seconds
        kv_token_s += reserved * seconds
        steps += 1
        now = clock.advance(seconds)
        prefilled = 0
        for ticket in produced:
            if first[ticket.payload] != first[ticket.payload]:  # NaN: this was the prefill step
                prefilled += ticket.prompt_tokens
        shared = (seconds - per_prefill_token * prefilled) / len(produced)
        for ticket in produced:
            queue.output(ticket, 1)
            i = ticket.payload
            o = org_of[i]
            service[o] += ticket.out_rate
            engine[o] += shared
            if first[i] != first[i]:
                first[i] = now
                prompt_done += ticket.prompt_tokens
                engine[o] += per_prefill_token * ticket.prompt_tokens
        if fitted is not None:
            fitted.observe(prefilled, len(produced), seconds)
        tokens += len(produced)
        for ticket in finished:
            queue.finish(ticket)
            finish[ticket.payload] = now
        times.append(now)
        service_rows.append(service[:])
        engine_rows.append(engine[:])
        backlog_rows.append([q > 0 for q in queued])

    end = horizon if horizon is not None else (max((f for f in finish if f == f), default=0.0))
    return SimResult(
        policy=policy,
        orgs=orgs,
        weights=weight,
        w_in=w_in,
        w_out=w_out,
        kv_tokens=kv_tokens,
        end=end,
        tokens=tokens + prompt_done,
        prompt_tokens=prompt_done,
        busy_s=busy,
        kv_token_s=kv_token_s,
        org_of=org_of,
        arrival=np.array([r.arrival for r in reqs]),
        prompt=np.array([r.prompt_tokens for r in reqs], dtype=np.float64),
        output=np.array([r.output_tokens for r in reqs], dtype=np.float64),
        first_token=np.array(first),
        finish=np.array(finish),
        rejected=np.array(rejected, dtype=bool),
        times=np.array(times),
        service=np.array(service_rows).reshape(len(times), len(orgs)),
        engine=np.array(engine_rows).reshape(len(times), len(orgs)),
        backlogged=np.array(backlog_rows, dtype=bool).reshape(len(times), len(orgs)),
        band=np.array([r.band for r in reqs]),
        cost=cost_model,
        alpha=fitted.alpha if fitted else w_in,
        beta=fitted.beta if fitted else w_out,
    )
