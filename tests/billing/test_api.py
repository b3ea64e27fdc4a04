"""Billing over HTTP on a real `aiplus serve` (simulated engine): real calls metered, then billed."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aiplus.billing.versions import example_tariff_text
from tests.conftest import start_server

CONFIG = """
[[models]]
id = "sim"
engine = "simulated"
max_concurrency = 8

[billing.monthly_income]
Capital = 12000000000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("billing"), config=CONFIG)
    yield server
    server.stop()


def _chat(server, key: str, n: int = 1, **extra) -> None:
    for _ in range(n):
        r = httpx.post(
            f"{server.v1}/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={
                "model": "sim",
                "messages": [{"role": "user", "content": "hello there"}],
                "max_tokens": 16,
                **extra,
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text


def _own(server, key: str, **params) -> httpx.Response:
    return httpx.get(
        f"{server.v1}/billing/statements",
        headers={"authorization": f"Bearer {key}"},
        params=params,
        timeout=30,
    )


def test_statements_balance_and_tariffs_over_http(server):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    with server.admin() as admin:
        r = admin.post(
            "/admin/tariffs", json={"document": example_tariff_text(), "effective_from": yesterday}
        )
        assert r.status_code == 201, r.text
        version = r.json()
        r = admin.post(
            "/admin/tariffs", json={"document": example_tariff_text(), "effective_from": yesterday}
        )
        assert r.status_code == 409 and r.json()["error"]["param"] == "from"
        bad = example_tariff_text().replace("input_per_mtok = 100000", "input_per_mtok = -1")
        r = admin.post("/admin/tariffs", json={"document": bad, "effective_from": "2099-01-01"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prices[0].input_per_mtok"
        bad = example_tariff_text().replace("flex = 0.50", "turbo = 0.50")
        r = admin.post("/admin/tariffs", json={"document": bad, "effective_from": "2099-01-01"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "service_tier.turbo"
        assert "unknown service tier 'turbo'" in r.json()["error"]["message"]
        listed = admin.get("/admin/tariffs").json()["data"]
        assert [v["id"] for v in listed] == [version["id"]]
        assert admin.get("/admin/tariffs/current").json()["document"] == example_tariff_text()
    school = server.new_org("School", tier="lifeline", sector="education")
    firm = server.new_org("Firm", tier="standard", sector="manufacturing")
    _chat(server, school["key"], 2)
    _chat(server, firm["key"], 3)
    _chat(server, firm["key"], 1, service_tier="flex")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mine = _own(server, firm["key"]).json()["data"]
        if mine and len(mine[0]["charge_by_service_tier"]) == 2:
            break
        time.sleep(0.2)
    assert [d["org"]["id"] for d in mine] == [firm["org"]["id"]]  # only the caller's own organization
    firm_doc = mine[0]
    assert firm_doc["charge_micros"] > 0 and firm_doc["amount_due_micros"] == firm_doc["charge_micros"]
    assert sum(line["amount_micros"] for line in firm_doc["lines"]) == firm_doc["charge_micros"]
    # the example tariff prices flex at half: its one request is billed apart from the three default ones
    by_tier = {p["service_tier"]: p for p in firm_doc["charge_by_service_tier"]}
    assert list(by_tier) == ["default", "flex"] and 0 < by_tier["flex"]["amount_micros"]
    flex, default = by_tier["flex"], by_tier["default"]
    assert flex["amount_micros"] * default["tokens"] < default["amount_micros"] * flex["tokens"]  # per token
    school_doc = _own(server, school["key"]).json()["data"][0]
    assert school_doc["tokens"] > 0 and school_doc["lifeline_tokens"] == school_doc["tokens"]
    assert school_doc["amount_due_micros"] == 0  # inside the lifeline block
    assert _own(server, firm["key"], format="csv").text.startswith("org_id,month,item")
    assert "<article>" in _own(server, firm["key"], format="html").text
    r = _own(server, firm["key"], month="2026-13")
    assert r.status_code == 400 and r.json()["error"]["param"] == "month"
    assert _own(server, "aip_not-a-key").status_code == 401
    with server.admin() as admin:
        every = admin.get("/admin/billing/statements").json()["data"]
        assert {d["org"]["id"] for d in every} >= {school["org"]["id"], firm["org"]["id"]}
        assert admin.get("/admin/billing/statements", params={"org_id": "nobody"}).status_code == 404
        report = admin.get("/admin/billing/balance").json()
        assert report["totals"]["billed_micros"] == sum(d["amount_due_micros"] for d in every)
        assert report["affordability"]["regions"][0]["region"] == "Capital"
        assert "month,section" in admin.get("/admin/billing/balance", params={"format": "csv"}).text
        paths = admin.get("/openapi.json").json()["paths"]
    assert {
        "/v1/billing/statements",
        "/admin/billing/statements",
        "/admin/billing/balance",
        "/admin/tariffs",
    } <= set(paths)
    r = httpx.get(f"{server.url}/admin/tariffs", headers={"authorization": f"Bearer {firm['key']}"})
    assert r.status_code == 403
