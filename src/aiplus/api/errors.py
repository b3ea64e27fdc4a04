"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from starlette.responses import Response

from aiplus.tenancy.errors import Conflict, Invalid, NotFound, TenancyError

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    """Raise anywhere on an HTTP path; the app's handler answers with ``to_response()``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or STATUS_TYPES.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = headers

    def to_response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return Response(
            orjson.dumps(body), status_code=self.status, media_type="application/json", headers=self.headers
        )


RETRY_AFTER_S = 5  # what a 503 asks a client to wait: about the database's connect timeout and a retry
# The database is away (unreachable, too slow, every pooled connection busy): not a bug, a moment to wait.
DATABASE_AWAY = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def unavailable(message: str) -> APIError:
    """503 with ``Retry-After``: something the request needs is away for a moment."""
    return APIError(503, message, code="service_unavailable", headers={"retry-after": str(RETRY_AFTER_S)})


def from_storage(exc: BaseException) -> APIError | None:
    """A 503 for a database that is away; None for any other failure."""
    if isinstance(exc, DATABASE_AWAY):
        return unavailable("The database is unavailable just now; retry shortly.")
    return None


def from_tenancy(exc: TenancyError) -> APIError:
    """Map a tenancy service failure to its HTTP answer."""
    if isinstance(exc, NotFound):
        return APIError(404, exc.message, param=exc.param, code="not_found")
    if isinstance(exc, Conflict):
        return APIError(409, exc.message, param=exc.param, code="already_exists")
    if isinstance(exc, Invalid):
        return APIError(400, exc.message, param=exc.param, code="invalid_value")
    return APIError(400, exc.message, param=exc.param)
