"""Every ``aiplus`` subcommand once (``serve`` aside: the server fixtures run it), checked by what it prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from aiplus.config import load_settings
from aiplus.metering.ledger import UsageEvent, write_events
from aiplus.storage.db import create_engine
from aiplus.storage.tables import adoption_window_months
from aiplus.storage.testing import scratch_database
from tests.cli.conftest import Aiplus, write_config


@pytest.fixture(params=["sqlite", "postgresql"])
def aiplus_any_db(request, tmp_path, capsys, clean_env):
    """The CLI on SQLite under a data directory, and on a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield Aiplus(write_config(tmp_path / "aiplus.toml", tmp_path / "data"), capsys)
        return
    with scratch_database("postgresql", tmp_path) as (_engine, url):
        config = write_config(tmp_path / "aiplus.toml", tmp_path / "data", f'database_url = "{url}"\n')
        yield Aiplus(config, capsys)


def engine_of(aiplus: Aiplus) -> sa.Engine:
    return create_engine(load_settings(aiplus.config).db_url)


def test_orgs_keys_and_usage(aiplus_any_db):
    aiplus = aiplus_any_db
    r = aiplus(
        "orgs", "add", "Rural School", "--sector", "education", "--tier", "lifeline", "--employees", "30"
    )
    assert r.code == 0 and r.out.startswith("created organization rural-school (education, tier lifeline)")
    r = aiplus("orgs", "add", "City Clinic", "--sector", "healthcare", "--id", "clinic", "--region", "north")
    assert r.code == 0 and "created organization clinic (healthcare, tier standard)" in r.out

    r = aiplus("orgs", "list")
    assert r.code == 0 and "rural-school" in r.out and "clinic" in r.out and "lifeline" in r.out
    r = aiplus("orgs", "list", "--tier", "lifeline")
    assert r.code == 0 and "rural-school" in r.out and "clinic" not in r.out

    r = aiplus("keys", "create", "rural-school", "--name", "lab", "--model", "m1")
    assert r.code == 0 and r.out.startswith("created key_")
    key = re.search(r"^aip_\S+$", r.out, re.M).group(0)
    r = aiplus("keys", "list", "rural-school")
    assert r.code == 0 and key not in r.out and key[:12] in r.out and "m1" in r.out
    key_id = re.search(r"key_[0-9a-f]{16}", r.out).group(0)
    r = aiplus("keys", "list")
    assert r.code == 0 and key_id in r.out

    event = UsageEvent(
        "r1", "rural-school", key_id, "m1", "chat", 100, 20, "ok", True, datetime.now(UTC), 5, 50, 1_500_000
    )
    engine = engine_of(aiplus)
    with engine.begin() as conn:
        write_events(conn, [event])
    engine.dispose()
    r = aiplus("usage", "--org", "rural-school", "--by", "month")
    month = datetime.now(UTC).strftime("%Y-%m")
    assert r.code == 0 and re.search(rf"{month}\s.*rural-school\s.*m1\s.*\b100\b.*\b20\b.*1\.500000", r.out)
    assert re.search(r"total\s.*1\.500000", r.out)
    engine = engine_of(aiplus)
    with engine.begin() as conn:  # one flex request more
        event.request_id, event.service_tier, event.cost_micros = "r2", "flex", 700_000
        write_events(conn, [event])
    engine.dispose()
    r = aiplus("usage", "--org", "rural-school", "--by", "month", "--by-service-tier")
    assert r.code == 0 and "service tier" in r.out
    assert re.search(r"rural-school\W+m1\W+default\W.*1\.500000", r.out)
    assert re.search(r"total\W+flex\W.*0\.700000", r.out)
    assert re.search(r"total[\s│]+2[\s│].*2\.200000", r.out)  # the grand total: no service tier
    r = aiplus("usage", "--org", "rural-school", "--service-tier", "flex")
    assert r.code == 0 and re.search(r"total\s.*0\.700000", r.out) and "1.500000" not in r.out

    r = aiplus("orgs", "show", "rural-school")
    assert r.code == 0 and "small" in r.out and "240 of 20000000" in r.out and "2.200000" in r.out
    assert key_id in r.out  # its keys are listed under it

    r = aiplus("orgs", "update", "rural-school", "--tier", "standard", "--employees", "300")
    assert r.code == 0 and r.out.strip() == "organization rural-school: tier standard, education, large"
    r = aiplus("orgs", "list", "--tier", "lifeline")
    assert r.code == 0 and "rural-school" not in r.out

    r = aiplus("keys", "revoke", key_id)
    assert r.code == 0 and re.match(rf"revoked {key_id} \({key[:12]}…\) of rural-school at \d{{4}}-", r.out)
    with engine_of(aiplus).connect() as conn:
        assert conn.scalar(sa.text(f"SELECT revoked_at FROM api_keys WHERE id = '{key_id}'")) is not None


