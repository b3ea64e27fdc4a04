"""``/admin/*`` (admin token only) and the organization's own ``GET /v1/usage`` (its API key).

Routes call the same service functions as the CLI. ``router`` holds both; include it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, Field
from starlette.responses import Response

from aiplus.api.auth import require_admin_dependency, require_principal
from aiplus.api.errors import APIError, from_tenancy
from aiplus.config import SECTORS, SERVICE_TIERS
from aiplus.metering.usage import parse_day, query_usage, totals, totals_by_service_tier
from aiplus.responses.store import storage_by_org
from aiplus.tenancy import changes
from aiplus.tenancy.auth import Principal
from aiplus.tenancy.errors import TenancyError
from aiplus.tenancy.keys import create_key, list_keys
from aiplus.tenancy.orgs import create_org, list_orgs, require_org


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def org_object(org: dict) -> dict:
    return {"object": "organization", **org, "created_at": _ts(org["created_at"])}


def key_object(key: dict) -> dict:
    out = {"object": "api_key", **key}
    for name in ("created_at", "expires_at", "revoked_at"):
        out[name] = _ts(key[name])
    return out


async def _db(request: Request, fn: Callable, *args, **kwargs) -> Any:
    """Run a service function in a transaction off the event loop; tenancy failures become API errors."""
    engine = request.app.state.services.db

    def call():
        with engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    try:
        return await asyncio.to_thread(call)
    except TenancyError as exc:
        raise from_tenancy(exc) from None
    except sa.exc.DataError as exc:  # a value the database cannot hold, past the checks below
        raise APIError(400, "A value in the request cannot be stored.", code="invalid_value") from exc


def _printable(value: str) -> str:
    """No NUL or other control character: PostgreSQL refuses NUL in text (a 500 before), and none belongs in a
    name, an id or a filter."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (such as NUL)")
    return value


Text = Annotated[str, AfterValidator(_printable)]


