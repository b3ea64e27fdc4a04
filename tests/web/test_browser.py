"""The control room and the portal in real Chromium: what a new operator and a new organization do first."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from openai import OpenAI
from playwright.sync_api import expect

from tests.conftest import ADMIN_TOKEN, DEFAULT_MODEL
from tests.web.conftest import shot

PAGES = (
    "/admin/ui/live",
    "/admin/ui/orgs",
    "/admin/ui/usage",
    "/admin/ui/statements",
    "/admin/ui/balance",
    "/admin/ui/adoption",
    "/admin/ui/models",
)


def last_month() -> str:
    first = datetime.now(UTC).date().replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


def sign_in(page, url: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{url}/admin/ui")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def eventually(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_front_door_names_the_models_and_the_ways_in(web_server, context):
    page = context.new_page()
    page.goto(web_server.url + "/")
    expect(page.get_by_role("heading", name="aiplus", exact=True)).to_be_visible()
    expect(page.get_by_text(DEFAULT_MODEL)).to_be_visible()
    for name in ("Organization portal", "Control room", "API documentation"):
        expect(page.get_by_role("link", name=re.compile(name))).to_be_visible()
    shot(page, "front-door")
    assert context.csp_violations == []


def test_wrong_admin_token_is_refused(web_server, context):
    page = context.new_page()
    sign_in(page, web_server.url, "aipadm_not-the-token")
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    expect(page).to_have_url(re.compile(r"/admin/ui/signin$"))
    page.goto(web_server.url + "/admin/ui/orgs")
    expect(page).to_have_url(re.compile(r"/admin/ui/signin$"))  # no session was given
    assert not any(c["name"] == "aiplus_admin" for c in context.cookies())
    shot(page, "signin-refused")


def test_onboard_an_org_watch_its_calls_and_its_portal(web_server, context, browser):
    page = context.new_page()
    sign_in(page, web_server.url)
    expect(page.get_by_role("heading", name="Live")).to_be_visible()
    assert "token" not in page.url and ADMIN_TOKEN not in page.url

    # create an organization from the form
    page.get_by_role("link", name="Organizations").click()
    page.get_by_label("Name", exact=True).fill("Harbour Clinic")
    page.get_by_label("Sector", exact=True).select_option("healthcare")
    page.get_by_label("Tier", exact=True).select_option("standard")
    page.get_by_label("Region", exact=True).fill("North Coast")
    page.get_by_label("Employees").fill("42")
    page.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("heading", name=re.compile("Harbour Clinic"))).to_be_visible()
    org_id = "harbour-clinic"
    expect(page).to_have_url(re.compile(f"/admin/ui/orgs/{org_id}$"))

    # a key: its value shown once, with a copy button
    page.get_by_label("Key name").fill("production")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text().strip()
    assert key.startswith("aip_") and len(key) > 30
    assert key not in page.url
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    shot(page, "org-key-created")
    page.goto(f"{web_server.url}/admin/ui/orgs/{org_id}")
    assert key not in page.content(), "the key is shown only once"
    expect(page.locator("#keys")).to_contain_text(key[:12])

    # call the API with it; the live view shows the call without a reload
    page.goto(web_server.url + "/admin/ui/live")
    page.evaluate("window.__notReloaded = true")
    client = OpenAI(base_url=web_server.v1, api_key=key)
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert answer.usage.total_tokens > 0
    expect(page.locator("#org-shares")).to_contain_text(org_id, timeout=15_000)
    expect(page.locator("#calls")).not_to_have_text("0")
    assert page.evaluate("window.__notReloaded") is True, "the live view updated without reloading"
    shot(page, "live")

    # ... and in usage, read from the ledger's rollups
    def in_usage():
        page.goto(f"{web_server.url}/admin/ui/usage?org_id={org_id}&group_by=day")
        expect(page.locator("#usage tbody")).to_contain_text(DEFAULT_MODEL, timeout=1000)

    eventually(in_usage)
    expect(page.locator("#usage tfoot")).to_contain_text(str(answer.usage.total_tokens))
    shot(page, "usage")
    # by service tier: the call was served in the default band, none in flex
    page.get_by_label("Service tier").select_option("flex")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#usage tbody")).not_to_contain_text(DEFAULT_MODEL)
    page.get_by_label("Service tier").select_option("default")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#usage tbody")).to_contain_text(DEFAULT_MODEL)

    # change its tier
    page.goto(f"{web_server.url}/admin/ui/orgs/{org_id}")
    page.get_by_label("Tier", exact=True).select_option("lifeline")
    page.get_by_role("button", name="Change tier").click()
    expect(page.locator("#org-tier-now")).to_have_text("lifeline")

    # the portal with the new key shows this organization only
    portal = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        p = portal.new_page()
        p.goto(web_server.url + "/portal")
        p.get_by_label("One of your organization's API keys").fill(key)
        p.get_by_role("button", name="Sign in").click()
        expect(p.get_by_role("heading", name="Harbour Clinic", exact=True)).to_be_visible()
        expect(p.locator("#usage tbody")).to_contain_text(DEFAULT_MODEL)
        expect(p.locator("#keys")).to_contain_text("production")
        expect(p.locator("#snippet-python")).to_contain_text(web_server.v1)
        expect(p.locator("#snippet-curl")).to_contain_text("Authorization: Bearer $AIPLUS_API_KEY")
        expect(p.locator("#statement")).to_contain_text(
            DEFAULT_MODEL
        )  # this month's statement, its call in it
        expect(p.get_by_role("heading", name=re.compile("Harbour Clinic .* statement"))).to_be_visible()
        html = p.content()
        assert key not in html, "the portal never shows a key's value"
        for other in ("demo", "Test School", "demo-"):  # the bootstrap org and the demo region's tenants
            assert f">{other}<" not in html
        assert "aiplus_admin" not in [c["name"] for c in portal.cookies()]
        shot(p, "portal")

        # revoking the key in the control room ends its portal session
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Revoke key production").click()
        expect(page.locator("#keys")).to_contain_text("revoked")
        p.reload()
        expect(p.get_by_role("alert")).to_contain_text("revoked")
    finally:
        portal.close()
    assert context.csp_violations == []


def test_adoption_after_demo_seed_shows_the_chart(web_server, context):
    page = context.new_page()
    sign_in(page, web_server.url)
    page.get_by_role("link", name="Adoption").click()
    expect(page.get_by_role("heading", name="Adoption against the targets")).to_be_visible()
    chart = page.locator(".chart img")
    expect(chart).to_be_visible(timeout=60_000)
    expect(chart).to_have_js_property("complete", True, timeout=60_000)
    assert page.evaluate("document.querySelector('.chart img').naturalWidth") > 500, "the chart loaded"
    rows = page.locator("#adoption tbody tr")
    assert rows.count() >= 3  # sectors of the demo region and the total
    expect(page.locator("#adoption tbody tr.total")).to_contain_text("all")
    expect(page.locator("#adoption")).to_contain_text(re.compile(r"\d+\.\d%"))
    shot(page, "adoption")
    page.get_by_label("By").select_option("region")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile("by=region"))
    assert context.csp_violations == []


def _tab_through(page, limit: int = 400) -> set[str]:
    """Press Tab until focus comes round again; the ids/names of what got focus."""
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        here = page.evaluate(
            "(() => { const e = document.activeElement; if (!e || e === document.body) return '';"
            " const f = e.form ? (e.form.getAttribute('action') || '') : '';"
            " return e.tagName + '|' + (e.id || e.name || e.textContent.trim()) + '|' + f; })()"
        )
        if here and seen and here == seen[0]:
            break
        seen.append(here)
    return set(seen)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/ui/orgs",
        "/admin/ui/orgs/harbour-clinic",
        "/admin/ui/usage",
        "/admin/ui/statements",
        "/admin/ui/balance",
        "/admin/ui/adoption",
    ],
)
def test_keyboard_alone_reaches_every_form_control(web_server, context, path):
    page = context.new_page()
    sign_in(page, web_server.url)
    if path.endswith("harbour-clinic"):  # made by the onboarding test, or here if run alone
        web_server.new_org("Harbour Clinic", sector="healthcare")
    page.goto(web_server.url + path)
    focused = _tab_through(page)
    controls = page.evaluate(
        "Array.from(document.querySelectorAll('main form input:not([type=hidden]), main form select,"
        " main form button')).map(e => e.tagName + '|' + (e.id || e.name || e.textContent.trim()) + '|'"
        " + (e.form.getAttribute('action') || ''))"
    )
    assert controls, "the page has forms"
    missing = [c for c in controls if c not in focused]
    assert missing == [], f"not reachable by Tab on {path}: {missing}"


def test_create_an_org_with_the_keyboard_only(web_server, context):
    page = context.new_page()
    page.goto(web_server.url + "/admin/ui/signin")
    expect(page.get_by_label("Admin token")).to_be_focused()  # the token field has focus on arrival
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Live")).to_be_visible()
    page.goto(web_server.url + "/admin/ui/orgs")
    page.get_by_label("Name", exact=True).focus()
    page.keyboard.type("Keyboard Cooperative")
    page.keyboard.press("Tab")
    page.keyboard.type("agri")  # a select picks by typing
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Create organization":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("Keyboard Cooperative"))).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("agriculture")


def test_pages_fit_a_phone(web_server, browser):
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = phone.new_page()
        page.goto(web_server.url + "/")
        shot(page, "phone-front-door")
        sign_in(page, web_server.url)
        for path in PAGES:
            page.goto(web_server.url + path)
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 392, f"{path} is {width}px wide at phone width"
            shot(page, "phone-" + path.rsplit("/", 1)[-1])
        key = web_server.new_org("Phone Bakery", sector="trade")["key"]
        page.goto(web_server.url + "/portal")
        page.get_by_label("One of your organization's API keys").fill(key)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Phone Bakery", exact=True)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 392
        shot(page, "phone-portal")
    finally:
        phone.close()


def test_statements_and_the_balance_in_the_control_room(web_server, context):
    month = last_month()  # the demo region's last month of usage, under the example tariff it adopts
    page = context.new_page()
    sign_in(page, web_server.url)
    page.get_by_role("link", name="Bills").click()
    expect(page.get_by_role("heading", name=re.compile("^Statements"))).to_be_visible()
    page.get_by_label("Month").fill(month)
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("heading", name=f"Statements {month}")).to_be_visible()
    overview = page.locator("#statements tbody tr")
    assert overview.count() >= 30  # the demo region's tenants
    expect(page.locator("#statements")).to_contain_text("demo-")
    shot(page, "statements")
    page.locator("#statements tbody a").first.click()  # one organization's statement in full
    expect(page).to_have_url(re.compile("org_id="))
    expect(page.get_by_role("cell", name="amount due")).to_be_visible()
    with page.expect_navigation():
        page.get_by_role("link", name=re.compile("Printable statement")).click()
    assert "statement" in page.content().lower() and page.url.startswith(
        f"{web_server.url}/admin/ui/statements/print"
    )
    page.goto(f"{web_server.url}/admin/ui/balance?month={month}")
    expect(page.get_by_role("heading", name=f"The utility's balance {month}")).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile("revenue by tier and block"))).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile("affordability"))).to_be_visible()
    shot(page, "balance")
    page.goto(f"{web_server.url}/admin/ui/statements?month=2026-13")
    expect(page.get_by_role("alert")).to_contain_text("month must be a month like")
    assert context.csp_violations == []


def test_every_control_room_page_renders_without_csp_violations(web_server, context):
    page = context.new_page()
    sign_in(page, web_server.url)
    for path in PAGES:
        response = page.goto(web_server.url + path)
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        expect(page.locator("h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        shot(page, path.rsplit("/", 1)[-1])
    page.goto(web_server.url + "/admin/ui/no-such-page")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert context.csp_violations == []
