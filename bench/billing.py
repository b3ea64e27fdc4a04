"""Benchmark (issue 11): one month of 100,000 organizations and 10 million usage events -> every statement in
<= 10 s, and one organization's statement in <= 50 ms, on SQLite and on PostgreSQL.

Statements read only the time-of-use rollup (``usage_tou``), so the benchmark builds it in bulk: 10 million
synthetic events are drawn as numpy arrays (org, local hour, model, tokens), classified into time-of-use bands
by the example tariff exactly as ``metering.tou.add_to_tou`` classifies them, summed per (org, model, band),
and the rows inserted in bulk (COPY on PostgreSQL). ``tests/billing/test_billing_bench.py`` checks that this
bulk path leaves the rows ``write_events`` leaves for the same events. Inserting the 10 million events through
``write_events`` itself is measured on a sample (``--ledger-sample``) and extrapolated, not run in full.

    .venv/bin/python bench/billing.py                       # SQLite file under bench/out/
    .venv/bin/python bench/billing.py --db-url postgresql+psycopg://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from aiplus.billing.statements import close_month, statement, statements
from aiplus.billing.tariff import parse_tariff
from aiplus.billing.versions import adopt_example_tariff, example_tariff_text
from aiplus.config import DEFAULT_TIERS, SECTORS
from aiplus.metering.events import UsageEvent, write_events
from aiplus.storage.db import create_engine, migrate

MONTH = "2026-11"
FIRST = date(2026, 11, 1)
DAYS = 30
MODELS = ("smollm2-135m-instruct", "qwen2.5-7b-instruct")
ALL_TARGET_S, ONE_TARGET_MS = 10.0, 50.0
TOU_COLUMNS = (
    "month",
    "org_id",
    "version_id",
    "model",
    "band",
    "requests",
    "prompt_tokens",
    "completion_tokens",
)
TOU_COLUMNS += ("cost_micros",)
# Requests by local hour: a working day's shape (busy 9-12 and 14-18, quiet at night).
HOUR_PROFILE = np.array(
    [1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 10, 7, 8, 10, 10, 9, 8, 6, 5, 4, 3, 2, 1], dtype=float
)


def org_rows(n: int, rng) -> list[tuple]:
    """Organizations: 10% lifeline (schools, clinics), 85% standard, 5% batch; sectors and regions at random."""
    tier = rng.choice(3, size=n, p=[0.10, 0.85, 0.05])
    sector = rng.integers(0, len(SECTORS), size=n)
    names = ("lifeline", "standard", "batch")
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        (
            f"org-{i:06d}",
            f"Organization {i}",
            SECTORS[sector[i]],
            "Capital",
            None,
            None,
            names[tier[i]],
            created,
        )
        for i in range(n)
    ]


def draw_events(rng, orgs: int, events: int, chunk: int = 1_000_000):
    """Yield the month's events in chunks: org index, UTC instant (s), model index, prompt and completion tokens.

    Activity per organization is log-normal (a few heavy users, many light ones), scaled to ``events`` in all.
    """
    weight = rng.lognormal(0.0, 1.5, size=orgs)
    counts = rng.multinomial(events, weight / weight.sum())
    org = np.repeat(np.arange(orgs), counts)
    rng.shuffle(org)
    offset = int(datetime(2026, 11, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    hours = HOUR_PROFILE / HOUR_PROFILE.sum()
    for start in range(0, events, chunk):
        who = org[start : start + chunk]
        n = len(who)
        local = rng.integers(0, DAYS, size=n) * 86_400 + rng.choice(24, size=n, p=hours) * 3600
        local += rng.integers(0, 3600, size=n)
        yield {
            "org": who,
            "at": offset + local,  # seconds since the epoch (UTC) of a local instant in November
            "local_hour": (local // 3600) % 24,
            "model": (rng.random(n) < 0.3).astype(np.int64),
            "prompt": rng.integers(60, 1_500, size=n),
            "completion": rng.integers(20, 600, size=n),
        }


def as_events(chunk: dict, prefix: str = "e") -> list[UsageEvent]:
    """The same events as UsageEvents (for the ledger sample and the equivalence test)."""
    out = []
    for k in range(len(chunk["org"])):
        prompt, completion = int(chunk["prompt"][k]), int(chunk["completion"][k])
        out.append(
            UsageEvent(
                f"{prefix}{k}",
                f"org-{int(chunk['org'][k]):06d}",
                None,
                MODELS[int(chunk["model"][k])],
                "chat",
                prompt,
                completion,
                "ok",
                False,
                datetime.fromtimestamp(int(chunk["at"][k]), UTC),
                100,
                1000,
                list_cost(prompt, completion),
            )
        )
    return out


def list_cost(prompt, completion):
    return (prompt * 100_000 + completion * 200_000 + 500_000) // 1_000_000


def rollup_rows(chunks, orgs: int, version_id: int, hour_bands: list[str]) -> list[tuple]:
    """Sum the events per (org, model, band) the way ``add_to_tou`` does."""
    bands = sorted(set(hour_bands))
    band_of_hour = np.array([bands.index(b) for b in hour_bands])
    cells = orgs * len(MODELS) * len(bands)
    sums = np.zeros((4, cells), dtype=np.int64)
    for ch in chunks:
        key = (ch["org"] * len(MODELS) + ch["model"]) * len(bands) + band_of_hour[ch["local_hour"]]
        sums[0] += np.bincount(key, minlength=cells)
        sums[1] += np.bincount(key, weights=ch["prompt"], minlength=cells).astype(np.int64)
        sums[2] += np.bincount(key, weights=ch["completion"], minlength=cells).astype(np.int64)
        sums[3] += np.bincount(
            key, weights=list_cost(ch["prompt"], ch["completion"]), minlength=cells
        ).astype(np.int64)
    rows = []
    for key in np.nonzero(sums[0])[0]:
        org, rest = divmod(int(key), len(MODELS) * len(bands))
        model, band = divmod(rest, len(bands))
        r, p, c, cost = (int(v) for v in sums[:, key])
        rows.append((MONTH, f"org-{org:06d}", version_id, MODELS[model], bands[band], r, p, c, cost))
    return rows


def bulk_insert(conn: sa.Connection, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def build(engine: sa.Engine, orgs: int, events: int, seed: int) -> tuple[int, float]:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    tiers = [t.name for t in DEFAULT_TIERS]
    with engine.begin() as conn:
        version = adopt_example_tariff(conn, FIRST, tiers)
        columns = ("id", "name", "sector", "region", "employees", "size_class", "tier", "created_at")
        bulk_insert(conn, "orgs", columns, org_rows(orgs, rng))
    tariff = parse_tariff(example_tariff_text())
    rows = rollup_rows(draw_events(rng, orgs, events), orgs, version["id"], tariff.hour_bands)
    with engine.begin() as conn:
        for start in range(0, len(rows), 100_000):
            bulk_insert(conn, "usage_tou", TOU_COLUMNS, rows[start : start + 100_000])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return len(rows), time.perf_counter() - started


def timed(fn, runs: int, cpu: list[float] | None = None) -> tuple[list[float], object]:
    """Wall seconds of ``runs`` calls (and this process's CPU seconds into ``cpu``: less moved by other load)."""
    seconds, result = [], None
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_started)
    return seconds, result


