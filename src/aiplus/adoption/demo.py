"""A synthetic region: a register whose sectors diffuse at different (Bass) speeds, the tenant orgs among
them, one API key each, and their usage written through the ledger, so a report and a chart show at once.

Everything drawn from ``numpy.random.default_rng(seed)`` is deterministic for a seed: the register, who
becomes a tenant and when, and every usage event (ids, times, tokens). API keys are random by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from aiplus.adoption.penetration import last_complete_month_end, month_ends
from aiplus.adoption.register import insert_register
from aiplus.config import SECTORS, Settings
from aiplus.metering.ledger import UsageEvent, write_events
from aiplus.storage.tables import register_orgs
from aiplus.tenancy.keys import create_key
from aiplus.tenancy.orgs import create_org
from aiplus.tenancy.secrets import server_secret

# Bass (p, q per year; m ceiling) per sector: ICT and finance fast, agriculture and construction slow.
SECTOR_DIFFUSION = {
    "agriculture": (0.006, 0.70, 0.80),
    "manufacturing": (0.02, 1.00, 0.92),
    "energy": (0.025, 0.90, 0.92),
    "construction": (0.008, 0.80, 0.85),
    "trade": (0.015, 0.95, 0.90),
    "transport": (0.012, 0.90, 0.88),
    "finance": (0.05, 1.30, 0.97),
    "ict": (0.08, 1.60, 0.99),
    "healthcare": (0.025, 1.00, 0.93),
    "education": (0.03, 1.10, 0.95),
    "public_administration": (0.02, 0.90, 0.93),
    "other": (0.012, 0.80, 0.88),
}
SECTOR_SHARES = (0.04, 0.12, 0.02, 0.10, 0.22, 0.06, 0.03, 0.05, 0.07, 0.05, 0.04, 0.20)
REGIONS = ("North", "South", "East", "West", "Central", "Coast", "Highlands", "Capital")
REGION_SHARES = (0.12, 0.14, 0.12, 0.11, 0.13, 0.10, 0.06, 0.22)
# Ceilings scale by region and size (larger firms adopt more, as in Eurostat's figures); scaling the ceiling
# keeps every sector's curve an exact Bass curve, so the fits can be checked against SECTOR_DIFFUSION.
REGION_REACH = (1.0, 0.95, 1.0, 0.97, 1.0, 1.02, 0.88, 1.04)
SIZE_REACH = {"micro": 0.92, "small": 1.0, "medium": 1.05, "large": 1.08}
MODELS = ("smollm2-135m-instruct", "qwen2.5-7b-instruct")
DEMO_PREFIX = "demo-"


@dataclass(slots=True)
class Region:
    """A synthetic region as arrays, one entry per register organization."""

    ids: list[str]
    sector: np.ndarray  # index into SECTORS
    region: np.ndarray  # index into REGIONS
    employees: np.ndarray
    start: np.ndarray  # months after launch the org starts adopting (float; inf = not within the horizon)


def bass_inverse(u: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Time t at which the Bass cumulative share F(t) equals u (u < 1), in the unit of 1/p."""
    x = (1 - u) / (1 + u * q / p)
    return -np.log(x) / (p + q)


def synthetic_region(n: int, seed: int = 1, prefix: str = DEMO_PREFIX) -> Region:
    """``n`` organizations with sector, region, head count, and the month each starts using AI (if ever)."""
    rng = np.random.default_rng(seed)
    sector = rng.choice(len(SECTORS), size=n, p=SECTOR_SHARES)
    region = rng.choice(len(REGIONS), size=n, p=REGION_SHARES)
    employees = np.maximum(1, np.round(rng.lognormal(1.5, 1.5, size=n))).astype(np.int64)
    params = np.array([SECTOR_DIFFUSION[s] for s in SECTORS])
    reach_by_size = [SIZE_REACH["micro"], SIZE_REACH["small"], SIZE_REACH["medium"]]
    size = np.select([employees < 10, employees < 50, employees < 250], reach_by_size, SIZE_REACH["large"])
    p, q = params[sector, 0], params[sector, 1]
    m = np.minimum(1.0, params[sector, 2] * size * np.asarray(REGION_REACH)[region])
    u = rng.random(n)
    years = np.full(n, np.inf)
    adopters = u < m
    years[adopters] = bass_inverse(u[adopters] / m[adopters], p[adopters], q[adopters])
    width = max(6, len(str(n)))
    ids = [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]
    return Region(ids, sector, region, employees, years * 12)


BASE_REQUESTS = 16.0  # a month, for any adopting org: above the default threshold of 10
REQUESTS_PER_EMPLOYEE = 1.0  # a month, on top: use grows with head count


def monthly_rate(employees: np.ndarray, per_employee: float = REQUESTS_PER_EMPLOYEE) -> np.ndarray:
    """Expected requests a month for an adopting org: a base any adopter reaches, plus a share per employee."""
    return BASE_REQUESTS + per_employee * employees


