"""Bills in the control room: statements and the utility's balance, through the billing room's service
functions (``statements``, ``balance``) and its renderings (the table forms the CLI prints, the printable A4
document) — nothing here computes money. The portal shows an organization's own statement the same way.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from aiplus.api import web
from aiplus.api.pages import DOCUMENT_HEADERS, in_connection, month_param, redirect
from aiplus.api.sessions import web_state
from aiplus.billing.balance import balance, balance_tables
from aiplus.billing.errors import BillingError
from aiplus.billing.render import statement_tables, statements_html, statements_overview
from aiplus.billing.statements import statements

router = APIRouter(include_in_schema=False)


@router.get(f"{web.ROOT}/statements")
async def statements_page(request: Request) -> Response:
    """Every organization's statement for a month (one row each), or one organization's in full."""
    if (session := web_state(request).admin.read(request)) is None:
        return redirect(f"{web.ROOT}/signin")
    month = month_param(request)
    org_id = request.query_params.get("org_id", "").strip() or None
    context = {"month": month or "", "org_id": org_id or "", "tables": [], "docs": []}
    try:
        docs = await in_connection(request, statements, month, org_id)
    except BillingError as exc:
        return web.admin_page(
            request, session, "admin/statements.html", exc.status, error=exc.message, **context
        )
    if org_id is not None:
        tables = statement_tables(docs[0])
    else:
        tables = [statements_overview(docs)]
    context.update(month=docs[0]["month"] if docs else month or "", tables=tables, docs=docs)
    return web.admin_page(request, session, "admin/statements.html", **context)


@router.get(f"{web.ROOT}/statements/print")
async def statements_print(request: Request) -> Response:
    """The printable A4 document of the billing room (one statement per page)."""
    if web_state(request).admin.read(request) is None:
        return redirect(f"{web.ROOT}/signin")
    org_id = request.query_params.get("org_id", "").strip() or None
    try:
        docs = await in_connection(request, statements, month_param(request), org_id)
    except BillingError as exc:
        return Response(exc.message, exc.status, headers=DOCUMENT_HEADERS)
    return HTMLResponse(statements_html(docs), headers=DOCUMENT_HEADERS)


@router.get(f"{web.ROOT}/balance")
async def balance_page(request: Request) -> Response:
    """The regulator's view: revenue by tier and block, lifeline and subsidies given, affordability."""
    if (session := web_state(request).admin.read(request)) is None:
        return redirect(f"{web.ROOT}/signin")
    month = month_param(request)
    config = request.app.state.services.settings.billing
    try:
        report = await in_connection(request, balance, month, config)
    except BillingError as exc:
        return web.admin_page(request, session, "admin/balance.html", exc.status, error=exc.message, month=month or "",
                         tables=[])  # fmt: skip
    return web.admin_page(
        request, session, "admin/balance.html", month=report["month"], tables=balance_tables(report)
    )
