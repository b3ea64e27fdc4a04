"""Benchmark (issues 5 and 13): the adoption report by sector for 100,000 register orgs and 10 million usage
events, with coherent (reconciled) forecasts, and the back-test over 12 origins.

The report reads only the ``usage_daily`` rollups, so the benchmark builds those in bulk: synthetic events are
drawn month by month as numpy arrays (one entry per event: org, day, model, status, tool use, tokens, cost),
summed per (day, org, model, status) exactly as ``metering.ledger.write_events`` sums them, and inserted in
bulk. ``tests/adoption/test_adoption_bench.py`` checks that this bulk path gives the same rollup rows as
``write_events`` on the same events. Then only the report is timed.

    .venv/bin/python bench/adoption.py                       # SQLite file under bench/out/
    .venv/bin/python bench/adoption.py --db-url postgresql+psycopg://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from aiplus.adoption.demo import MODELS, monthly_rate, register_rows, synthetic_region
from aiplus.adoption.penetration import month_ends
from aiplus.adoption.register import insert_register
from aiplus.adoption.report import build_backtest, build_report, to_rich_table
from aiplus.config import AdoptionConfig
from aiplus.metering.ledger import UsageEvent
from aiplus.storage.db import create_engine, migrate
from aiplus.storage.tables import adoption_window_months, adoption_window_sums, usage_daily

AS_OF = date(2026, 10, 31)
TARGET_S = 2.0
BACKTEST_TARGET_S = 10.0
BACKTEST_ORIGINS = 12
COLUMNS = (
    "day",
    "org_id",
    "model",
    "status",
    "requests",
    "tool_requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
)


def month_events(rng, region, start_rate, agent_share, month: int, end: date) -> dict[str, np.ndarray]:
    """Every usage event of one month as arrays: which org, which day, model, ok or not, tools, tokens, cost."""
    active = np.nonzero(region.start < month + 1)[0]
    ramp = np.minimum(1.0, month + 1 - region.start[active])
    counts = rng.poisson(start_rate[active] * ramp)
    org = np.repeat(active, counts)
    n = len(org)
    first = end.replace(day=1)
    ok = rng.random(n) >= 0.02
    prompt = rng.integers(60, 1_500, size=n)
    completion = np.where(ok, rng.integers(20, 600, size=n), 0)
    return {
        "org": org,
        "day": rng.integers(0, (end - first).days + 1, size=n),
        "model": (rng.random(n) < 0.3).astype(np.int64),
        "ok": ok,
        "tools": rng.random(n) < agent_share[org],
        "prompt": prompt,
        "completion": completion,
        "cost": np.where(ok, prompt + 2 * completion, 0),
        "first": np.array([first.toordinal()]),
    }


def rollup_rows(ev: dict[str, np.ndarray], ids: list[str]) -> list[tuple]:
    """The events summed per (day, org, model, status): the rows ``write_events`` would leave in usage_daily."""
    if not len(ev["org"]):
        return []
    key = ((ev["org"] * 32 + ev["day"]) * 2 + ev["model"]) * 2 + ev["ok"]
    keys, inverse = np.unique(key, return_inverse=True)

    def total(values) -> np.ndarray:
        return np.bincount(inverse, weights=values, minlength=len(keys)).astype(np.int64)

    requests = np.bincount(inverse, minlength=len(keys))
    sums = [total(ev["tools"]), total(ev["prompt"]), total(ev["completion"]), total(ev["cost"])]
    ok, rest = keys % 2, keys // 2
    model, rest = rest % 2, rest // 2
    day, org = rest % 32, rest // 32
    first = int(ev["first"][0])
    days = [date.fromordinal(first + int(d)).isoformat() for d in range(32)]
    return [
        (days[day[j]], ids[org[j]], MODELS[model[j]], "ok" if ok[j] else "error", int(requests[j]))
        + tuple(int(s[j]) for s in sums)
        for j in range(len(keys))
    ]


def as_events(ev: dict[str, np.ndarray], ids: list[str], month: int) -> list[UsageEvent]:
    """The same events as ledger ``UsageEvent`` objects (used by the test that checks the bulk path)."""
    base = datetime.combine(date.fromordinal(int(ev["first"][0])), datetime.min.time(), UTC)
    return [
        UsageEvent(
            request_id=f"bench-{month}-{k}",
            org_id=ids[ev["org"][k]],
            key_id=None,
            model=MODELS[ev["model"][k]],
            endpoint="chat",
            prompt_tokens=int(ev["prompt"][k]),
            completion_tokens=int(ev["completion"][k]),
            status="ok" if ev["ok"][k] else "error",
            used_tools=bool(ev["tools"][k]),
            started_at=base + timedelta(days=int(ev["day"][k]), hours=12),
            ttft_ms=100,
            duration_ms=500,
            cost_micros=int(ev["cost"][k]),
        )
        for k in range(len(ev["org"]))
    ]


def scaled_rates(region, months: int, events: int, usage: str) -> np.ndarray:
    """Per-org monthly request rates whose expected total over ``months`` is ``events``.

    ``headcount`` (the default, as in the demo): every adopter makes a base number of requests a month and
    more in proportion to its employees; the per-employee rate is solved for. ``flat``: every adopter gets
    the same rate, the sparsest case for the rollups (almost one rollup row per event).
    """
    active_months = sum(np.clip(month + 1 - region.start, 0, 1) for month in range(months))
    if usage == "flat":
        return np.full(len(region.employees), events / float(np.sum(active_months)))
    base = float(np.sum(monthly_rate(region.employees, 0.0) * active_months))
    per_employee = (events - base) / float(np.sum(region.employees * active_months))
    if per_employee <= 0:
        raise SystemExit(f"{events:,} events are fewer than the base use of the adopters ({base:,.0f})")
    return monthly_rate(region.employees, per_employee)


def _insert(conn: sa.Connection, rows: list[tuple]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY usage_daily ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    placeholders = ", ".join("?" for _ in COLUMNS)
    conn.exec_driver_sql(f"INSERT INTO usage_daily ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows)


def build(
    engine: sa.Engine, orgs: int, events: int, months: int, seed: int, usage: str
) -> tuple[int, int, float]:
    started = time.perf_counter()
    region = synthetic_region(orgs, seed, prefix="org-")
    rng = np.random.default_rng(seed + 7)
    rates = scaled_rates(region, months, events, usage)
    agent_share = rng.beta(1.2, 3.0, size=orgs)
    ends = month_ends(date(AS_OF.year - 3, 1, 1), AS_OF)[-months:]
    with engine.begin() as conn:
        insert_register(conn, register_rows(region))
    total_events = total_rows = 0
    for month, end in enumerate(ends):
        ev = month_events(rng, region, rates, agent_share, month, end)
        rows = rollup_rows(ev, region.ids)
        with engine.begin() as conn:
            _insert(conn, rows)
        total_events += len(ev["org"])
        total_rows += len(rows)
        print(f"  {end:%Y-%m}: {len(ev['org']):>9,} events -> {len(rows):>9,} rollup rows", file=sys.stderr)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return total_events, total_rows, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--usage", choices=("headcount", "flat"), default="headcount", help="see scaled_rates"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed report runs (the median is reported)")
    parser.add_argument("--db-url", help="default: a fresh SQLite file bench/out/adoption-<n>.db")
    parser.add_argument("--reuse", action="store_true", help="keep an already built SQLite file")
    args = parser.parse_args(argv)

    schema = None
    if args.db_url and args.db_url.startswith("postgresql"):
        schema = f"bench_adoption_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{args.db_url}?options=-csearch_path%3D{schema}"
        reuse = False
    else:
        path = (
            Path(__file__).parent
            / "out"
            / f"adoption-{args.orgs}-{args.events}-{args.months}-{args.seed}-{args.usage}.db"
        )
        reuse = args.reuse and path.exists()
        if not reuse:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = args.db_url or f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        migrate(engine)
        if reuse:
            with engine.connect() as conn:
                rows = conn.scalar(sa.select(sa.func.count()).select_from(usage_daily))
                events = conn.scalar(sa.select(sa.func.sum(usage_daily.c.requests)))
            build_s = float("nan")
        else:
            events, rows, build_s = build(engine, args.orgs, args.events, args.months, args.seed, args.usage)
        return report(engine, args, events, rows, build_s)
    finally:
        engine.dispose()
        if schema:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


def clear_snapshots(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(adoption_window_sums))
        conn.execute(sa.delete(adoption_window_months))


def timed(runs: int, fn) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def timed_reports(
    engine: sa.Engine, config: AdoptionConfig, runs: int, store: bool = True, **options
) -> tuple[list[float], object]:
    """Time ``runs`` reports (coherent forecasts, no back-test unless asked); ``store=False`` reads inside an
    open transaction, where a report stores nothing."""
    options = {"by": "sector", "backtest_origins": 0, **options}
    seconds, result = [], None
    for _ in range(runs):
        with engine.connect() as conn:
            if not store:
                conn.begin()
            started = time.perf_counter()
            result = build_report(conn, config, as_of=AS_OF, **options)
            seconds.append(time.perf_counter() - started)
    return seconds, result


def report(engine: sa.Engine, args, events: int, rows: int, build_s: float) -> int:
    """Time the sector report (coherent forecasts) live from the rollups and with the window sums, the region
    report (reconciled to the sectors' total), the back-test over 12 origins, and the report with it."""
    config = AdoptionConfig()
    clear_snapshots(engine)  # a reused database starts without stored windows
    load = [os.getloadavg()[0]]  # other work on the machine slows every figure: it is printed with them
    live_s, live = timed_reports(engine, config, args.runs, store=False)
    load.append(os.getloadavg()[0])
    cold_s, _ = timed_reports(engine, config, 1)  # stores the settled months' window sums
    warm_s, warm = timed_reports(engine, config, args.runs)
    region_s, _ = timed_reports(engine, config, args.runs, by="region")
    load.append(os.getloadavg()[0])

    def run_backtest():
        with engine.connect() as conn:
            return build_backtest(conn, config, as_of=AS_OF, origins=BACKTEST_ORIGINS)

    backtest_s, backtests = timed(args.runs, run_backtest)
    full_s, full = timed_reports(engine, config, 1, backtest_origins=BACKTEST_ORIGINS)
    load.append(os.getloadavg()[0])
    clear_snapshots(engine)
    assert [c.adopting for c in warm.total.series] == [c.adopting for c in live.total.series]
    total, parts = warm.total.forecast, warm.groups
    for i, (_, point, _, _) in enumerate(total.band):  # the national line is the sum of the sectors
        weighted = sum(g.latest.orgs * g.forecast.band[i][1] for g in parts) / warm.total.latest.orgs
        assert abs(weighted - point) < 1e-9, (i, weighted, point)

    console = Console(width=240)
    console.print(to_rich_table(full))
    table = Table(title=f"Adoption report by sector, {args.orgs:,} orgs ({engine.dialect.name})")
    for name in ("usage events", "rollup rows", "months", "build (s)", "what is timed", "seconds", "target"):
        table.add_column(name, justify="right")
    table.add_column("load avg (1 min)", justify="right")

    def spread(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"

    def verdict(values: list[float], target: float = TARGET_S) -> str:
        return f"<= {target:g} s " + ("PASS" if statistics.median(values) <= target else "FAIL")

    first = [f"{events:,}", f"{rows:,}", str(len(live.months)), f"{build_s:.1f}"]
    blank = ["", "", "", ""]
    table.add_row(*first, "report, live from usage_daily", spread(live_s), verdict(live_s), f"{load[0]:.1f}")
    table.add_row(*blank, "report, window sums: first (stores them)", spread(cold_s), verdict(cold_s), "")
    table.add_row(
        *blank, "report, window sums: next reports", spread(warm_s), verdict(warm_s), f"{load[2]:.1f}"
    )
    table.add_row(
        *blank, "report by region (reconciled), window sums", spread(region_s), verdict(region_s), ""
    )
    table.add_row(
        *blank,
        f"back-test, {BACKTEST_ORIGINS} origins, both measures",
        spread(backtest_s),
        verdict(backtest_s, BACKTEST_TARGET_S),
        f"{load[3]:.1f}",
    )
    table.add_row(*blank, "report with the back-test (CLI default)", spread(full_s), "-", "")
    console.print(table)
    for measure, result in backtests.items():
        console.print(
            f"back-test {measure}: total {result.total.summary()}; sectors {result.parts.summary()}"
        )
    console.print(f"machine: {os.cpu_count()} cores; medians of {args.runs} runs")
    passed = statistics.median(warm_s) <= TARGET_S and statistics.median(backtest_s) <= BACKTEST_TARGET_S
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
