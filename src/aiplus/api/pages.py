"""What every HTML page shares: the Jinja2 templates, the security headers, form reading, redirects.

Pages are rendered on the server from ``aiplus/web/templates``; the only scripts are the files under
``aiplus/web/static`` (the Content-Security-Policy allows nothing inline and nothing from elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from aiplus.tenancy.errors import Conflict, NotFound, TenancyError

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
MAX_FORM_BYTES = 64 * 1024


def _money(micros: int | None) -> str:
    """Micro-units as a currency amount with two decimals (exact: Decimal, never float)."""
    value = Decimal(int(micros or 0)) / Decimal(1_000_000)
    return f"{value.quantize(Decimal('0.01')):,}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: int | float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if isinstance(value, int) or float(value).is_integer() else f"{value:,.2f}"


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


templates = jinja2.Environment(
    loader=jinja2.PackageLoader("aiplus", "web/templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(money=_money, pct=_pct, num=_num, when=_when)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The template ``name`` as an HTML page with the security headers."""
    html = templates.get_template(name).render(request=request, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    """After a POST, go to a page by GET (303); ``url`` never carries a secret."""
    return RedirectResponse(url, status_code=303, headers={"cache-control": "no-store"})


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (the last value of a repeated field wins)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def in_transaction(request: Request, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run a service function in a transaction off the event loop (TenancyError passes through)."""
    engine = request.app.state.services.db

    def call() -> Any:
        with engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    return await asyncio.to_thread(call)


def error_status(exc: TenancyError) -> int:
    return 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400


# the printable statement is its own document with its own stylesheet inline, and no script at all
DOCUMENT_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


async def in_connection(request: Request, fn: Callable, *args: Any) -> Any:
    """Run a read-only service function on a connection of its own, off the event loop."""
    engine = request.app.state.services.db

    def call() -> Any:
        with engine.connect() as conn:
            return fn(conn, *args)

    return await asyncio.to_thread(call)


def month_param(request: Request) -> str | None:
    """The ``month`` query parameter (YYYY-MM), None when absent; the billing room checks it."""
    return request.query_params.get("month", "").strip() or None
