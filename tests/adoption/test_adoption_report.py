"""The report, its table/JSON/CSV forms, the chart, the demo seeder, the CLI and GET /admin/adoption."""

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from rich.console import Console

from aiplus.adoption.charts import write_chart
from aiplus.adoption.demo import seed_demo
from aiplus.adoption.report import build_report, to_csv, to_rich_table
from aiplus.app import create_app
from aiplus.cli import main
from aiplus.config import SECTORS, load_settings
from aiplus.storage.tables import api_keys, orgs, register_orgs, usage_daily, usage_events

TODAY = date(2026, 11, 15)
STATUSES = {"on track", "at risk", "off track", "met", "missed", "insufficient data"}


@pytest.fixture
def settings():
    return load_settings(None, env={}, secret="test-secret")


@pytest.fixture
def demo(sqlite_db, settings):
    done = seed_demo(sqlite_db, settings, orgs=400, months=12, seed=3, today=TODAY)
    return sqlite_db, done


def test_demo_seeds_register_tenants_keys_and_ledger(demo):
    engine, done = demo
    assert (done["first_month"], done["last_month"]) == ("2025-11", "2026-10")
    with engine.connect() as conn:
        count = lambda t: conn.scalar(sa.select(sa.func.count()).select_from(t))  # noqa: E731
        assert count(register_orgs) == 400
        assert count(orgs) == done["tenants"] == count(api_keys) > 0
        assert count(usage_events) == done["events"] > 1000
        rollup_total = conn.scalar(sa.select(sa.func.sum(usage_daily.c.requests)))
    assert rollup_total == done["events"]  # the rollups were written by the ledger, with the events


def test_demo_is_deterministic_for_a_seed_and_refuses_a_second_region(tmp_path, settings):
    from aiplus.storage.testing import scratch_database

    def rollups(seed, name):
        (tmp_path / name).mkdir()
        with scratch_database("sqlite", tmp_path / name) as (engine, _):
            seed_demo(engine, settings, orgs=150, months=6, seed=seed, today=TODAY)
            with engine.connect() as conn:
                rows = conn.execute(sa.select(usage_daily).order_by(*usage_daily.primary_key.columns)).all()
                register = conn.execute(sa.select(register_orgs).order_by(register_orgs.c.id)).all()
            with pytest.raises(ValueError, match="already holds a demo region"):
                seed_demo(engine, settings, orgs=150, months=6, seed=seed, today=TODAY)
            return rows, register

    assert rollups(5, "a") == rollups(5, "b")
    assert rollups(6, "c")[0] != rollups(5, "d")[0]


def test_report_shape_and_definition(demo, settings):
    engine, _ = demo
    with engine.connect() as conn:
        report = build_report(conn, settings.adoption, as_of=TODAY)
    data = json.loads(json.dumps(report.as_dict()))
    assert data["as_of"] == "2026-10-31" and data["by"] == "sector"
    assert "10 successful requests in the 30 days" in data["definition"]["rule"]
    assert "register" in data["definition"]["denominator"]
    assert data["targets"] == [{"date": "2027-12-31", "level": 0.7}, {"date": "2030-12-31", "level": 0.9}]
    assert [g["key"] for g in data["groups"]] == [
        s for s in SECTORS if s in {g["key"] for g in data["groups"]}
    ]
    total = data["total"]
    assert total["orgs"] == 400 == sum(g["orgs"] for g in data["groups"])
    assert total["adopting"] == sum(g["adopting"] for g in data["groups"])
    assert 0 < total["penetration"] < 1 and total["penetration"] == total["adopting"] / 400
    assert len(total["series"]) == 12 and total["series"][-1]["month"] == "2026-10"
    # the latest month is always measured in full; settled months come in full from the stored window sums
    assert total["series"][-1]["agent_penetration"] is not None
    assert total["series"][0]["agent_penetration"] is not None
    assert total["agent_penetration"] is not None and total["intensity_tokens_per_employee"] > 0
    forecast = total["forecast"]
    assert forecast["model"] == "sum of parts" and "weighted" in data["reconciliation"]
    assert any(set(g["forecast"]["holdout_rmse"]) == {"bass", "logistic"} for g in data["groups"])
    assert total["agents_forecast"]["model"] == "sum of parts"
    for outlook in forecast["targets"]:
        assert outlook["status"] in STATUSES
        assert outlook["low"] <= outlook["projected"] <= outlook["high"]
        assert outlook["extra_per_month"] >= 0 and outlook["months_left"] > 0
    assert forecast["band"][-1]["month"] == "2030-12"
    for g in data["groups"]:
        assert {t["status"] for t in g["forecast"]["targets"]} <= STATUSES


