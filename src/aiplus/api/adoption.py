"""``GET /admin/adoption``: the adoption report as JSON (the same ``build_report`` the CLI prints).

The app includes this router behind its admin-token dependency; nothing here authenticates.
"""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from aiplus.adoption.penetration import CUTS
from aiplus.adoption.report import BACKTEST_ORIGINS, FIT_SOURCES, MAX_ORIGINS, build_report
from aiplus.api.errors import APIError

router = APIRouter()


def _choice(value: str, allowed, param: str) -> str:
    if value not in allowed:
        raise APIError(400, f"{param} must be one of {', '.join(allowed)}, not {value!r}", param=param)
    return value


@router.get("/admin/adoption")
async def adoption_report(
    request: Request,
    by: str = "sector",
    as_of: str | None = Query(None, description="YYYY-MM-DD; default today"),
    fit_on: str = "ledger",
    series: bool = Query(True, description="include the monthly series and observations"),
    band: bool = Query(True, description="include the monthly forecast band"),
    backtest: int = Query(
        BACKTEST_ORIGINS, description="back-test each forecast over this many past months (0: none, faster)"
    ),
):
    """Penetration per group with its definition, monthly series, forecast and status against each target."""
    _choice(by, tuple(CUTS), "by")
    _choice(fit_on, FIT_SOURCES, "fit_on")
    if not 0 <= backtest <= MAX_ORIGINS:
        raise APIError(400, f"backtest must be 0 to {MAX_ORIGINS}, not {backtest}", param="backtest")
    day = None
    if as_of:
        try:
            day = date.fromisoformat(as_of)
        except ValueError:
            raise APIError(400, f"as_of must be a date YYYY-MM-DD, not {as_of!r}", param="as_of") from None
    engine = request.app.state.services.db
    settings = request.app.state.services.settings

    def build() -> dict:
        with engine.connect() as conn:
            report = build_report(
                conn, settings.adoption, by=by, as_of=day, fit_on=fit_on, backtest_origins=backtest
            )
        return report.as_dict(series=series, band=band)

    return await run_in_threadpool(build)
