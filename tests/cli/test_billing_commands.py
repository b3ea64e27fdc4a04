"""``aiplus tariff`` and ``aiplus bill`` once each, on the demo region that ``demo seed`` prices with the example
tariff; checked against the billing service functions the admin API calls."""

from __future__ import annotations

import json

from aiplus.adoption.demo import demo_month_ends
from aiplus.billing.statements import statements
from aiplus.billing.versions import example_tariff_text
from aiplus.config import load_settings
from aiplus.storage.db import create_engine


def test_demo_seed_prices_its_region_and_every_billing_command_runs(aiplus, tmp_path):
    r = aiplus("demo", "seed", "--orgs", "300", "--months", "3")
    assert r.code == 0 and "tariff: the example tariff (version 1) in force from" in r.out, r.err
    r = aiplus("tariff", "list")
    assert r.code == 0 and "Public AI utility tariff (example)" in r.out and "in force" in r.out
    r = aiplus("tariff", "show")
    assert r.code == 0 and r.out.startswith("# version 1, in force from") and example_tariff_text() in r.out

    month = demo_month_ends(3)[-1].isoformat()[:7]  # the demo's last month, complete
    r = aiplus("bill", "--month", month, "--format", "json")
    docs = json.loads(r.out)["data"]
    engine = create_engine(load_settings(aiplus.config).db_url)
    with engine.connect() as conn:
        expected = statements(conn, month, None)
    engine.dispose()
    assert r.code == 0 and len(docs) == len(expected) > 0
    assert [d["amount_due_micros"] for d in docs] == [d["amount_due_micros"] for d in expected]
    assert any(d["charge_micros"] > 0 for d in docs)  # the demo's usage is really priced
    again = aiplus("bill", "--month", month, "--format", "json")
    assert again.out == r.out  # deterministic: the same month gives the same bytes

    one = docs[0]["org"]["id"]
    r = aiplus("bill", "--month", month, "--org", one, "--format", "csv")
    assert r.code == 0 and one in r.out and len(r.out.splitlines()) >= 2
    html = tmp_path / "statements.html"
    r = aiplus("bill", "--month", month, "--org", one, "--format", "html", "--out", str(html))
    assert r.code == 0 and "<html" in html.read_text().lower() and one in html.read_text()
    r = aiplus("bill", "balance", "--month", month, "--format", "json")
    balance = json.loads(r.out)
    assert r.code == 0 and balance["month"] == month

    r = aiplus("tariff", "simulate", str(_write_tariff(tmp_path, "doubled.toml", 2)), "--month", month)
    assert r.code == 0 and r.out.strip(), r.err

    first = _months_before(month, 2)
    r = aiplus("bill", "close", "--month", first)
    assert r.code == 0 and r.out.startswith(f"closed {first}: ") and "statements frozen" in r.out
    r = aiplus("bill", "close", "--month", first)
    assert r.code == 1 and r.err.startswith("aiplus: error: ") and "Traceback" not in r.err

    later = tmp_path / "later.toml"
    later.write_text(example_tariff_text())
    r = aiplus("tariff", "adopt", str(later), "--from", "2099-01-01")
    assert r.code == 0 and r.out.startswith("adopted tariff version 2 ")


def test_a_bad_tariff_names_its_field_and_adopts_nothing(aiplus, tmp_path):
    r = aiplus("tariff", "adopt", str(_write_tariff(tmp_path, "negative.toml", -1)), "--from", "2099-01-01")
    assert r.code == 2 and r.out == "" and r.err.startswith("aiplus: error: ") and "prices" in r.err, r.err
    assert r.err.count("\n") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[prices\n")
    r = aiplus("tariff", "adopt", str(broken), "--from", "2099-01-01")
    assert r.code == 2 and "Traceback" not in r.err
    r = aiplus("tariff", "list")
    assert r.code == 0 and "Public AI utility tariff" not in r.out


def _write_tariff(tmp_path, name: str, factor: int):
    """The example tariff with its per-model prices multiplied by ``factor``."""
    lines = []
    for line in example_tariff_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("input_per_mtok", "output_per_mtok"):
            line = f"{key}= {int(value.split('#')[0].strip().replace('_', '')) * factor}"
        lines.append(line)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _months_before(month: str, n: int) -> str:
    year, mon = int(month[:4]), int(month[5:]) - n
    while mon < 1:
        year, mon = year - 1, mon + 12
    return f"{year:04d}-{mon:02d}"
