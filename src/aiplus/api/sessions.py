"""Browser sessions of the control room and the portal: signed cookies, CSRF tokens, a sign-in throttle.

A session is a cookie holding who signed in (``admin``, or an organization through one key id) and until when,
signed with HMAC-SHA256 under a key derived from the server secret; the admin token or API key itself is never
stored in it, nor put in a URL. Cookies are ``HttpOnly``, ``SameSite=Strict``, scoped to their path, and
``Secure`` when the request came over TLS. Every form carries a CSRF token bound to the session (or, on a
sign-in form, to a one-off cookie); a POST without the right one is refused.

Wrong sign-ins are counted per client address: after a few, each answer is slowed; after more, sign-ins from
that address are refused for a while. The counts live in this process (a worker of ``--workers N`` counts its
own), which bounds guessing to N times the limit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

SESSION_S = 8 * 3600
SIGNIN_COOKIE = "aiplus_signin"


@dataclass(frozen=True, slots=True)
class Session:
    kind: str  # "admin" or "org"
    sid: str
    expires: int
    org_id: str | None = None
    key_id: str | None = None


class Sessions:
    """Issues and reads the session cookie ``cookie`` under ``path``; makes and checks CSRF tokens."""

    def __init__(self, server_secret: bytes, *, cookie: str, path: str, kind: str):
        self._key = hmac.new(server_secret, f"aiplus web session {kind}".encode(), hashlib.sha256).digest()
        self.cookie = cookie
        self.path = path
        self.kind = kind

    def _sign(self, data: bytes) -> str:
        return (
            base64.urlsafe_b64encode(hmac.new(self._key, data, hashlib.sha256).digest()).decode().rstrip("=")
        )

    def read(self, request: Request) -> Session | None:
        """The request's valid, unexpired session of this kind, or None."""
        raw = request.cookies.get(self.cookie)
        if not raw or "." not in raw:
            return None
        body, _, sig = raw.rpartition(".")
        if not hmac.compare_digest(self._sign(body.encode()), sig):
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            session = Session(**data)
        except (ValueError, TypeError):
            return None
        if session.kind != self.kind or session.expires < time.time():
            return None
        return session

    def start(
        self, request: Request, response: Response, *, org_id: str | None = None, key_id: str | None = None
    ) -> Session:
        """Set a fresh session cookie on ``response`` (a new session id: nothing carries over from before)."""
        session = Session(self.kind, secrets.token_urlsafe(16), int(time.time()) + SESSION_S, org_id, key_id)
        body = base64.urlsafe_b64encode(orjson.dumps(_fields(session))).decode().rstrip("=")
        self._set(request, response, self.cookie, f"{body}.{self._sign(body.encode())}", SESSION_S)
        response.delete_cookie(SIGNIN_COOKIE, path=self.path)
        return session

    def end(self, response: Response) -> None:
        response.delete_cookie(self.cookie, path=self.path)

    def csrf(self, session: Session) -> str:
        """The CSRF token every form of this session carries."""
        return self._sign(f"csrf|{session.sid}".encode())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session), token)

    def signin_csrf(self, request: Request) -> tuple[str, str]:
        """The sign-in form's token and the one-off cookie value it is bound to (``keep_signin`` sets it)."""
        nonce = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(16)
        return self._sign(f"signin|{nonce}".encode()), nonce

    def keep_signin(self, request: Request, response: Response, nonce: str) -> None:
        if request.cookies.get(SIGNIN_COOKIE) != nonce:
            self._set(request, response, SIGNIN_COOKIE, nonce, 3600)

    def check_signin_csrf(self, request: Request, token: str | None) -> bool:
        nonce = request.cookies.get(SIGNIN_COOKIE)
        return bool(nonce and token) and hmac.compare_digest(self._sign(f"signin|{nonce}".encode()), token)

    def _set(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.path,
            httponly=True,
            samesite="strict",
            secure=behind_tls(request),
        )


def _fields(session: Session) -> dict:
    return {name: getattr(session, name) for name in Session.__slots__}


def behind_tls(request: Request) -> bool:
    """The browser reached us over TLS: directly, or through a proxy that says so."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


class SignInThrottle:
    """Wrong sign-ins per client address: slowed after ``free`` failures, refused for ``lock_s`` after ``limit``.

    A success clears the address's count; counts older than ``lock_s`` are forgotten.
    """

    def __init__(self, *, free: int = 3, limit: int = 10, lock_s: float = 900.0, max_delay_s: float = 2.0):
        self.free = free
        self.limit = limit
        self.lock_s = lock_s
        self.max_delay_s = max_delay_s
        self._failures: dict[str, list[float]] = {}

    def _recent(self, client: str) -> list[float]:
        cutoff = time.monotonic() - self.lock_s
        times = [t for t in self._failures.get(client, ()) if t >= cutoff]
        if times:
            self._failures[client] = times
        else:
            self._failures.pop(client, None)
        return times

    def locked_for(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: it may now)."""
        times = self._recent(client)
        if len(times) < self.limit:
            return 0
        return max(1, int(times[-self.limit] + self.lock_s - time.monotonic()) + 1)

    async def failed(self, client: str) -> None:
        """Count a wrong sign-in, then wait longer the more there were (doubling, up to ``max_delay_s``)."""
        if (
            len(self._failures) > 100_000
        ):  # a flood of addresses: drop the oldest counts, keep the memory bounded
            self._failures.clear()
        times = self._recent(client)
        times.append(time.monotonic())
        self._failures[client] = times
        over = len(times) - self.free
        if over > 0:
            await asyncio.sleep(min(self.max_delay_s, 0.25 * 2 ** (over - 1)))

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass(slots=True)
class WebState:
    admin: Sessions
    portal: Sessions
    throttle: SignInThrottle


def web_state(request: Request) -> WebState:
    """The app's sessions and throttle, made once from the server secret at the first page request."""
    state = getattr(request.app.state, "web", None)
    if state is None:
        services = request.app.state.services
        secret = services.secret
        state = request.app.state.web = WebState(
            # bound to the admin token too: starting with another token ends every control-room session
            admin=Sessions(
                secret + services.admin.fingerprint, cookie="aiplus_admin", path="/admin/ui", kind="admin"
            ),
            portal=Sessions(secret, cookie="aiplus_portal", path="/portal", kind="org"),
            throttle=SignInThrottle(),
        )
    return state
