"""The front door (``/``) and the control room (``/admin/ui``): HTML pages over the same service functions as the
admin API and the CLI (tenancy, tenancy.changes, metering.usage, adoption.report), never a second implementation.

Sign-in takes the admin token from a POST form and answers with a session cookie (see ``sessions.py``); every
other form carries the session's CSRF token.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from aiplus.adoption.charts import write_chart
from aiplus.adoption.penetration import CUTS
from aiplus.adoption.report import build_report
from aiplus.api.live import live_snapshot
from aiplus.api.pages import error_status, in_transaction, read_form, redirect, render
from aiplus.api.sessions import Session, client_address, web_state
from aiplus.config import SECTORS, SERVICE_TIERS
from aiplus.metering.usage import parse_day, query_usage, totals
from aiplus.tenancy import changes
from aiplus.tenancy.errors import Invalid, TenancyError
from aiplus.tenancy.keys import create_key, list_keys
from aiplus.tenancy.orgs import SIZE_CLASSES, create_org, list_orgs, org_facets, require_org

ROOT = "/admin/ui"
PAGE_PREFIXES = (ROOT, "/portal")  # where a missing page is answered with an HTML page, not JSON
ORGS_SHOWN = 500
USAGE_ROWS_SHOWN = 1000

router = APIRouter(include_in_schema=False)


def _session(request: Request) -> Session | None:
    return web_state(request).admin.read(request)


def admin_page(request: Request, session: Session, name: str, status: int = 200, **context) -> Response:
    """A control-room page: the template with the session's CSRF token, the nav, tiers and sectors."""
    services = request.app.state.services
    return render(
        request,
        name,
        status,
        nav="admin",
        csrf=web_state(request).admin.csrf(session),
        tiers=[t.name for t in services.settings.tiers],
        sectors=SECTORS,
        **context,
    )


async def _form(request: Request, session: Session) -> dict[str, str] | None:
    """The POSTed form if its CSRF token is this session's; None otherwise."""
    form = await read_form(request)
    return form if web_state(request).admin.check_csrf(session, form.get("csrf")) else None


def _refused(request: Request) -> Response:
    return render(
        request, "error.html", 403, title="Refused", message="The form has expired; reload the page."
    )


@router.get("/")
async def front_door(request: Request) -> Response:
    services = request.app.state.services
    models = [
        {"id": m.config.id, "engine": m.config.engine, "healthy": m.engine.healthy()}
        for m in services.models.values()
    ]
    return render(request, "index.html", models=models, base_url=str(request.base_url).rstrip("/") + "/v1")


@router.get(ROOT)
async def control_room(request: Request) -> Response:
    return redirect(f"{ROOT}/live" if _session(request) else f"{ROOT}/signin")


@router.get(f"{ROOT}/signin")
async def signin_page(request: Request) -> Response:
    return redirect(f"{ROOT}/live") if _session(request) else _signin(request)


def _signin(request: Request, status: int = 200, message: str = "") -> Response:
    sessions = web_state(request).admin
    token, nonce = sessions.signin_csrf(request)
    response = render(
        request, "signin.html", status, action=f"{ROOT}/signin", who="admin", message=message, csrf=token
    )
    sessions.keep_signin(request, response, nonce)
    return response


@router.post(f"{ROOT}/signin")
async def signin(request: Request) -> Response:
    state = web_state(request)
    client = client_address(request)
    wait = state.throttle.locked_for(client)
    if wait:
        return _signin(request, 429, f"Too many wrong sign-ins: try again in {wait // 60 + 1} minutes.")
    form = await read_form(request)
    if not state.admin.check_signin_csrf(request, form.get("csrf")):
        return _signin(request, 403, "The sign-in form expired; try again.")
    if not request.app.state.services.admin.check(form.get("token", "").strip()):
        await state.throttle.failed(client)
        return _signin(request, 401, "That is not the admin token.")
    state.throttle.succeeded(client)
    response = redirect(f"{ROOT}/live")
    state.admin.start(request, response)
    return response