def ledger_rate(engine: sa.Engine, orgs: int, sample: int, seed: int) -> float:
    """Events per second through ``write_events`` (batches of 5,000, as the ledger writes them)."""
    rng = np.random.default_rng(seed + 1)
    chunk = next(draw_events(rng, orgs, sample, chunk=sample))
    chunk["at"] = chunk["at"] + 30 * 86_400  # December: leaves the timed month alone
    events = as_events(chunk, prefix="ledger-")
    started = time.perf_counter()
    for start in range(0, len(events), 5000):
        with engine.begin() as conn:
            write_events(conn, events[start : start + 5000])
    return len(events) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of all statements (median reported)")
    parser.add_argument("--one", type=int, default=50, help="single-organization statements timed")
    parser.add_argument(
        "--ledger-sample", type=int, default=50_000, help="events written through write_events"
    )
    parser.add_argument("--db-url", help="default: a fresh SQLite file bench/out/billing.db")
    args = parser.parse_args(argv)

    schema = admin = None
    if args.db_url and args.db_url.startswith("postgresql"):
        schema = f"bench_billing_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{args.db_url}?options=-csearch_path%3D{schema}"
    else:
        path = Path(__file__).parent / "out" / "billing.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = args.db_url or f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        migrate(engine)
        print(f"building {args.orgs:,} organizations and {args.events:,} events ...", file=sys.stderr)
        rows, build_s = build(engine, args.orgs, args.events, args.seed)
        print(f"  {rows:,} rollup rows in {build_s:.1f} s", file=sys.stderr)
        return report(engine, args, rows)
    finally:
        engine.dispose()
        if schema:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