def test_table_and_csv_carry_the_definition(demo, settings):
    engine, _ = demo
    with engine.connect() as conn:
        report = build_report(conn, settings.adoption, by="size", as_of=TODAY, resamples=20)
    # size classes are reconciled to the sectors' total: the same national line, and they add up to it
    with engine.connect() as conn:
        by_sector = build_report(conn, settings.adoption, as_of=TODAY, resamples=20, backtest_origins=0)
    assert [b[1] for b in report.total.forecast.band] == [b[1] for b in by_sector.total.forecast.band]
    orgs = report.total.latest.orgs
    for i, (_, point, _, _) in enumerate(report.total.forecast.band):
        parts = sum(g.latest.orgs / orgs * g.forecast.band[i][1] for g in report.groups)
        assert parts == pytest.approx(point, abs=1e-9)
    console = Console(record=True, width=300)
    console.print(to_rich_table(report))
    text = console.export_text()
    assert "micro" in text and "Denominator: all organizations in the register" in text
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert [r["size"] for r in rows][-1] == "all"
    assert {"penetration", "status_2027", "extra_orgs_per_month_2030", "definition"} <= set(rows[0])
    assert {
        "agents_status_2030",
        "agents_projected_2027",
        "backtest_mae_pp_6m",
        "agents_backtest_coverage_6m",
    } <= set(rows[0])
    assert all("successful requests" in r["definition"] for r in rows)


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_chart_files(demo, settings, tmp_path, suffix):
    engine, _ = demo
    with engine.connect() as conn:
        report = build_report(conn, settings.adoption, as_of=TODAY, resamples=20)
    path = write_chart(report, tmp_path / f"adoption.{suffix}")
    data = path.read_bytes()
    if suffix == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    else:
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    with pytest.raises(ValueError, match="must end in"):
        write_chart(report, tmp_path / "adoption.jpg")