@router.post(f"{ROOT}/signout")
async def signout(request: Request) -> Response:
    session = _session(request)
    if session is None or await _form(request, session) is None:
        return redirect(f"{ROOT}/signin")
    response = redirect(f"{ROOT}/signin")
    web_state(request).admin.end(response)
    return response


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


@router.get(f"{ROOT}/live")
async def live_page(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    live = live_snapshot(request.app.state.services)
    return admin_page(request, session, "admin/live.html", live=live, now=_now())


@router.get(f"{ROOT}/live.part")
async def live_part(request: Request) -> Response:
    """The live page's body alone, for its script to swap in every two seconds."""
    if (session := _session(request)) is None:
        return Response(status_code=401)
    live = live_snapshot(request.app.state.services)
    return admin_page(request, session, "admin/_live.html", live=live, now=_now())


@router.get(f"{ROOT}/orgs")
async def orgs_page(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    return await _orgs(request, session)


async def _orgs(request: Request, session: Session, status: int = 200, **context) -> Response:
    q = request.query_params
    filters = {name: q.get(name) or None for name in ("sector", "tier", "region", "size_class")}

    def read(conn):
        return list_orgs(conn, **filters, limit=ORGS_SHOWN + 1), org_facets(conn)

    found, facets = await in_transaction(request, read)
    return admin_page(
        request,
        session,
        "admin/orgs.html",
        status,
        orgs=found[:ORGS_SHOWN],
        more=len(found) > ORGS_SHOWN,
        filters=filters,
        regions=facets["regions"],
        sizes=SIZE_CLASSES,
        **context,
    )


@router.post(f"{ROOT}/orgs")
async def orgs_create(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    if (form := await _form(request, session)) is None:
        return _refused(request)
    employees = form.get("employees", "").strip()
    try:
        if employees and not employees.isdigit():
            raise Invalid("employees must be a whole number", "employees")
        org = await in_transaction(
            request,
            create_org,
            name=form.get("name", ""),
            sector=form.get("sector", ""),
            tier=form.get("tier", "standard"),
            region=form.get("region", "").strip(),
            employees=int(employees) if employees else None,
            org_id=form.get("id", "").strip() or None,
            tiers=request.app.state.services.settings.tiers,
        )
    except TenancyError as exc:
        return await _orgs(request, session, error_status(exc), error=exc.message, form=form)
    return redirect(f"{ROOT}/orgs/{org['id']}")


@router.get(f"{ROOT}/orgs/{{org_id}}")
async def org_page(org_id: str, request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    return await _org(request, session, org_id)


async def _org(request: Request, session: Session, org_id: str, status: int = 200, **context) -> Response:
    def read(conn):
        return require_org(conn, org_id), list_keys(conn, org_id)

    try:
        org, keys = await in_transaction(request, read)
    except TenancyError as exc:
        return admin_page(
            request, session, "error.html", error_status(exc), title="Not found", message=exc.message
        )
    return admin_page(request, session, "admin/org.html", status, org=org, keys=keys, **context)


@router.post(f"{ROOT}/orgs/{{org_id}}/tier")
async def org_tier(org_id: str, request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    if (form := await _form(request, session)) is None:
        return _refused(request)
    services = request.app.state.services
    try:
        await changes.update_org(
            services.db,
            services.authenticator.signal,
            org_id,
            tiers=services.settings.tiers,
            tier=form.get("tier", ""),
        )
    except TenancyError as exc:
        return await _org(request, session, org_id, error_status(exc), error=exc.message)
    return redirect(f"{ROOT}/orgs/{org_id}")


@router.post(f"{ROOT}/orgs/{{org_id}}/keys")
async def org_key(org_id: str, request: Request) -> Response:
    """Create a key and show its value on this one answer (never in a URL, never again)."""
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    if (form := await _form(request, session)) is None:
        return _refused(request)
    secret = request.app.state.services.secret
    try:
        row, plaintext = await in_transaction(
            request, create_key, secret, org_id, name=form.get("name", "").strip()[:200]
        )
    except TenancyError as exc:
        return await _org(request, session, org_id, error_status(exc), error=exc.message)
    return await _org(request, session, org_id, 201, new_key={**row, "key": plaintext})


@router.post(f"{ROOT}/keys/{{key_id}}/revoke")
async def key_revoke(key_id: str, request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    if await _form(request, session) is None:
        return _refused(request)
    services = request.app.state.services
    try:
        key = await changes.revoke_key(services.db, services.authenticator.signal, key_id)
    except TenancyError as exc:
        return admin_page(
            request, session, "error.html", error_status(exc), title="Not found", message=exc.message
        )
    return redirect(f"{ROOT}/orgs/{key['org_id']}")


@router.get(f"{ROOT}/usage")
async def usage_page(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    q = request.query_params
    filters = {
        name: q.get(name, "").strip()
        for name in ("org_id", "model", "sector", "tier", "service_tier", "start", "end")
    }
    group_by = q.get("group_by") if q.get("group_by") in ("day", "month") else "month"
    try:
        start, end = parse_day(filters["start"], "start"), parse_day(filters["end"], "end")
        if filters["service_tier"] not in ("", *SERVICE_TIERS):
            raise ValueError(f"service tier must be one of {', '.join(SERVICE_TIERS)}")
    except ValueError as exc:
        return admin_page(request, session, "admin/usage.html", 400, rows=[], totals=None, filters=filters,
                     group_by=group_by, error=str(exc), more=False)  # fmt: skip
    rows = await in_transaction(
        request,
        query_usage,
        org_id=filters["org_id"] or None,
        model=filters["model"] or None,
        sector=filters["sector"] or None,
        tier=filters["tier"] or None,
        service_tier=filters["service_tier"] or None,
        start=start,
        end=end,
        group_by=group_by,
    )
    rows.sort(key=lambda r: (r["period"], r["org_id"], r["model"]), reverse=True)
    return admin_page(
        request,
        session,
        "admin/usage.html",
        rows=rows[:USAGE_ROWS_SHOWN],
        more=len(rows) > USAGE_ROWS_SHOWN,
        totals=totals(rows),
        filters=filters,
        group_by=group_by,
        models=list(request.app.state.services.models),
        service_tiers=SERVICE_TIERS,
    )


def _cut(request: Request) -> str:
    by = request.query_params.get("by", "sector")
    return by if by in CUTS else "sector"


@router.get(f"{ROOT}/adoption")
async def adoption_page(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    by = _cut(request)
    services = request.app.state.services

    def build():
        with services.db.connect() as conn:
            return build_report(conn, services.settings.adoption, by=by)

    report = await run_in_threadpool(build)
    return admin_page(request, session, "admin/adoption.html", report=report, by=by, cuts=list(CUTS))


@router.get(f"{ROOT}/adoption/chart.svg")
async def adoption_chart(request: Request) -> Response:
    if _session(request) is None:
        return Response(status_code=401)
    by = _cut(request)
    services = request.app.state.services

    def draw() -> bytes:
        with services.db.connect() as conn:
            report = build_report(conn, services.settings.adoption, by=by)
        with tempfile.TemporaryDirectory() as tmp:
            return write_chart(report, Path(tmp) / "adoption.svg").read_bytes()

    svg = await run_in_threadpool(draw)
    return Response(svg, media_type="image/svg+xml", headers={"cache-control": "private, max-age=60"})


@router.get(f"{ROOT}/models")
async def models_page(request: Request) -> Response:
    if (session := _session(request)) is None:
        return redirect(f"{ROOT}/signin")
    services = request.app.state.services
    uptime = int(datetime.now(UTC).timestamp()) - services.started
    return admin_page(request, session, "admin/models.html", live=live_snapshot(services), uptime_s=uptime)