def report(engine: sa.Engine, args, rows: int) -> int:
    load = os.getloadavg()[0]

    def every() -> list[dict]:
        with engine.connect() as conn:
            return statements(conn, MONTH)

    all_cpu: list[float] = []
    all_s, docs = timed(every, args.runs, all_cpu)
    assert len(docs) == args.orgs
    total = sum(d["amount_due_micros"] for d in docs)
    rng = np.random.default_rng(args.seed + 2)
    picks = [f"org-{int(i):06d}" for i in rng.integers(0, args.orgs, size=args.one)]
    one_ms = []
    with engine.connect() as conn:
        statement(conn, MONTH, picks[0])  # the parsed tariff is cached after the first call
        for org in picks:
            started = time.perf_counter()
            statement(conn, MONTH, org)
            one_ms.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    with engine.begin() as conn:
        closed = close_month(conn, MONTH, now=datetime(2026, 12, 2, tzinfo=UTC))
    close_s = time.perf_counter() - started
    assert closed["amount_due_micros"] == total
    frozen_s, frozen = timed(every, 1)
    assert sum(d["amount_due_micros"] for d in frozen) == total
    frozen_one = []
    with engine.connect() as conn:
        for org in picks[:10]:
            started = time.perf_counter()
            statement(conn, MONTH, org)
            frozen_one.append((time.perf_counter() - started) * 1000)
    rate = (
        ledger_rate(engine, args.orgs, args.ledger_sample, args.seed) if args.ledger_sample else float("nan")
    )

    table = Table(
        title=f"billing: {args.orgs:,} organizations, {args.events:,} events, {engine.dialect.name}"
    )
    for column in ("measure", "figure", "target", "verdict"):
        table.add_column(column)
    median_all = statistics.median(all_s)
    median_one = statistics.median(one_ms)
    table.add_row("rollup rows (usage_tou)", f"{rows:,}", "", "")
    table.add_row(
        "all statements, open month (median of runs)",
        f"{median_all:.2f} s ({min(all_s):.2f}–{max(all_s):.2f}); CPU {statistics.median(all_cpu):.2f} s",
        f"<= {ALL_TARGET_S:.0f} s",
        "PASS" if median_all <= ALL_TARGET_S else "FAIL",
    )
    table.add_row(
        "one organization's statement (median, max)",
        f"{median_one:.1f} ms, {max(one_ms):.1f} ms",
        f"<= {ONE_TARGET_MS:.0f} ms",
        "PASS" if median_one <= ONE_TARGET_MS else "FAIL",
    )
    table.add_row("close the month (freeze all statements)", f"{close_s:.2f} s", "", "")
    table.add_row("all statements, closed month (as frozen)", f"{frozen_s[0]:.2f} s", "", "")
    table.add_row("one statement, closed month (median)", f"{statistics.median(frozen_one):.1f} ms", "", "")
    table.add_row(
        f"write_events, {args.ledger_sample:,}-event sample",
        f"{rate:,.0f} events/s (10M: ~{args.events / rate / 60:.0f} min)",
        "",
        "",
    )
    table.add_row("amount due, all organizations", f"{total:,} micro-units", "", "")
    table.add_row("load average (1 min) at start", f"{load:.1f}", "", "")
    Console(width=200).print(table)
    return 0 if median_all <= ALL_TARGET_S and median_one <= ONE_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
