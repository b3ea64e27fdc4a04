"""Bills in the control room: statements and the utility's balance, through the billing room's service
functions (``statements``, ``balance``) and its renderings (the table forms the CLI prints, the printable A4
document) — nothing here computes money. The portal shows an organization's own statement the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from aiplus.api import web
from aiplus.api.pages import redirect
from aiplus.api.sessions import web_state
from aiplus.billing.balance import balance, balance_tables
from aiplus.billing.errors import BillingError
from aiplus.billing.render import statement_tables, statements_html, statements_overview
from aiplus.billing.statements import statements

router = APIRouter(include_in_schema=False)

# the printable statement is its own document with its own stylesheet inline, and no script at all
DOCUMENT_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


async def read(request: Request, fn: Callable, *args: Any) -> Any:
    engine = request.app.state.services.db

    def call() -> Any:
        with engine.connect() as conn:
            return fn(conn, *args)

    return await asyncio.to_thread(call)


def month_param(request: Request) -> str | None:
    return request.query_params.get("month", "").strip() or None


@router.get(f"{web.ROOT}/statements")
async def statements_page(request: Request) -> Response:
    """Every organization's statement for a month (one row each), or one organization's in full."""
    if (session := web_state(request).admin.read(request)) is None:
        return redirect(f"{web.ROOT}/signin")
    month = month_param(request)
    org_id = request.query_params.get("org_id", "").strip() or None
    context = {"month": month or "", "org_id": org_id or "", "tables": [], "docs": []}
    try:
        docs = await read(request, statements, month, org_id)
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
        docs = await read(request, statements, month_param(request), org_id)
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
        report = await read(request, balance, month, config)
    except BillingError as exc:
        return web.admin_page(request, session, "admin/balance.html", exc.status, error=exc.message, month=month or "",
                         tables=[])  # fmt: skip
    return web.admin_page(
        request, session, "admin/balance.html", month=report["month"], tables=balance_tables(report)
    )
