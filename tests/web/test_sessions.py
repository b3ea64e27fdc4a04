"""The web UI's security over real HTTP: cookie flags, CSRF, no secret in URLs or logs, one org per portal,
the sign-in throttle, the Content-Security-Policy."""

from __future__ import annotations

import base64
import re
import time

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_TOKEN, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("web-sessions"))
    yield server
    server.stop()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def admin_client(
    server, token: str = ADMIN_TOKEN, headers: dict | None = None
) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=server.url, timeout=30, headers=headers or {})
    page = client.get("/admin/ui/signin")
    r = client.post("/admin/ui/signin", data={"csrf": _csrf(page.text), "token": token})
    return client, r


def portal_client(server, key: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/portal")
    r = client.post("/portal/signin", data={"csrf": _csrf(page.text), "token": key})
    return client, r


def test_session_cookie_is_httponly_strict_scoped_and_secure_behind_tls(server):
    client, r = admin_client(server)
    assert r.status_code == 303 and r.headers["location"] == "/admin/ui/live"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("aiplus_admin="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin/ui" in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never come back
    assert ADMIN_TOKEN not in cookie
    tls = httpx.Client(base_url=server.url, timeout=30)
    form = tls.get("/admin/ui/signin")  # as if a TLS-terminating proxy said so on the sign-in:
    r = tls.post(
        "/admin/ui/signin",
        data={"csrf": _csrf(form.text), "token": ADMIN_TOKEN},
        headers={"x-forwarded-proto": "https"},
    )
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("aiplus_admin="))
    assert "Secure" in cookie
    page = client.get("/admin/ui/orgs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text, "no inline script"
    assert not re.search(r"<[^>]+\son[a-z]+=", page.text), "no inline event handlers"


def test_every_form_needs_its_csrf_token(server):
    client, _ = admin_client(server)
    token = _csrf(client.get("/admin/ui/orgs").text)
    for data in (
        {"name": "Forged Org", "sector": "trade"},
        {"name": "Forged Org", "sector": "trade", "csrf": "x"},
    ):
        r = client.post("/admin/ui/orgs", data=data)
        assert r.status_code == 403
    assert "forged-org" not in client.get("/admin/ui/orgs").text
    r = client.post("/admin/ui/orgs", data={"name": "Real Org", "sector": "trade", "csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/admin/ui/orgs/real-org"
    # a token from another session does not pass either
    other, _ = admin_client(server)
    assert other.post("/admin/ui/orgs/real-org/keys", data={"name": "x", "csrf": token}).status_code == 403
    # nor does a sign-in without the sign-in form's token
    fresh = httpx.Client(base_url=server.url, timeout=30)
    r = fresh.post("/admin/ui/signin", data={"token": ADMIN_TOKEN})
    assert r.status_code == 403 and "aiplus_admin" not in r.headers.get("set-cookie", "")


def test_the_portal_shows_one_organization_and_a_forged_cookie_shows_none(server):
    a = server.new_org("Alpha Farm", sector="agriculture")
    b = server.new_org("Beta Works", sector="manufacturing")
    for org in (a, b):
        r = httpx.post(
            f"{server.v1}/embeddings",
            headers={"authorization": f"Bearer {org['key']}"},
            json={"model": "smollm2-135m-instruct", "input": "hello " + org["org"]["id"]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    with server.admin() as admin:
        r = admin.post(f"/admin/orgs/{b['org']['id']}/keys", json={"name": "beta-only-key"})
        assert r.status_code == 201
    client, r = portal_client(server, a["key"])
    assert r.status_code == 303

    def page() -> str:
        text = client.get("/portal").text
        # its usage reached the rollups: the usage table's total row (the model's name alone is also in the snippets)
        assert re.search(r'<tfoot>.*?<td class="num">([\d,]+)</td>', text, re.S)
        return text

    deadline = time.monotonic() + 30
    while True:
        try:
            text = page()
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert "Alpha Farm" in text and a["org"]["id"] in text
    assert "Beta Works" not in text and b["org"]["id"] not in text and "Test School" not in text
    assert a["key"] not in text and "beta-only-key" not in text
    requests_total = re.search(r'<tfoot>.*?<td class="num">([\d,]+)</td>', text, re.S).group(1)
    assert requests_total == "1", "only its own call is counted"

    printable = client.get("/portal/statement")
    assert (
        printable.status_code == 200 and "Alpha Farm" in printable.text and "Beta Works" not in printable.text
    )
    assert "script" not in printable.headers["content-security-policy"].replace("default-src 'none'", "")
    assert httpx.get(f"{server.url}/admin/ui/statements/print", timeout=30).status_code == 303

    # a session cookie edited to name the other org is not a session
    cookie = client.cookies.get("aiplus_portal")
    body, _, sig = cookie.rpartition(".")
    data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["org_id"] = b["org"]["id"]
    forged = base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=") + "." + sig
    other = httpx.Client(base_url=server.url, timeout=30, cookies={"aiplus_portal": forged})
    text = other.get("/portal").text
    assert "Beta Works" not in text and "Sign in" in text

    # the portal's session is no admin session, and the admin token is no org key
    assert client.get("/admin/ui/orgs").headers.get("location") == "/admin/ui/signin"
    _, r = portal_client(server, ADMIN_TOKEN)
    assert r.status_code == 401


def test_no_token_or_key_in_urls_or_the_server_log(server):
    org = server.new_org("Log Check", sector="finance")
    client, r = admin_client(server)
    assert ADMIN_TOKEN not in r.headers["location"]
    token = _csrf(client.get("/admin/ui/orgs/log-check").text)
    r = client.post("/admin/ui/orgs/log-check/keys", data={"name": "k2", "csrf": token})
    assert r.status_code == 201 and "no-store" in r.headers["cache-control"]
    new_key = re.search(r'id="new-key"[^>]*>(aip_[^<]+)<', r.text).group(1)
    _, r = portal_client(server, org["key"])
    assert org["key"] not in r.headers["location"]
    # a token in the query string signs nobody in
    r = httpx.get(f"{server.url}/admin/ui/live?token={ADMIN_TOKEN}", timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/admin/ui/signin"
    log = server.log.read_text()
    for secret in (ADMIN_TOKEN, org["key"], new_key):
        assert secret not in log


def test_wrong_sign_ins_are_slowed_then_refused_for_a_while(tmp_path):
    server = start_server(tmp_path)  # its own server: the lock covers this client address
    try:
        times = []
        for _ in range(10):
            started = time.monotonic()
            _, r = admin_client(server, "aipadm_wrong")
            times.append(time.monotonic() - started)
            assert r.status_code == 401 and "aiplus_admin" not in r.headers.get("set-cookie", "")
        assert times[-1] > times[0] + 1.0, f"later wrong sign-ins are slowed: {times}"
        _, r = admin_client(server)  # now even the right token is refused
        assert r.status_code == 429 and "Too many wrong sign-ins" in r.text
        assert "aiplus_admin" not in r.headers.get("set-cookie", "")
        _, r = portal_client(server, "aip_wrong")
        assert r.status_code == 429
    finally:
        server.stop()


def test_org_filters_by_region_and_size_in_the_page_and_the_api(server):
    server.new_org("Fjord Fishery", sector="agriculture", region="West Fjords", employees=7)
    server.new_org("Fjord Shipyard", sector="manufacturing", region="West Fjords", employees=400)
    server.new_org("Inland Mill", sector="manufacturing", region="Midlands", employees=8)
    with server.admin() as admin:
        found = admin.get("/admin/orgs", params={"region": "West Fjords", "size_class": "micro"}).json()[
            "data"
        ]
    assert [o["id"] for o in found] == ["fjord-fishery"]
    client, _ = admin_client(server)
    page = client.get("/admin/ui/orgs", params={"region": "West Fjords", "size_class": "large"}).text
    assert "fjord-shipyard" in page and "fjord-fishery" not in page and "inland-mill" not in page
    assert '<option value="Midlands"' in page  # the regions in use are the filter's choices


def test_sign_out_ends_the_session_and_a_new_admin_token_ends_them_all(tmp_path):
    server = start_server(tmp_path)
    try:
        client, _ = admin_client(server)
        token = _csrf(client.get("/admin/ui/orgs").text)
        assert client.post("/admin/ui/signout", data={"csrf": token}).status_code == 303
        assert client.get("/admin/ui/orgs").headers.get("location") == "/admin/ui/signin"
        kept, _ = admin_client(server)
        cookie = kept.cookies.get("aiplus_admin")
        assert kept.get("/admin/ui/orgs").status_code == 200
        port = server.url.rsplit(":", 1)[1]
        server.stop()
        server = start_server(
            tmp_path, env={"AIPLUS_ADMIN_TOKEN": "another-admin-token-987654321"}, port=int(port)
        )
        r = httpx.get(f"{server.url}/admin/ui/orgs", cookies={"aiplus_admin": cookie}, timeout=30)
        assert r.status_code == 303 and r.headers["location"] == "/admin/ui/signin"
    finally:
        server.stop()


def test_a_refused_form_says_why_and_keeps_what_was_typed(server):
    client, _ = admin_client(server)
    token = _csrf(client.get("/admin/ui/orgs").text)
    r = client.post(
        "/admin/ui/orgs", data={"csrf": token, "name": "Count Less", "sector": "trade", "employees": "many"}
    )
    assert r.status_code == 400 and "employees must be a whole number" in r.text
    assert 'value="Count Less"' in r.text and 'value="many"' in r.text
    r = client.post("/admin/ui/orgs", data={"csrf": token, "name": "Odd", "sector": "space"})
    assert r.status_code == 400 and "unknown sector" in r.text
    r = client.post("/admin/ui/orgs/no-such-org/tier", data={"csrf": token, "tier": "batch"})
    assert r.status_code == 404 and "no organization" in r.text


def test_a_usage_filter_that_is_not_one_is_a_400_page_that_says_why(server):
    client, _ = admin_client(server)
    page = client.get("/admin/ui/usage", params={"service_tier": "turbo"})
    assert page.status_code == 400 and "service tier must be one of priority, default, flex" in page.text
    page = client.get("/admin/ui/usage", params={"start": "2026-13-01"})
    assert page.status_code == 400
    assert client.get("/admin/ui/usage", params={"service_tier": "flex"}).status_code == 200
