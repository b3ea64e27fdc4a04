"""The OpenAPI document as the API behaves: the statuses each route really answers (FastAPI documents 422 for
bad input; aiplus answers 400, as OpenAI does), the error envelope, and the enums of sectors, tiers and
groupings — tiers are configured, so the document is finished at start-up, from the settings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from aiplus.config import SECTORS, Settings

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_WHY = {
    "400": "Invalid request: a bad value, a control character, an unknown tier",
    "401": "No or a wrong credential",
    "403": "An organization's key on an admin route",
    "404": "No such organization, key, tariff, voucher or programme (or no tariff adopted yet)",
    "409": "It exists already, or conflicts with what is stored",
    "429": "Too many wrong admin tokens from this address (Retry-After says how long)",
    "503": "A store the request needs is away for a moment (Retry-After)",
}
# what each route can answer beyond its success (every route: 400, 401, 503; admin routes: 403 and 429 too)
_ROUTE_STATUSES = {
    ("post", "/admin/orgs"): ("409",),
    ("get", "/admin/orgs/{org_id}"): ("404",),
    ("patch", "/admin/orgs/{org_id}"): ("404",),
    ("post", "/admin/orgs/{org_id}/keys"): ("404",),
    ("get", "/admin/orgs/{org_id}/keys"): ("404",),
    ("delete", "/admin/keys/{key_id}"): ("404",),
    ("get", "/v1/billing/statements"): ("404",),  # no tariff adopted yet
    ("get", "/admin/billing/statements"): ("404",),
    ("get", "/admin/billing/balance"): ("404",),
    ("get", "/admin/tariffs/{version_id}"): ("404",),
    ("post", "/admin/tariffs"): ("409",),
    ("get", "/v1/billing/vouchers"): ("404",),
    ("post", "/admin/voucher-programmes"): ("409",),
    ("get", "/admin/voucher-programmes/{programme_id}"): ("404",),
    ("get", "/admin/voucher-programmes/{programme_id}/claims/{month}"): ("404", "409"),
    ("get", "/admin/vouchers"): ("404",),
    ("post", "/admin/vouchers"): ("404", "409"),
    ("post", "/admin/vouchers/{voucher_id}/revoke"): ("404", "409"),
}


def _enum(schema: dict[str, Any], values: list[str]) -> None:
    """Put ``values`` on the string branch of ``schema`` (a plain string or ``anyOf: [string, null]``)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["enum"] = values


def describe(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's OpenAPI document, made accurate; cached on the app like FastAPI's own."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    enums = {
        "sector": list(SECTORS),
        "tier": [t.name for t in settings.tiers],
        "group_by": ["day", "month"],
    }
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    for schema in schemas.values():
        for field, values in enums.items():
            if field in schema.get("properties", {}):
                _enum(schema["properties"][field], values)
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in enums:
                    _enum(parameter["schema"], enums[parameter["name"]])
            statuses = ["400", "401", "503", *_ROUTE_STATUSES.get((method, path), ())]
            if path.startswith("/admin"):
                statuses += ["403", "429"]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(statuses):
                responses[status] = {
                    "description": _WHY[status],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    app.openapi_schema = doc
    return doc
