"""Billing over HTTP: an organization's own statements (its API key); statements, the balance and tariffs for the
admin token. The same service functions as ``aiplus bill`` and ``aiplus tariff``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from aiplus.api.admin import plain_input
from aiplus.api.auth import require_admin_dependency, require_principal
from aiplus.api.errors import APIError
from aiplus.billing.balance import balance
from aiplus.billing.errors import BillingError
from aiplus.billing.render import balance_csv, statements_csv, statements_html
from aiplus.billing.statements import statements
from aiplus.billing.versions import adopt_tariff, list_tariffs, show_tariff
from aiplus.tenancy.auth import Principal

MONTH = Query(None, description="YYYY-MM in the tariff's time zone; default: the current month there")
FORMAT = Query("json", description="json, csv or html (a printable A4 document)")


async def _call(request: Request, fn: Callable, *args, write: bool = False, **kwargs) -> Any:
    """A billing service function in its own connection, off the event loop; its errors become API errors."""
    engine = request.app.state.services.db

    def call():
        with engine.begin() if write else engine.connect() as conn:
            return fn(conn, *args, **kwargs)

    try:
        return await asyncio.to_thread(call)
    except BillingError as exc:
        code = {404: "not_found", 409: "conflict"}.get(exc.status, "invalid_value")
        raise APIError(exc.status, exc.message, param=exc.field, code=code) from None


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, default=_default), status_code=status, media_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp())
    raise TypeError


def _statements_response(docs: list[dict], fmt: str) -> Response:
    if fmt == "json":
        return _json({"object": "list", "data": docs})
    if fmt == "csv":
        return Response(statements_csv(docs), media_type="text/csv; charset=utf-8")
    if fmt == "html":
        return Response(statements_html(docs), media_type="text/html; charset=utf-8")
    raise APIError(
        400, f"format must be json, csv or html, not {fmt!r}", param="format", code="invalid_value"
    )


v1 = APIRouter(tags=["billing"], dependencies=[Depends(plain_input)])


@v1.get("/v1/billing/statements", summary="Your organization's statement for a month")
async def own_statements(
    request: Request,
    principal: Principal = Depends(require_principal),
    month: str | None = MONTH,
    format: str = FORMAT,
) -> Response:
    """The balance-forward statement of the caller's organization: line items by model × block × time-of-use
    band, lifeline tokens, sector subsidy, adjustments for closed months, amount due and closing balance (integer
    micro-units). A closed month is served exactly as frozen."""
    docs = await _call(request, statements, month, principal.org_id)
    return _statements_response(docs, format)


admin = APIRouter(
    prefix="/admin", tags=["billing"], dependencies=[require_admin_dependency, Depends(plain_input)]
)


@admin.get("/billing/statements", summary="Statements of every organization (or one) for a month")
async def admin_statements(
    request: Request, month: str | None = MONTH, org_id: str | None = None, format: str = FORMAT
) -> Response:
    docs = await _call(request, statements, month, org_id)
    return _statements_response(docs, format)


@admin.get(
    "/billing/balance", summary="The regulator's view: revenue by tier and block, lifeline and subsidies"
)
async def admin_balance(
    request: Request, month: str | None = MONTH, format: str = Query("json", description="json or csv")
) -> Response:
    """Revenue by tier × block beside the value of the lifeline blocks and sector subsidies given, and the
    affordability of the configured basic basket as a share of each region's monthly income."""
    report = await _call(request, balance, month, request.app.state.services.settings.billing)
    if format == "csv":
        return Response(balance_csv(report), media_type="text/csv; charset=utf-8")
    if format != "json":
        raise APIError(
            400, f"format must be json or csv, not {format!r}", param="format", code="invalid_value"
        )
    return _json(report)


@admin.get("/tariffs", summary="Every adopted tariff version, oldest first")
async def get_tariffs(request: Request) -> Response:
    versions = await _call(request, list_tariffs)
    return _json({"object": "list", "data": [{"object": "tariff_version", **v} for v in versions]})


@admin.get(
    "/tariffs/{version_id}", summary="One tariff version with its TOML document ('current' for today's)"
)
async def get_tariff(version_id: str, request: Request) -> Response:
    wanted = None if version_id == "current" else version_id
    version = await _call(request, show_tariff, wanted)
    return _json({"object": "tariff_version", **version})


class TariffAdopt(BaseModel):
    document: str = Field(description="the tariff as TOML (see docs/tariffs.md)")
    effective_from: str = Field(description="YYYY-MM-DD: in force from that day's midnight in its time zone")


@admin.post("/tariffs", status_code=201, summary="Adopt a tariff version (immutable once adopted)")
async def post_tariff(body: TariffAdopt, request: Request) -> Response:
    tiers = [t.name for t in request.app.state.services.settings.tiers]
    version = await _call(request, adopt_tariff, body.document, body.effective_from, tiers, write=True)
    return _json({"object": "tariff_version", **version}, status=201)


router = APIRouter()
router.include_router(v1)
router.include_router(admin)
