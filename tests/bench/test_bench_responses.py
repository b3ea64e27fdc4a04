"""Smoke test of ``bench/responses.py --quick``: it runs on both databases and shows linear growth (no timing is
asserted: the figures depend on the machine's load)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_responses_quick():
    done = subprocess.run(
        [sys.executable, str(BENCH / "responses.py"), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for database in ("SQLite", "PostgreSQL"):
        rows = re.findall(rf"^\| {database} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (.+)$", done.stdout, re.M)
        assert len(rows) == 2, done.stdout  # the latency row and the growth row
        growth = [int(v) for v in rows[1][:3]]
        per_turn = growth[0] / 10, growth[2] / 50
        assert abs(per_turn[1] - per_turn[0]) / per_turn[0] < 0.05  # linear: the same bytes each turn
