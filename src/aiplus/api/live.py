"""The control room's live view: what this process is serving now and over the last minutes.

Read from what the dispatchers know (queues, in flight per replica) and from the services' ``CallWindow`` of
recent calls (rates, errors, waits, shares of service). The share of service is measured as the fair queue
counts it (``w_in`` per prompt token, ``w_out`` per completion token) and set against the share each tier and
organization would get from its weight among those that were served in the window.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

WINDOW_S = 60.0  # rates and errors
SHARE_WINDOW_S = 300.0  # shares of service: long enough to hold a few turns of every active org
TOP_ORGS = 8


def _rate(n: float, seconds: float) -> float:
    return round(n / seconds, 3)


def live_snapshot(
    services: Any, *, window_s: float = WINDOW_S, share_window_s: float = SHARE_WINDOW_S
) -> dict:
    """Plain data for the live page (and its JSON poll)."""
    sched = services.settings.scheduling
    recent = services.recent.since(window_s)
    calls = len(recent)
    errors = sum(1 for c in recent if c[7] not in ("ok", "cancelled"))
    tokens = sum(c[5] + c[6] for c in recent)
    waits: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in recent:
        if c[8] is not None:
            waits[(c[1], c[2])].append(c[8])

    models = []
    for model_id, runtime in services.models.items():
        snap = runtime.dispatcher.snapshot()
        inflight = runtime.engine.inflight() or [snap["in_flight"]]
        tiers = sorted({t for (m, t) in waits if m == model_id} | set(snap["queued_by_tier"]))
        models.append(
            {
                "id": model_id,
                "engine": runtime.config.engine,
                "healthy": runtime.engine.healthy(),
                "replicas": runtime.engine.replicas,
                "context_length": runtime.engine.context_length,
                "capacity": snap["capacity"],
                "in_flight": snap["in_flight"],
                "in_flight_by_replica": list(inflight),
                "replica_health": runtime.engine.replica_health() or [runtime.engine.healthy()],
                "queued": snap["queued"],
                "dispatched": runtime.dispatcher.dispatched,
                "timeouts": runtime.dispatcher.timeouts,
                "tiers": [
                    {
                        "tier": tier,
                        "queued": snap["queued_by_tier"].get(tier, 0),
                        "wait_mean_s": _mean(waits.get((model_id, tier))),
                        "wait_max_s": round(max(waits.get((model_id, tier)) or [0.0]), 3),
                    }
                    for tier in tiers
                ],
            }
        )
    return {
        "window_s": window_s,
        "requests_per_s": _rate(calls, window_s),
        "tokens_per_s": _rate(tokens, window_s),
        "calls": calls,
        "errors": errors,
        "error_rate": round(errors / calls, 4) if calls else 0.0,
        "models": models,
        **_shares(services.recent.since(share_window_s), sched.w_in, sched.w_out, share_window_s),
    }


def _mean(values: list[float] | None) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def _shares(calls: list[tuple], w_in: float, w_out: float, window_s: float) -> dict:
    """Each tier's and the top organizations' share of weighted service against their weight share."""
    service: dict[str, float] = defaultdict(float)
    weight: dict[str, float] = {}
    tier_of: dict[str, str] = {}
    for _t, _model, tier, org, w, prompt, completion, _status, _waited in calls:
        service[org] += w_in * prompt + w_out * completion
        weight[org] = w
        tier_of[org] = tier
    total_service = sum(service.values())
    total_weight = sum(weight.values())

    def share(part: float, whole: float) -> float:
        return round(part / whole, 4) if whole else 0.0

    tiers: dict[str, dict] = {}
    for org, tier in tier_of.items():
        row = tiers.setdefault(tier, {"tier": tier, "orgs": 0, "service": 0.0, "weight": 0.0})
        row["orgs"] += 1
        row["service"] += service[org]
        row["weight"] += weight[org]
    top = sorted(service, key=service.__getitem__, reverse=True)[:TOP_ORGS]
    return {
        "share_window_s": window_s,
        "tiers": [
            {
                "tier": t["tier"],
                "orgs": t["orgs"],
                "share": share(t["service"], total_service),
                "weight_share": share(t["weight"], total_weight),
            }
            for t in sorted(tiers.values(), key=lambda t: t["tier"])
        ],
        "top_orgs": [
            {
                "org_id": org,
                "tier": tier_of[org],
                "share": share(service[org], total_service),
                "weight_share": share(weight[org], total_weight),
            }
            for org in top
        ],
    }
