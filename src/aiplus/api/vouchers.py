"""Vouchers over HTTP: programmes, vouchers and claim packs for the admin token; an organization's own vouchers
for its API key (what they paid shows in ``GET /v1/billing/statements``). The same service functions as
``aiplus vouchers`` and ``aiplus bill claims``.
"""

from __future__ import annotations

from decimal import Decimal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from aiplus.api.admin import plain_input
from aiplus.api.auth import require_admin_dependency, require_principal
from aiplus.api.billing import MONTH, _call, _json
from aiplus.billing.claims import claim_files, programme_statement
from aiplus.billing.programmes import (
    add_programme,
    issue_voucher,
    list_programmes,
    list_vouchers,
    revoke_voucher,
    show_programme,
)
from aiplus.tenancy.auth import Principal


class ProgrammeAdd(BaseModel):
    id: str = Field(description="a short id: lower-case letters, digits, '.', '_', '-'")
    name: str | None = Field(None, description="a display name (default: the id)")
    funder: str = Field(description="who pays")
    pool_micros: int = Field(description="the money available, in micro-units")
    share: Decimal | str = Field(description="the co-pay: the share of each eligible charge it pays (0.3)")
    cap_month_micros: int | None = Field(None, description="the most it pays one organization a month")
    cap_year_micros: int | None = Field(None, description="the most it pays one organization a year")
    valid_from: str = Field(description="YYYY-MM-DD, first valid local day")
    valid_until: str = Field(description="YYYY-MM-DD, last valid local day")
    sectors: list[str] = Field(default_factory=list, description="eligible sectors (empty: any)")
    sizes: list[str] = Field(default_factory=list, description="eligible size classes (empty: any)")
    regions: list[str] = Field(default_factory=list, description="eligible regions (empty: any)")
    models: list[str] = Field(default_factory=list, description="eligible models (empty: any)")
    stacks: bool = Field(False, description="whether it pays beside other stacking programmes")
    max_combined_share: Decimal | str | None = Field(
        None, description="with stacks: the most all pay together"
    )


class VoucherIssue(BaseModel):
    programme: str
    org_id: str
    amount_micros: int
    expires_on: str = Field(description="YYYY-MM-DD, the last local day it pays for")
    valid_from: str | None = Field(None, description="YYYY-MM-DD (default: today)")
    priority: int = Field(0, description="lower pays first, then the earlier expiry")
    note: str = ""


class VoucherRevoke(BaseModel):
    on: str | None = Field(
        None, description="YYYY-MM-DD: pays nothing for charges from this day (default: today)"
    )


v1 = APIRouter(tags=["vouchers"], dependencies=[Depends(plain_input)])


@v1.get("/v1/billing/vouchers", summary="Your organization's vouchers and what they have paid")
async def own_vouchers(request: Request, principal: Principal = Depends(require_principal)) -> Response:
    found = await _call(request, list_vouchers, org_id=principal.org_id)
    return _json({"object": "list", "data": found})


admin = APIRouter(
    prefix="/admin", tags=["vouchers"], dependencies=[require_admin_dependency, Depends(plain_input)]
)


@admin.get("/voucher-programmes", summary="Every voucher programme and its pool left")
async def get_programmes(request: Request) -> Response:
    return _json({"object": "list", "data": await _call(request, list_programmes)})


@admin.post("/voucher-programmes", status_code=201, summary="Add a funder's voucher programme")
async def post_programme(body: ProgrammeAdd, request: Request) -> Response:
    spec = body.model_dump()
    spec = {k: str(v) if isinstance(v, Decimal) else v for k, v in spec.items()}
    return _json(await _call(request, add_programme, spec, write=True), status=201)


@admin.get(
    "/voucher-programmes/{programme_id}",
    summary="A programme; with month, its monthly statement (disbursement, pool left, expiring vouchers)",
)
async def get_programme(programme_id: str, request: Request, month: str | None = MONTH) -> Response:
    if month is None:
        return _json(await _call(request, show_programme, programme_id))
    return _json(await _call(request, programme_statement, programme_id, month))


@admin.get(
    "/voucher-programmes/{programme_id}/claims/{month}",
    summary="The programme's claim pack for a month: manifest and files (usage CSV, statements)",
)
async def get_claim(programme_id: str, month: str, request: Request) -> Response:
    """The same files ``aiplus bill claims`` writes: ``files`` maps each name to its text; ``manifest`` holds
    the SHA-256 of every file, the totals and the hash chain over the daily totals."""
    files = await _call(request, claim_files, programme_id, month)
    return _json(
        {
            "object": "voucher_claim.pack",
            "manifest": orjson.loads(files["manifest.json"]),
            "files": {name: data.decode() for name, data in sorted(files.items())},
        }
    )


@admin.get("/vouchers", summary="Vouchers (of a programme or organization) with what they have paid")
async def get_vouchers(request: Request, programme: str | None = None, org_id: str | None = None) -> Response:
    found = await _call(request, list_vouchers, programme_id=programme, org_id=org_id)
    return _json({"object": "list", "data": found})


@admin.post("/vouchers", status_code=201, summary="Issue a voucher to an organization under a programme")
async def post_voucher(body: VoucherIssue, request: Request) -> Response:
    voucher = await _call(
        request,
        issue_voucher,
        body.programme,
        body.org_id,
        body.amount_micros,
        body.expires_on,
        priority=body.priority,
        valid_from=body.valid_from,
        note=body.note,
        write=True,
    )
    return _json(voucher, status=201)


@admin.post("/vouchers/{voucher_id}/revoke", summary="Stop a voucher paying from a day on")
async def post_revoke(voucher_id: str, request: Request, body: VoucherRevoke | None = None) -> Response:
    on = body.on if body else None
    return _json(await _call(request, revoke_voucher, voucher_id, on=on, write=True))


router = APIRouter()
router.include_router(v1)
router.include_router(admin)
