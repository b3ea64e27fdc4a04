"""The organization portal (``/portal``): one organization's usage, limits, quota left, keys and snippets.

Signed in with one of the organization's API keys (POSTed, checked by the same Authenticator as ``/v1``); the
session holds the org and key ids only. Every page re-reads the key: once it is revoked or expired the session
ends. Every query is filtered by the session's org id, never by anything the browser sends.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from aiplus.api.pages import (
    DOCUMENT_HEADERS,
    in_connection,
    in_transaction,
    month_param,
    read_form,
    redirect,
    render,
)
from aiplus.api.sessions import Session, client_address, web_state
from aiplus.billing.errors import BillingError
from aiplus.billing.render import statement_tables, statements_html
from aiplus.billing.statements import statements
from aiplus.metering.usage import query_usage, totals
from aiplus.scheduling.limits import ledger_month_usage
from aiplus.tenancy.errors import AuthUnavailable
from aiplus.tenancy.keys import get_key, list_keys
from aiplus.tenancy.orgs import get_org

ROOT = "/portal"

router = APIRouter(include_in_schema=False)


def _signin(request: Request, status: int = 200, message: str = "") -> Response:
    sessions = web_state(request).portal
    token, nonce = sessions.signin_csrf(request)
    response = render(
        request, "signin.html", status, action=f"{ROOT}/signin", who="org", message=message, csrf=token
    )
    sessions.keep_signin(request, response, nonce)
    return response


def _key_valid(key: dict | None, session: Session) -> bool:
    if key is None or key["org_id"] != session.org_id or key["revoked_at"] is not None:
        return False
    return key["expires_at"] is None or key["expires_at"] > datetime.now(UTC)


@router.get(ROOT)
async def portal(request: Request) -> Response:
    sessions = web_state(request).portal
    session = sessions.read(request)
    if session is None:
        return _signin(request)
    services = request.app.state.services
    month = datetime.now(UTC).strftime("%Y-%m")

    def load(conn):
        key = get_key(conn, session.key_id)
        if not _key_valid(key, session):
            return None
        org = get_org(conn, session.org_id)
        usage = query_usage(conn, org_id=session.org_id, group_by="month")
        return org, usage, list_keys(conn, session.org_id)

    found = await in_transaction(request, load)
    if found is None or found[0] is None:
        response = _signin(request, 401, "That key has been revoked or has expired; sign in with another.")
        sessions.end(response)
        return response
    org, usage, keys = found
    statement_month, statement, statement_error = await _statement(request, org["id"])
    tier = services.settings.tier(org["tier"])
    used = await ledger_month_usage(services.db)(org["id"], month)
    quota = tier.monthly_token_quota
    usage.sort(key=lambda r: (r["period"], r["model"]), reverse=True)
    return render(
        request,
        "portal/home.html",
        nav="portal",
        csrf=sessions.csrf(session),
        org=org,
        tier=tier,
        month=month,
        used=used,
        quota=quota,
        left=None if quota is None else max(0, quota - used),
        usage=usage,
        totals=totals(usage),
        keys=keys,
        signed_in_key=session.key_id,
        base_url=str(request.base_url).rstrip("/") + "/v1",
        models=list(services.models),
        statement_month=statement_month,
        statement=statement,
        statement_error=statement_error,
    )


async def _statement(request: Request, org_id: str) -> tuple[str, list, str]:
    """(month, the org's statement as tables, an error message or '') for the month asked, default the current."""
    month = month_param(request)
    try:
        (doc,) = await in_connection(request, statements, month, org_id)
    except BillingError as exc:
        return month or "", [], exc.message
    return doc["month"], statement_tables(doc), ""


async def _valid_session(request: Request) -> Session | None:
    """The portal session, if its key is still valid (not revoked, not expired, still the org's)."""
    session = web_state(request).portal.read(request)
    if session is None:
        return None
    key = await in_transaction(request, get_key, session.key_id)
    return session if _key_valid(key, session) else None


@router.get(f"{ROOT}/statement")
async def statement_document(request: Request) -> Response:
    """The organization's printable statement (A4) for a month: its own, by the session's org id only."""
    if (session := await _valid_session(request)) is None:
        return redirect(ROOT)
    try:
        docs = await in_connection(request, statements, month_param(request), session.org_id)
    except BillingError as exc:
        return Response(exc.message, exc.status, headers=DOCUMENT_HEADERS)
    return HTMLResponse(statements_html(docs), headers=DOCUMENT_HEADERS)


@router.post(f"{ROOT}/signin")
async def signin(request: Request) -> Response:
    state = web_state(request)
    client = client_address(request)
    wait = state.throttle.locked_for(client)
    if wait:
        return _signin(request, 429, f"Too many wrong sign-ins: try again in {wait // 60 + 1} minutes.")
    form = await read_form(request)
    if not state.portal.check_signin_csrf(request, form.get("csrf")):
        return _signin(request, 403, "The sign-in form expired; try again.")
    try:
        principal = await request.app.state.services.authenticator.authenticate(form.get("token", "").strip())
    except AuthUnavailable:
        return _signin(request, 503, "The key store is unavailable just now; try again shortly.")
    if principal is None:
        await state.throttle.failed(client)
        return _signin(request, 401, "That key is not valid (wrong, revoked or expired).")
    state.throttle.succeeded(client)
    response = redirect(ROOT)
    state.portal.start(request, response, org_id=principal.org_id, key_id=principal.key_id)
    return response


@router.post(f"{ROOT}/signout")
async def signout(request: Request) -> Response:
    sessions = web_state(request).portal
    session = sessions.read(request)
    form = await read_form(request)
    response = redirect(ROOT)
    if session is not None and sessions.check_csrf(session, form.get("csrf")):
        sessions.end(response)
    return response
