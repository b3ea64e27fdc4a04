"""Vouchers over HTTP on a real `aiplus serve` (simulated engine), and the `aiplus vouchers` CLI on its database:
real calls metered, billed, and paid in part by a voucher."""

import subprocess
import sys
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
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("vouchers"), config=CONFIG)
    yield server
    server.stop()


def _own(server, key: str, path: str = "statements") -> httpx.Response:
    return httpx.get(f"{server.v1}/billing/{path}", headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_programmes_vouchers_statements_and_claims_over_http(server, tmp_path):
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    next_year = (yesterday + timedelta(days=366)).isoformat()
    firm = server.new_org("Small Firm", tier="standard", sector="manufacturing", employees=12)
    other = server.new_org("Other Firm", tier="standard", sector="manufacturing", employees=12)
    programme = {
        "id": "city",
        "funder": "City",
        "pool_micros": 1_000_000_000,
        "share": "0.5",
        "valid_from": yesterday.isoformat(),
        "valid_until": next_year,
        "sizes": ["small"],
    }
    with server.admin() as admin:
        r = admin.post(
            "/admin/tariffs", json={"document": example_tariff_text(), "effective_from": str(yesterday)}
        )
        assert r.status_code == 201, r.text
        r = admin.post("/admin/voucher-programmes", json={**programme, "share": "1.5"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "share"
        r = admin.post("/admin/voucher-programmes", json=programme)
        assert r.status_code == 201, r.text
        assert admin.post("/admin/voucher-programmes", json=programme).status_code == 409
        voucher = {"programme": "city", "org_id": firm["org"]["id"], "amount_micros": 10_000_000_000}
        r = admin.post("/admin/vouchers", json={**voucher, "programme": "nowhere", "expires_on": next_year})
        assert r.status_code == 404 and r.json()["error"]["param"] == "programme"
        r = admin.post(
            "/admin/vouchers", json={**voucher, "expires_on": next_year, "valid_from": str(yesterday)}
        )
        assert r.status_code == 201, r.text
        voucher_id = r.json()["id"]
    for key in (firm["key"], other["key"]):
        for _ in range(3):
            r = httpx.post(
                f"{server.v1}/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16},
                timeout=60,
            )
            assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = _own(server, firm["key"]).json()["data"][0]
        if doc["tokens"] and doc["vouchers"]["amount_micros"]:
            break
        time.sleep(0.2)
    net = doc["charge_micros"] - doc["subsidy"]["amount_micros"]
    assert net > 0 and doc["vouchers"]["amount_micros"] <= net // 2
    assert doc["vouchers"]["amount_micros"] >= net // 2 - len(doc["vouchers"]["pieces"])  # floor per piece
    assert doc["amount_due_micros"] + doc["vouchers"]["amount_micros"] == net
    assert [v["id"] for v in _own(server, firm["key"], "vouchers").json()["data"]] == [voucher_id]
    assert _own(server, other["key"], "vouchers").json()["data"] == []
    assert _own(server, other["key"]).json()["data"][0]["vouchers"]["amount_micros"] == 0
    with server.admin() as admin:
        listed = admin.get("/admin/vouchers", params={"programme": "city"}).json()["data"]
        assert [v["org_id"] for v in listed] == [firm["org"]["id"]]
        report = admin.get("/admin/voucher-programmes/city", params={"month": doc["month"]}).json()
        assert report["disbursed_micros"] == doc["vouchers"]["amount_micros"]
        pack = admin.get(f"/admin/voucher-programmes/city/claims/{doc['month']}").json()
        assert pack["manifest"]["totals"]["share_micros"] == doc["vouchers"]["amount_micros"]
        assert set(pack["files"]) == {"manifest.json", "usage.csv", f"statements/{firm['org']['id']}.json"}
        assert admin.get("/admin/voucher-programmes/nowhere").status_code == 404
        r = admin.post(f"/admin/vouchers/{voucher_id}/revoke", json={"on": "2020-01-01"})
        assert r.status_code == 200 and r.json()["revoked_on"] == "2020-01-01"
        paths = admin.get("/openapi.json").json()["paths"]
    assert {
        "/v1/billing/vouchers",
        "/admin/vouchers",
        "/admin/voucher-programmes",
        "/admin/voucher-programmes/{programme_id}/claims/{month}",
    } <= set(paths)
    assert (
        httpx.get(
            f"{server.url}/admin/vouchers", headers={"authorization": f"Bearer {firm['key']}"}
        ).status_code
        == 403
    )
    # The CLI on the same database: the claim pack written, then verified from its files alone.
    cfg = next(server.data_dir.parent.glob("aiplus-*.toml"))
    cli = [sys.executable, "-m", "aiplus.cli"]
    out = subprocess.run(
        [
            *cli,
            "bill",
            "claims",
            "--programme",
            "city",
            "--month",
            doc["month"],
            "--out",
            str(tmp_path / "c"),
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [*cli, "bill", "claims", "--verify", str(tmp_path / "c")], capture_output=True, text=True
    )
    assert out.returncode == 0 and "verified" in out.stdout, out.stderr
    out = subprocess.run(
        [
            *cli,
            "vouchers",
            "issue",
            "--programme",
            "city",
            "--org",
            "nobody",
            "--amount",
            "1",
            "--expires",
            next_year,
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "no organization 'nobody'" in out.stderr
    out = subprocess.run(
        [
            *cli,
            "vouchers",
            "programme",
            "add",
            "x",
            "--funder",
            "F",
            "--pool",
            "1",
            "--share",
            "1.01",
            "--from",
            "2027-01-01",
            "--until",
            "2027-12-31",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "share must be at most 1" in out.stderr
