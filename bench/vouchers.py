"""Benchmark (issue 12): what vouchers add to a month's statements, closing and claims, side by side in one run.

A month (2026-11, the example tariff) of ``--orgs`` organizations and ``--events`` usage events written through
the ledger (``write_events``: vouchers read the holders' events for their days). ``--holders`` of the
organizations hold a voucher of a city programme (30%, a monthly cap) and half of them a stacking district
top-up (20%, combined at most 50%, a small pool that runs dry). Timed in the same run: every statement of the
month without any voucher programme, then with them; the allocation alone; one holder's statement; closing
the month; a programme's claim pack and its verification. Checked: every organization's due plus its vouchers
equals its charge, and the claim recomputes from its files.

    .venv/bin/python bench/vouchers.py                       # SQLite file under bench/out/
    .venv/bin/python bench/vouchers.py --db-url postgresql+psycopg://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from aiplus.billing.claims import verify_claim, write_claim
from aiplus.billing.disbursement import Funder
from aiplus.billing.programmes import add_programme, issue_voucher
from aiplus.billing.statements import close_month, statement, statements
from aiplus.billing.versions import adopt_example_tariff, load_versions
from aiplus.config import DEFAULT_TIERS, SECTORS
from aiplus.metering.events import UsageEvent, write_events
from aiplus.storage.db import create_engine, migrate
from aiplus.tenancy.orgs import create_org

MONTH, FIRST = "2026-11", date(2026, 11, 1)
MODELS = ("smollm2-135m-instruct", "qwen2.5-7b-instruct")
M = 1_000_000


def build(engine: sa.Engine, orgs: int, events: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with engine.begin() as conn:
        adopt_example_tariff(conn, FIRST - timedelta(days=31), [t.name for t in DEFAULT_TIERS])
        for i in range(orgs):
            create_org(
                conn,
                name=f"org {i}",
                org_id=f"org-{i:06d}",
                sector=SECTORS[i % len(SECTORS)],
                tier="standard",
                region=("Capital", "North")[i % 2],
                employees=int(rng.integers(1, 49)),
                tiers=DEFAULT_TIERS,
            )
    who = rng.integers(0, orgs, size=events)
    second = rng.integers(0, 30 * 86_400, size=events)
    prompt, completion = rng.integers(60, 1500, size=events), rng.integers(20, 600, size=events)
    model = rng.random(events) < 0.3
    start = datetime(2026, 10, 31, 16, tzinfo=UTC)  # midnight of Nov 1 in Asia/Shanghai
    batch = []
    for i in range(events):
        batch.append(
            UsageEvent(
                f"e{i}",
                f"org-{int(who[i]):06d}",
                None,
                MODELS[int(model[i])],
                "chat",
                int(prompt[i]),
                int(completion[i]),
                "ok",
                False,
                start + timedelta(seconds=int(second[i])),
                1,
                1,
                0,
            )
        )
        if len(batch) == 5000 or i == events - 1:
            with engine.begin() as conn:
                write_events(conn, batch)
            batch = []
    return time.perf_counter() - started


def add_vouchers(engine: sa.Engine, holders: int) -> None:
    window = {
        "valid_from": "2026-09-01",
        "valid_until": "2027-12-31",
        "stacks": True,
        "max_combined_share": "0.5",
    }
    with engine.begin() as conn:
        add_programme(
            conn,
            {
                "id": "city",
                "funder": "City",
                "pool_micros": 10**12,
                "share": "0.3",
                "cap_month_micros": 50 * M,
            }
            | window,
        )
        add_programme(
            conn, {"id": "district", "funder": "District", "pool_micros": 2 * M, "share": "0.2"} | window
        )
        for i in range(holders):
            org_id = f"org-{i:06d}"
            issue_voucher(conn, "city", org_id, 100 * M, "2027-06-30", valid_from="2026-11-01")
            if i % 2:
                issue_voucher(
                    conn, "district", org_id, 10 * M, "2026-11-20", priority=1, valid_from="2026-11-01"
                )


def timed(fn, runs: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=2_000)
    parser.add_argument("--holders", type=int, default=500)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db-url", help="default: a fresh SQLite file bench/out/vouchers.db")
    args = parser.parse_args(argv)
    schema = admin = None
    if args.db_url and args.db_url.startswith("postgresql"):
        schema = f"bench_vouchers_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{args.db_url}?options=-csearch_path%3D{schema}"
    else:
        path = Path(__file__).parent / "out" / "vouchers.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = args.db_url or f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        migrate(engine)
        print(f"writing {args.orgs:,} organizations and {args.events:,} events ...", file=sys.stderr)
        build_s = build(engine, args.orgs, args.events, args.seed)
        return report(engine, args, build_s)
    finally:
        engine.dispose()
        if schema:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


def report(engine: sa.Engine, args, build_s: float) -> int:
    def every() -> list[dict]:
        with engine.connect() as conn:
            return statements(conn, MONTH)

    plain_s, plain = timed(every, args.runs)
    add_vouchers(engine, args.holders)
    funded_s, docs = timed(every, args.runs)

    def allocation():
        with engine.connect() as conn:
            return Funder(conn, load_versions(conn), None).month(MONTH)

    alloc_s, _ = timed(allocation, args.runs)
    one_ms = []
    with engine.connect() as conn:
        for i in range(0, min(args.holders, 20)):
            started = time.perf_counter()
            statement(conn, MONTH, f"org-{i:06d}")
            one_ms.append((time.perf_counter() - started) * 1000)
    for doc in docs:
        owed = doc["charge_micros"] - doc["subsidy"]["amount_micros"]
        assert doc["amount_due_micros"] + doc["vouchers"]["amount_micros"] == owed
    paid = sum(d["vouchers"]["amount_micros"] for d in docs)
    assert sum(d["amount_due_micros"] for d in plain) == sum(d["amount_due_micros"] for d in docs) + paid
    started = time.perf_counter()
    with engine.begin() as conn:
        closed = close_month(conn, MONTH, now=datetime(2026, 12, 2, tzinfo=UTC))
    close_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with engine.connect() as conn:
            manifest = write_claim(conn, "city", MONTH, Path(tmp) / "claim")
        claim_s = time.perf_counter() - started
        started = time.perf_counter()
        verified = verify_claim(Path(tmp) / "claim")
        verify_s = time.perf_counter() - started
    assert verified["share_micros"] == manifest["totals"]["share_micros"]

    table = Table(
        title=f"vouchers: {args.orgs:,} organizations, {args.holders:,} holders, {args.events:,} events, "
        f"{engine.dialect.name}"
    )
    for column in ("measure", "figure"):
        table.add_column(column)
    med = statistics.median
    table.add_row("write orgs and events through the ledger", f"{build_s:.1f} s")
    table.add_row("all statements, no programmes (median)", f"{med(plain_s):.2f} s")
    table.add_row("all statements, with vouchers (median)", f"{med(funded_s):.2f} s")
    table.add_row("  ratio with / without", f"{med(funded_s) / med(plain_s):.2f}×")
    table.add_row("  of which the allocation of every holder (median)", f"{med(alloc_s):.2f} s")
    table.add_row("one holder's statement (median, max)", f"{med(one_ms):.0f} ms, {max(one_ms):.0f} ms")
    table.add_row(
        "close the month (freeze + write-offs)", f"{close_s:.2f} s ({closed['voucher_writeoffs']:,} rows)"
    )
    table.add_row(
        "claim pack of 'city', closed month", f"{claim_s:.2f} s ({manifest['totals']['rows']:,} rows)"
    )
    table.add_row("verify the claim pack from its files", f"{verify_s:.2f} s")
    table.add_row(
        "paid by vouchers / charged", f"{paid:,} / {sum(d['charge_micros'] for d in docs):,} micro-units"
    )
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
