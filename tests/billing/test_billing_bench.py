"""The benchmark builds the time-of-use rollup in bulk; it must equal what write_events leaves on the same events."""

import importlib.util
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from aiplus.billing.tariff import parse_tariff
from aiplus.billing.versions import example_tariff_text
from aiplus.storage.tables import usage_tou
from aiplus.storage.testing import scratch_database

BENCH = Path(__file__).resolve().parents[2] / "bench" / "billing.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_billing", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bulk_rollups_equal_the_ledger_rollups(tmp_path):
    bench = load_bench()
    chunks = list(bench.draw_events(np.random.default_rng(3), 200, 20_000, chunk=7_000))
    with scratch_database("sqlite", tmp_path) as (engine, _url):
        with engine.begin() as conn:
            version = bench.adopt_example_tariff(conn, bench.FIRST, ["lifeline", "standard", "batch"])
        bulk = bench.rollup_rows(chunks, 200, version["id"], parse_tariff(example_tariff_text()).hour_bands)
        with engine.begin() as conn:
            for i, chunk in enumerate(chunks):
                bench.write_events(conn, bench.as_events(chunk, prefix=f"c{i}-"))
            ledger = sorted(
                tuple(row) for row in conn.execute(sa.select(*(usage_tou.c[c] for c in bench.TOU_COLUMNS)))
            )
    assert len(bulk) > 600 and sorted(bulk) == ledger