def register_rows(region: Region) -> list[dict]:
    return [
        {
            "id": region.ids[i],
            "name": f"{SECTORS[region.sector[i]].replace('_', ' ').title()} firm {i + 1}",
            "sector": SECTORS[region.sector[i]],
            "region": REGIONS[region.region[i]],
            "employees": int(region.employees[i]),
        }
        for i in range(len(region.ids))
    ]


def demo_month_ends(months: int, today: date | None = None) -> list[date]:
    """The last days of the demo's ``months`` months, ending with the last complete month."""
    last = last_complete_month_end(today or datetime.now(UTC).date())
    return month_ends(date(last.year - (months + 11) // 12 - 1, 1, 1), last)[-months:]


def seed_demo(
    engine: sa.Engine,
    settings: Settings,
    *,
    orgs: int = 5000,
    months: int = 24,
    seed: int = 1,
    today: date | None = None,
    batch: int = 20_000,
) -> dict:
    """Write a synthetic region whose ``months`` months of usage end with the last complete month."""
    ends = demo_month_ends(months, today)
    with engine.connect() as conn:
        taken = conn.scalar(
            sa.select(sa.func.count())
            .select_from(register_orgs)
            .where(register_orgs.c.id.like(f"{DEMO_PREFIX}%"))
        )
    if taken:
        raise ValueError(f"the database already holds a demo region ({taken} '{DEMO_PREFIX}*' register rows)")
    region = synthetic_region(orgs, seed)
    rng = np.random.default_rng(seed + 1_000_003)
    triers = (region.start >= months) & (rng.random(orgs) < 0.08)  # tried once, never adopted
    tenants = np.nonzero((region.start < months) | triers)[0]
    agent_share = rng.beta(1.2, 3.0, size=orgs)  # share of an org's requests that use tool calls
    with engine.begin() as conn:
        insert_register(conn, register_rows(region))
        secret = server_secret(conn, settings.secret)
        keys = {}
        for i in tenants:
            create_org(
                conn,
                name=f"{SECTORS[region.sector[i]].replace('_', ' ').title()} firm {i + 1}",
                sector=SECTORS[region.sector[i]],
                region=REGIONS[region.region[i]],
                employees=int(region.employees[i]),
                org_id=region.ids[i],
                tiers=settings.tiers,
            )
            keys[i] = create_key(conn, secret, region.ids[i], name="demo")[0]["id"]
    rate = monthly_rate(region.employees)
    written = 0
    pending: list[UsageEvent] = []
    for month, end in enumerate(ends):
        first_day = end.replace(day=1)
        for i in tenants:
            start = region.start[i]
            if start < month + 1:
                n = int(rng.poisson(rate[i] * min(1.0, month + 1 - start)))
            elif triers[i] and month == months - 1 - int(i % 6):
                n = int(rng.integers(1, 5))
            else:
                continue
            pending.extend(
                _events(rng, i, region.ids[i], keys[i], month, first_day, end, n, agent_share[i], seed)
            )
            if len(pending) >= batch:
                written += _flush(engine, pending)
        written += _flush(engine, pending)
    return {
        "register": orgs,
        "tenants": len(tenants),
        "keys": len(keys),
        "events": written,
        "first_month": ends[0].isoformat()[:7],
        "last_month": ends[-1].isoformat()[:7],
    }


def _events(rng, i, org_id, key_id, month, first_day, end, n, agent_share, seed) -> list[UsageEvent]:
    days = (end - first_day).days + 1
    offsets = np.sort(rng.integers(0, days * 86_400, size=n))
    prompt = rng.integers(60, 1_500, size=n)
    completion = rng.integers(20, 600, size=n)
    tools = rng.random(n) < agent_share
    failed = rng.random(n) < 0.02
    model = rng.random(n) < 0.3
    base = datetime(first_day.year, first_day.month, 1, tzinfo=UTC)
    out = []
    for k in range(n):
        ok = not failed[k]
        out.append(
            UsageEvent(
                request_id=f"demo{seed}-{i}-{month}-{k}",
                org_id=org_id,
                key_id=key_id,
                model=MODELS[int(model[k])],
                endpoint="chat",
                prompt_tokens=int(prompt[k]),
                completion_tokens=int(completion[k]) if ok else 0,
                status="ok" if ok else "error",
                used_tools=bool(tools[k]),
                started_at=base + timedelta(seconds=int(offsets[k])),
                ttft_ms=int(100 + prompt[k] // 10),
                duration_ms=int(300 + completion[k] * 15),
                cost_micros=int(prompt[k] + 2 * completion[k]) if ok else 0,
            )
        )
    return out


def _flush(engine: sa.Engine, pending: list[UsageEvent]) -> int:
    if not pending:
        return 0
    with engine.begin() as conn:
        written = write_events(conn, pending)
    pending.clear()
    return written