def test_register_demo_and_adoption(aiplus, tmp_path):
    good = tmp_path / "register.csv"
    good.write_text("id,name,sector,region,employees\nx1,A,ict,N,3\nx2,B,finance,S,300\n")
    r = aiplus("registry", "import", str(good))
    assert r.code == 0 and "2 row(s) read, 2 added, 0 updated" in r.out
    assert "0 tenant organization(s) are in the register" in r.out
    obs = tmp_path / "obs.csv"
    obs.write_text("sector,date,penetration,source\nall,2025-12-31,20%,Eurostat\n")
    r = aiplus("registry", "observations", str(obs))
    assert r.code == 0 and "observations: 1 row(s) read, 1 added, 0 replaced" in r.out

    r = aiplus("demo", "seed", "--orgs", "60", "--months", "3")
    assert (
        r.code == 0 and "demo region: 60 register orgs" in r.out and "next: aiplus adoption report" in r.out
    )
    r = aiplus("demo", "seed", "--orgs", "60", "--months", "3")
    assert r.code == 1 and "already holds a demo region" in r.err and "Traceback" not in r.err

    # Before any report: a report stores the missing settled months itself.
    r = aiplus("adoption", "refresh")
    stored = int(re.fullmatch(r"stored the window sums of (\d+) settled month\(s\)\n", r.out).group(1))
    engine = engine_of(aiplus)
    with engine.connect() as conn:
        months = conn.scalar(sa.select(sa.func.count()).select_from(adoption_window_months))
    engine.dispose()
    assert r.code == 0 and stored >= 2 and months == stored  # of 3 months, at least the 2 older are settled
    assert aiplus("adoption", "refresh").out == "stored the window sums of 0 settled month(s)\n"
    assert (
        aiplus("adoption", "refresh", "--rebuild").out
        == f"stored the window sums of {stored} settled month(s)\n"
    )

    r = aiplus("adoption", "report", "--format", "json", "--no-band")
    data = json.loads(r.out)
    assert r.code == 0 and data["total"]["orgs"] == 62 and "band" not in data["total"]["forecast"]
    assert data["total"]["observations"][0]["penetration"] == 0.2
    r = aiplus("adoption", "report", "--by", "region", "--format", "csv")
    assert r.code == 0 and r.out.startswith("region,orgs,adopting,penetration")
    r = aiplus("adoption", "report")
    assert r.code == 0 and "Penetration = adopting / register organizations" in r.out
    r = aiplus("adoption", "chart", str(tmp_path / "a.svg"), "--by", "size")
    assert r.code == 0 and r.out == f"chart written to {tmp_path / 'a.svg'}\n"
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")


def test_adoption_backtest_scores_refitted_forecasts(aiplus):
    assert aiplus("demo", "seed", "--orgs", "400", "--months", "20").code == 0
    r = aiplus("adoption", "backtest", "--origins", "3", "--format", "json")
    data = json.loads(r.out)
    total = data["penetration"]["levels"]["all"]
    assert r.code == 0 and len(data["penetration"]["origins"]) == 3 and total["n_6m"] == 3
    assert total["mae_pp_6m"] >= 0 and 0 <= total["coverage_6m"] <= 1 and "agents" in data
    r = aiplus("adoption", "backtest", "--origins", "3")
    assert r.code == 0 and "Back-test by sector" in r.out and "6-mo MAE (pp)" in r.out
    r = aiplus("adoption", "report", "--backtest", "3", "--format", "json", "--no-band")
    assert r.code == 0 and json.loads(r.out)["total"]["forecast"]["backtest"]["n_6m"] == 3


def test_empty_register_is_explained(aiplus):
    r = aiplus("adoption", "report", "--format", "csv")
    assert r.code == 0 and "the register is empty" in r.err and "aiplus demo seed" in r.err


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (("orgs", "show", "nope"), 1, "no organization 'nope'"),
        (("orgs", "update", "nope", "--tier", "batch"), 1, "no organization 'nope'"),
        (("keys", "create", "nope"), 1, "no organization 'nope'"),
        (("keys", "list", "nope"), 1, "no organization 'nope'"),
        (("keys", "revoke", "key_nope"), 1, "no API key 'key_nope'"),
        (("keys", "create", "demo", "--expires", "soon"), 2, "--expires: not an ISO 8601 date"),
        (("orgs", "add", "X", "--sector", "ict", "--tier", "gold"), 1, "unknown tier 'gold'"),
        (("usage", "--since", "yesterday"), 2, "--since must be a date"),
        (("adoption", "report", "--as-of", "May"), 2, "--as-of: not a date"),
        (("adoption", "chart", "out.gif"), 2, "chart file must end in .png or .svg"),
        (("demo", "seed", "--orgs", "0"), 2, "--orgs and --months must be at least 1"),
        (("adoption", "backtest", "--origins", "0"), 2, "back-test origins must be 1 to"),
        (("adoption", "report", "--backtest", "-1"), 2, "back-test origins must be 0 to"),
    ],
)
def test_user_errors_are_one_line_and_an_exit_code(aiplus, argv, code, message):
    r = aiplus(*argv)
    assert (r.code, r.out) == (code, "")
    assert r.err.startswith(f"aiplus: error: {message}") and r.err.count("\n") == 1, r.err


def test_a_rejected_csv_lists_its_bad_lines(aiplus, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,sector,region,employees\nx1,A,ict,N,3\nx2,B,space,N,3\nx1,C,ict,N,x\n")
    r = aiplus("registry", "import", str(bad))
    assert r.code == 1 and r.err.startswith(f"aiplus: error: {bad}: 2 bad row(s), nothing imported")
    assert "line 3: unknown sector 'space'" in r.err and "line 4:" in r.err and "Traceback" not in r.err


def test_as_a_user_runs_it(tmp_path, clean_env):
    """A real process: output on stdout, errors as one line on stderr with a non-zero exit, never a traceback."""
    config = write_config(tmp_path / "aiplus.toml", tmp_path / "data")

    def run(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "aiplus.cli", *argv, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    done = run("orgs", "add", "Farm Coop", "--sector", "agriculture")
    assert done.returncode == 0 and "created organization farm-coop" in done.stdout
    done = run("orgs", "show", "farm-coop")
    assert done.returncode == 0 and "agriculture" in done.stdout
    done = run("orgs", "show", "nope")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "aiplus: error: no organization 'nope'\n")
    done = subprocess.run(
        [sys.executable, "-m", "aiplus.cli", "orgs", "list", "--config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith(
        "aiplus: error: configuration: config file not found"
    )