async def plain_input(request: Request) -> None:
    """Refuse a path or query value with a control character before any route reads it (400)."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise APIError(
                400,
                f"Invalid value for '{name}': must not contain control characters (such as NUL)",
                param=name,
                code="invalid_value",
            )


class OrgCreate(BaseModel):
    name: Text = Field(min_length=1, max_length=200)
    sector: Text = Field(json_schema_extra={"enum": list(SECTORS)})
    tier: Text = Field("standard", description="one of the configured tiers")
    region: Text = Field("", max_length=100)
    employees: int | None = Field(None, ge=0, le=2**31 - 1)
    id: Text | None = Field(None, max_length=200, description="default: a slug of the name")


class OrgUpdate(BaseModel):
    tier: Text | None = Field(None, description="one of the configured tiers")
    name: Text | None = Field(None, min_length=1, max_length=200)
    region: Text | None = Field(None, max_length=100)
    employees: int | None = Field(None, ge=0, le=2**31 - 1)


class KeyCreate(BaseModel):
    name: Text = Field("", max_length=200)
    expires_at: datetime | None = Field(None, description="ISO 8601; the key stops working then")
    models: list[Text] | None = Field(None, description="model ids this key may use; default: all")


admin = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[require_admin_dependency, Depends(plain_input)]
)


@admin.post("/orgs", status_code=201, summary="Create an organization")
async def post_org(body: OrgCreate, request: Request) -> Response:
    org = await _db(
        request,
        create_org,
        name=body.name,
        sector=body.sector,
        tier=body.tier,
        region=body.region,
        employees=body.employees,
        org_id=body.id,
        tiers=request.app.state.services.settings.tiers,
    )
    return _json(org_object(org), 201)


def _filters(request: Request, sector: str | None, tier: str | None) -> None:
    """A filter on a sector or tier that cannot exist is a mistake worth a 400, not an empty list."""
    if sector and sector not in SECTORS:
        raise APIError(400, f"unknown sector {sector!r}", param="sector", code="invalid_value")
    tiers = request.app.state.services.settings.tiers
    if tier and tier not in {t.name for t in tiers}:
        raise APIError(400, f"unknown tier {tier!r}", param="tier", code="invalid_value")


@admin.get("/orgs", summary="List organizations")
async def get_orgs(
    request: Request,
    sector: str | None = None,
    tier: str | None = None,
    region: str | None = None,
    size_class: str | None = Query(None, description="micro, small, medium or large"),
) -> Response:
    _filters(request, sector, tier)
    found = await _db(request, list_orgs, sector=sector, tier=tier, region=region, size_class=size_class)
    return _json({"object": "list", "data": [org_object(o) for o in found]})


@admin.get("/orgs/{org_id}", summary="Show an organization")
async def get_org(org_id: str, request: Request) -> Response:
    return _json(org_object(await _db(request, require_org, org_id)))


@admin.patch("/orgs/{org_id}", summary="Change an organization's tier (or name, region, head count)")
async def patch_org(org_id: str, body: OrgUpdate, request: Request) -> Response:
    try:
        services = request.app.state.services
        org = await changes.update_org(
            services.db,
            services.authenticator.signal,
            org_id,
            tiers=services.settings.tiers,
            **body.model_dump(exclude_none=True),
        )
    except TenancyError as exc:
        raise from_tenancy(exc) from None
    return _json(org_object(org))


@admin.post("/orgs/{org_id}/keys", status_code=201, summary="Create an API key (its value is shown only now)")
async def post_key(org_id: str, body: KeyCreate, request: Request) -> Response:
    secret = request.app.state.services.secret
    row, plaintext = await _db(
        request, create_key, secret, org_id, name=body.name, expires_at=body.expires_at, models=body.models
    )
    return _json({**key_object(row), "key": plaintext}, 201)


@admin.get("/orgs/{org_id}/keys", summary="List an organization's API keys")
async def get_keys(org_id: str, request: Request) -> Response:
    def keys_of(conn, org_id):
        require_org(conn, org_id)
        return list_keys(conn, org_id)

    found = await _db(request, keys_of, org_id)
    return _json({"object": "list", "data": [key_object(k) for k in found]})


@admin.delete("/keys/{key_id}", summary="Revoke an API key (every server rejects it at once)")
async def delete_key(key_id: str, request: Request) -> Response:
    try:
        services = request.app.state.services
        key = await changes.revoke_key(services.db, services.authenticator.signal, key_id)
    except TenancyError as exc:
        raise from_tenancy(exc) from None
    return _json({**key_object(key), "revoked": True})


def _usage_params(
    start: str | None, end: str | None, group_by: str, service_tier: str | None, by_service_tier: bool
) -> dict:
    service_tier = service_tier or None  # an empty filter is no filter, as for the others
    if service_tier is not None and service_tier not in SERVICE_TIERS:
        raise APIError(
            400,
            f"service_tier must be one of {', '.join(SERVICE_TIERS)}, not {service_tier!r}",
            param="service_tier",
            code="invalid_value",
        )
    try:
        params = {"start": parse_day(start, "start"), "end": parse_day(end, "end")}
    except ValueError as exc:
        raise APIError(
            400, str(exc), param="start" if "start" in str(exc) else "end", code="invalid_value"
        ) from None
    if group_by not in ("day", "month"):
        raise APIError(400, "group_by must be 'day' or 'month'", param="group_by", code="invalid_value")
    return {**params, "group_by": group_by, "service_tier": service_tier, "by_service_tier": by_service_tier}


async def _usage(request: Request, **filters) -> Response:
    rows = await _db(request, query_usage, **filters)
    body = {"object": "list", "data": rows, "totals": totals(rows), "group_by": filters["group_by"]}
    if filters["by_service_tier"]:
        body["totals_by_service_tier"] = totals_by_service_tier(rows)
    return _json(body)


@admin.get("/usage", summary="Usage of all organizations, from the daily rollups")
async def admin_usage(
    request: Request,
    org_id: str | None = None,
    model: str | None = None,
    sector: str | None = None,
    tier: str | None = None,
    start: str | None = Query(None, description="first day, inclusive (UTC), e.g. 2026-11-01"),
    end: str | None = Query(None, description="last day, inclusive (UTC)"),
    group_by: str = Query("day", description="day or month"),
    service_tier: str | None = Query(
        None, description="only requests served in it: priority, default or flex"
    ),
    by_service_tier: bool = Query(
        False, description="split rows by service tier; add totals_by_service_tier"
    ),
) -> Response:
    _filters(request, sector, tier)
    params = _usage_params(start, end, group_by, service_tier, by_service_tier)
    return await _usage(request, org_id=org_id, model=model, sector=sector, tier=tier, **params)


@admin.get("/responses/storage", summary="Stored Responses API responses per organization: count and bytes")
async def responses_storage(request: Request, org_id: str | None = None) -> Response:
    rows = await _db(request, storage_by_org, org_id)
    return _json(
        {
            "object": "list",
            "data": rows,
            "retention_days": request.app.state.services.settings.responses_retention_days,
        }
    )


v1 = APIRouter(tags=["usage"], dependencies=[Depends(plain_input)])


@v1.get("/v1/usage", summary="Your organization's usage (its rows only)")
async def own_usage(
    request: Request,
    principal: Principal = Depends(require_principal),
    model: str | None = None,
    start: str | None = Query(None, description="first day, inclusive (UTC)"),
    end: str | None = Query(None, description="last day, inclusive (UTC)"),
    group_by: str = Query("day", description="day or month"),
    service_tier: str | None = Query(
        None, description="only requests served in it: priority, default or flex"
    ),
    by_service_tier: bool = Query(
        False, description="split rows by service tier; add totals_by_service_tier"
    ),
) -> Response:
    params = _usage_params(start, end, group_by, service_tier, by_service_tier)
    return await _usage(request, org_id=principal.org_id, model=model, **params)


router = APIRouter()
router.include_router(admin)
router.include_router(v1)