def test_cli_registry_report_chart_and_demo(tmp_path, capsys):
    config = tmp_path / "aiplus.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nsecret = "s"\n')
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,sector,region,employees\nx1,A,ict,N,3\nx2,B,space,N,3\nx1,C,ict,N,x\n")
    assert main(["registry", "import", str(bad), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "line 3: unknown sector 'space'" in err and "line 4:" in err and "nothing imported" in err
    good = tmp_path / "good.csv"
    good.write_text("id,name,sector,region,employees\nx1,A,ict,N,3\nx2,B,finance,S,300\n")
    assert main(["registry", "import", str(good), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "2 row(s) read, 2 added" in out and "0 tenant organization(s) are in the register" in out
    obs = tmp_path / "obs.csv"
    obs.write_text("sector,date,penetration,source\nall,2025-12-31,20%,Eurostat\n")
    assert main(["registry", "observations", str(obs), "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["demo", "seed", "--orgs", "200", "--months", "8", "--config", str(config)]) == 0
    assert "200 register orgs" in capsys.readouterr().out
    assert main(["adoption", "report", "--format", "json", "--no-band", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["orgs"] == 202 and "band" not in data["total"]["forecast"]
    assert data["total"]["observations"][0]["penetration"] == 0.2
    assert main(["adoption", "report", "--by", "region", "--format", "csv", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("region,orgs,adopting,penetration")
    assert main(["adoption", "report", "--config", str(config)]) == 0
    assert "Penetration = adopting / register organizations" in capsys.readouterr().out
    assert main(["adoption", "chart", str(tmp_path / "a.svg"), "--config", str(config)]) == 0
    assert (tmp_path / "a.svg").stat().st_size > 0


def test_admin_adoption_endpoint(demo, settings, tmp_path):
    engine, _ = demo
    settings = replace(
        settings,
        database_url=engine.url.render_as_string(hide_password=False),
        data_dir=str(tmp_path / "data"),
        admin_token="test-admin-token",
        models=(),
    )
    app = create_app(settings, say=None)
    with TestClient(app, headers={"Authorization": "Bearer test-admin-token"}) as client:
        body = client.get(
            "/admin/adoption", params={"by": "region", "as_of": "2026-11-15", "band": "false"}
        ).json()
        assert body["by"] == "region" and body["as_of"] == "2026-10-31"
        full = client.get("/admin/adoption", params={"by": "region", "as_of": "2026-11-15"}).json()
        for g in full["groups"]:  # reconciled regions start at their last value, only rise, stay shares
            points = [b["point"] for b in g["forecast"]["band"]]
            assert points[0] == g["penetration"] and max(points) <= 1 + 1e-12
            assert all(b >= a - 1e-12 for a, b in zip(points, points[1:], strict=False)), g["key"]
        assert body["definition"]["min_requests"] == 10 and body["groups"]
        assert "band" not in body["total"]["forecast"]
        lean = client.get("/admin/adoption", params={"series": "false", "as_of": "2026-11-15"}).json()
        assert "series" not in lean["total"] and lean["total"]["penetration"] == body["total"]["penetration"]
        quick = client.get("/admin/adoption", params={"as_of": "2026-11-15", "backtest": "0"}).json()
        assert quick["backtest"] == {} and quick["total"]["forecast"]["backtest"] is None
        assert body["backtest"]["penetration"]["levels"]["all"]["n_6m"] > 0
        wrong = client.get("/admin/adoption", params={"backtest": "-1"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "backtest"
        bad = client.get("/admin/adoption", params={"by": "planet"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"
        assert client.get("/admin/adoption", params={"as_of": "soon"}).status_code == 400
        assert client.get("/admin/adoption", headers={"Authorization": ""}).status_code == 401


def test_demo_total_is_the_sum_of_its_sectors_and_never_contradicts_them(demo, settings):
    engine, _ = demo
    with engine.connect() as conn:
        report = build_report(conn, settings.adoption, as_of=TODAY, resamples=100, backtest_origins=3)
    data = json.loads(json.dumps(report.as_dict()))
    groups, total = data["groups"], data["total"]
    w = {g["key"]: g["orgs"] / total["orgs"] for g in groups}
    for name in ("forecast", "agents_forecast"):
        band = total[name]["band"]
        assert band[0]["month"] == "2026-10" and band[-1]["month"] == "2030-12"
        for i, month in enumerate(band):  # every month, the point and each path-derived figure add up
            parts = [g[name]["band"][i] for g in groups]
            assert month["point"] == pytest.approx(
                sum(w[g["key"]] * p["point"] for g, p in zip(groups, parts, strict=True)), abs=1e-9
            )
            assert min(p["low"] for p in parts) - 1e-9 <= month["low"] <= month["point"] <= month["high"]
            assert month["high"] <= max(p["high"] for p in parts) + 1e-9
        months = [b["month"] for b in band]
        for i, outlook in enumerate(total[name]["targets"]):
            at = months.index(outlook["date"][:7])
            parts = [g[name]["band"][at] for g in groups]
            assert outlook["projected"] == pytest.approx(
                sum(w[g["key"]] * p["point"] for g, p in zip(groups, parts, strict=True))
            )
            assert (
                outlook["low"]
                <= sum(w[g["key"]] * p["high"] for g, p in zip(groups, parts, strict=True)) + 1e-9
            )
            if all(g[name]["targets"][i]["status"] == "off track" for g in groups):
                assert outlook["status"] != "on track"
    # agent use is a part of use, and so is its forecast
    for g in [*groups, total]:
        for a, u in zip(g["agents_forecast"]["band"], g["forecast"]["band"], strict=True):
            assert a["point"] <= u["point"] + 1e-9
    # each forecast carries its back-tested error
    for g in [*groups, total]:
        assert g["forecast"]["backtest"]["n_6m"] == 3 and "in band" in g["forecast"]["backtest"]["summary"]
    assert data["backtest"]["penetration"]["levels"]["all"]["n_6m"] == 3
    console = Console(record=True, width=400)
    console.print(to_rich_table(report))
    text = console.export_text()
    assert "back-test error" in text and "agents 2030" in text


@pytest.mark.parametrize("by", ["sector", "region"])
def test_an_empty_register_gives_an_empty_report_not_an_error(sqlite_db, settings, by):
    with sqlite_db.connect() as conn:
        report = build_report(conn, settings.adoption, by=by, as_of=TODAY)
    assert report.groups == [] and report.total.latest.orgs == 0
    assert report.total.forecast.model is None and report.total.forecast.note == "the register is empty"
    assert {t.status for t in report.total.forecast.targets} == {"insufficient data"}


def test_usage_only_in_the_current_month_gives_a_report_without_months(sqlite_db, settings, tmp_path):
    from datetime import UTC, datetime

    from aiplus.adoption.register import insert_register
    from aiplus.metering.ledger import UsageEvent, write_events

    with sqlite_db.begin() as conn:
        insert_register(conn, [{"id": "o1", "name": "A", "sector": "ict", "region": "N", "employees": 3}])
        event = UsageEvent(
            "r1", "o1", None, "m", "chat", 1, 1, "ok", True, datetime(2026, 11, 3, tzinfo=UTC), 1, 1, 1
        )
        write_events(conn, [event])
    with sqlite_db.connect() as conn:
        report = build_report(conn, settings.adoption, as_of=TODAY)  # November is not complete on the 15th
    assert report.months == [] and report.total.latest.orgs == 0
    assert report.total.forecast.band[0][0] == date(2026, 10, 31)
    assert {t.status for t in report.total.forecast.targets} == {"insufficient data"}
    assert write_chart(report, tmp_path / "empty.svg").stat().st_size > 0
