from datetime import UTC, datetime

import pytest

from aiplus.metering.ledger import UsageEvent, write_events
from aiplus.tenancy.bootstrap import SECRETS_FILE

pytestmark = pytest.mark.anyio


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def make_org(client, org_id: str, **extra) -> str:
    r = await client.post(
        "/admin/orgs",
        json={"name": org_id.upper(), "sector": "ict", "id": org_id, **extra},
        headers=client.admin_headers,
    )
    assert r.status_code == 201, r.text
    r = await client.post(f"/admin/orgs/{org_id}/keys", json={"name": "k"}, headers=client.admin_headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_first_start_keeps_admin_token_and_demo_curl_out_of_the_log(stack):
    """stdout is no terminal here (as under systemd or in a container): the secrets go to a 0600 file."""
    said = "\n".join(stack.said)
    assert stack.services.admin_token not in said and stack.services.demo_key not in said
    path = stack.services.settings.data_path / SECRETS_FILE
    assert str(path) in said and path.stat().st_mode & 0o777 == 0o600
    written = path.read_text()
    assert stack.services.admin_token in written
    assert "curl http://127.0.0.1:8000/v1/chat/completions" in written and stack.services.demo_key in written
    r = await stack.get("/v1/usage", headers=bearer(stack.services.demo_key))
    assert r.status_code == 200 and r.json()["data"] == []


async def test_admin_routes_accept_only_the_admin_token(stack):
    key = (await make_org(stack, "a"))["key"]
    for headers, status, code in [
        ({}, 401, "missing_api_key"),
        (bearer("aipadm_wrong"), 401, "invalid_api_key"),
        (bearer(key), 403, "admin_only"),
    ]:
        r = await stack.get("/admin/orgs", headers=headers)
        assert r.status_code == status
        assert r.json()["error"]["code"] == code and set(r.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    r = await stack.get("/admin/orgs", headers=stack.admin_headers)
    assert [o["id"] for o in r.json()["data"]] == ["a", "demo"]


async def test_org_crud_and_errors(stack):
    await make_org(stack, "clinic", employees=60, tier="lifeline")
    r = await stack.get("/admin/orgs/clinic", headers=stack.admin_headers)
    assert r.json()["size_class"] == "medium" and r.json()["tier"] == "lifeline"
    r = await stack.patch("/admin/orgs/clinic", json={"tier": "batch"}, headers=stack.admin_headers)
    assert r.status_code == 200 and r.json()["tier"] == "batch"
    r = await stack.post("/admin/orgs", json={"name": "X", "sector": "mining"}, headers=stack.admin_headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "sector"
    r = await stack.post(
        "/admin/orgs", json={"name": "X", "sector": "ict", "id": "clinic"}, headers=stack.admin_headers
    )
    assert r.status_code == 409
    r = await stack.get("/admin/orgs/nope", headers=stack.admin_headers)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = await stack.get("/admin/orgs/nope/keys", headers=stack.admin_headers)
    assert r.status_code == 404


async def test_revoked_key_gets_401_at_once(stack):
    created = await make_org(stack, "a")
    assert (await stack.get("/v1/usage", headers=bearer(created["key"]))).status_code == 200  # now cached
    r = await stack.delete(f"/admin/keys/{created['id']}", headers=stack.admin_headers)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = await stack.get("/v1/usage", headers=bearer(created["key"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = await stack.delete("/admin/keys/key_nope", headers=stack.admin_headers)
    assert r.status_code == 404


async def test_org_sees_only_its_own_usage_and_keys(stack):
    a = await make_org(stack, "a")
    b = await make_org(stack, "b")
    now = datetime.now(UTC)
    events = [
        UsageEvent(f"{org}-{i}", org, None, "m", "chat", 10, 1, "ok", False, now, 1, 2, 5)
        for org, n in (("a", 3), ("b", 5))
        for i in range(n)
    ]
    with stack.services.db.begin() as conn:
        write_events(conn, events)
    r = await stack.get("/v1/usage", params={"org_id": "b"}, headers=bearer(a["key"]))
    assert r.status_code == 200
    assert {row["org_id"] for row in r.json()["data"]} == {"a"} and r.json()["totals"]["requests"] == 3
    r = await stack.get("/v1/usage", params={"group_by": "month"}, headers=bearer(b["key"]))
    assert r.json()["data"][0]["period"] == now.strftime("%Y-%m") and r.json()["totals"]["requests"] == 5
    assert (await stack.get("/admin/orgs/b/keys", headers=bearer(a["key"]))).status_code == 403
    r = await stack.get("/admin/usage", params={"sector": "ict"}, headers=stack.admin_headers)
    assert r.json()["totals"]["requests"] == 8 and r.json()["totals"]["cost_micros"] == 40
    r = await stack.get(
        "/admin/usage",
        params={"org_id": "b", "start": "2000-01-01", "end": "2000-01-02"},
        headers=stack.admin_headers,
    )
    assert r.json()["data"] == []
    r = await stack.get("/admin/usage", params={"group_by": "week"}, headers=stack.admin_headers)
    assert r.status_code == 400
    keys = (await stack.get("/admin/orgs/a/keys", headers=stack.admin_headers)).json()["data"]
    assert [k["id"] for k in keys] == [a["id"]] and "digest" not in keys[0] and "key" not in keys[0]


async def test_tier_change_reaches_cached_principals_at_once(stack):
    created = await make_org(stack, "a")
    auth = stack.services.authenticator
    assert (await auth.authenticate(created["key"])).tier == "standard"
    r = await stack.patch("/admin/orgs/a", json={"tier": "lifeline"}, headers=stack.admin_headers)
    assert r.status_code == 200
    principal = await auth.authenticate(created["key"])
    assert (principal.tier, principal.weight) == ("lifeline", 2.0)
