"""Who is calling: the admin token on ``/admin/*``, an organization's API key on ``/v1/*``.

The OpenAI routes (plain Starlette handlers) call ``authenticate``; the admin API uses the FastAPI dependencies
``require_admin`` and ``require_principal``, which also declare the security schemes behind the docs' "Authorize"
button. Every refusal is an OpenAI-style error: 401 (no or a wrong credential), 403 (a key on an admin route),
429 (too many wrong admin tokens from one address: see lockout.py), 503 (the key store is unreachable).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPBearer
from starlette.requests import Request

from aiplus.api.errors import APIError, unavailable
from aiplus.tenancy.auth import Principal
from aiplus.tenancy.errors import AuthUnavailable

log = logging.getLogger("aiplus")

# Declared for the OpenAPI docs only (auto_error=False): the checks below make their own OpenAI-style errors.
admin_scheme = HTTPBearer(
    auto_error=False, scheme_name="admin token", description="the admin token (aipadm_...)"
)
key_scheme = HTTPBearer(
    auto_error=False, scheme_name="API key", description="an organization's key (aip_...)"
)


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: Request) -> Principal:
    """The organization behind the request's API key, through the hot-path Authenticator (401/503 otherwise)."""
    token = bearer(request)
    if token is None:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer aip_...'.",
            type="invalid_request_error",
            code="missing_api_key",
        )
    try:
        principal = await request.app.state.services.authenticator.authenticate(token)
    except AuthUnavailable as exc:  # its detail (an exception class) is for the log, not the client
        log.warning("key check unavailable: %s", exc.__cause__ or exc)
        raise unavailable("The key store is unavailable just now; retry shortly.") from None
    if principal is None:
        raise APIError(
            401,
            "Incorrect, expired or revoked API key.",
            type="invalid_request_error",
            code="invalid_api_key",
        )
    return principal


async def require_principal(request: Request, _creds: Any = Depends(key_scheme)) -> Principal:
    """``authenticate`` as a FastAPI dependency (for the admin API's ``/v1/usage``)."""
    return await authenticate(request)


async def require_admin(request: Request, _creds: Any = Depends(admin_scheme)) -> None:
    """Only the admin token passes; organization API keys never do."""
    token = bearer(request)
    if token is None:
        raise APIError(
            401, "Admin routes need 'Authorization: Bearer <admin token>'.", code="missing_api_key"
        )
    if token.startswith("aip_"):
        raise APIError(
            403, "Organization API keys cannot use /admin routes; use the admin token.", code="admin_only"
        )
    lockout = request.app.state.admin_lockout
    address = request.client.host if request.client else "unknown"
    wait = lockout.locked(address)
    if wait:
        raise APIError(
            429,
            "Too many wrong admin tokens from this address; try again later.",
            code="too_many_failed_attempts",
            headers={"retry-after": str(int(wait) + 1)},
        )
    if not request.app.state.services.admin.check(token):
        delay = lockout.failed(address)
        if delay:
            await asyncio.sleep(delay)
        raise APIError(401, "Incorrect admin token.", code="invalid_api_key")
    lockout.succeeded(address)


require_admin_dependency = Depends(require_admin)
