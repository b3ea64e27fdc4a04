"""The vouchers benchmark stays runnable: a tiny run on SQLite checks its own invariants (due plus vouchers is
the charge, the claim verifies) and prints its table."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "vouchers.py"


def test_the_benchmark_runs_and_adds_up(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_vouchers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = f"sqlite:///{tmp_path / 'v.db'}"
    assert (
        module.main(["--orgs", "40", "--holders", "10", "--events", "800", "--runs", "1", "--db-url", url])
        == 0
    )
    out = capsys.readouterr().out
    assert "ratio with / without" in out and "verify the claim pack" in out
