"""The benchmark builds rollups in bulk; they must equal what the ledger's write_events leaves on the same events."""

import importlib.util
from datetime import date
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from aiplus.adoption.demo import synthetic_region
from aiplus.adoption.penetration import month_ends
from aiplus.metering.ledger import write_events
from aiplus.storage.tables import usage_daily
from aiplus.storage.testing import scratch_database

BENCH = Path(__file__).resolve().parents[2] / "bench" / "adoption.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_adoption", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bulk_rollups_equal_the_ledger_rollups(tmp_path):
    bench = load_bench()
    region = synthetic_region(300, seed=2, prefix="org-")
    rng = np.random.default_rng(9)
    rates = bench.scaled_rates(region, 6, 20_000, "headcount")
    agent_share = rng.beta(1.2, 3.0, size=300)
    ends = month_ends(date(2026, 1, 1), date(2026, 6, 30))
    months = [bench.month_events(rng, region, rates, agent_share, i + 12, end) for i, end in enumerate(ends)]
    assert sum(len(ev["org"]) for ev in months) > 5_000
    (tmp_path / "ledger").mkdir()
    (tmp_path / "bulk").mkdir()
    with (
        scratch_database("sqlite", tmp_path / "ledger") as (ledger, _),
        scratch_database("sqlite", tmp_path / "bulk") as (bulk, _),
    ):
        for i, ev in enumerate(months):
            with ledger.begin() as conn:
                write_events(conn, bench.as_events(ev, region.ids, i))
            with bulk.begin() as conn:
                bench._insert(conn, bench.rollup_rows(ev, region.ids))
        order = [usage_daily.c.day, usage_daily.c.org_id, usage_daily.c.model, usage_daily.c.status]
        with ledger.connect() as a, bulk.connect() as b:
            expected = a.execute(sa.select(usage_daily).order_by(*order)).all()
            got = b.execute(sa.select(usage_daily).order_by(*order)).all()
    assert len(got) > 1_000 and got == expected
