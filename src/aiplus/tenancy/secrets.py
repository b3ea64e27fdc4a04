"""The server secret (HMAC key for API keys), the admin token, and the auth version that signals revocations."""

from __future__ import annotations

import hashlib
import hmac
import secrets as pysecrets
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from aiplus.storage.db import transaction
from aiplus.storage.tables import secrets

SERVER_SECRET = "server_secret"
ADMIN_TOKEN_DIGEST = "admin_token_digest"
AUTH_VERSION = "auth_version"
ADMIN_TOKEN_PREFIX = "aipadm_"


def get_secret(conn: sa.Connection, name: str) -> str | None:
    return conn.execute(sa.select(secrets.c.value).where(secrets.c.name == name)).scalar()


def put_secret_if_absent(conn: sa.Connection, name: str, value: str) -> str:
    """Store ``value`` unless another process stored one first; return the value that won."""
    existing = get_secret(conn, name)
    if existing is not None:
        return existing
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(secrets).values(name=name, value=value).on_conflict_do_nothing())
    return get_secret(conn, name)


def server_secret(conn: sa.Connection, configured: str | None = None) -> bytes:
    """The HMAC key for API key digests: ``AIPLUS_SECRET`` if set, else one generated once and kept in the DB."""
    if configured:
        return configured.encode()
    with transaction(conn):
        return put_secret_if_absent(conn, SERVER_SECRET, pysecrets.token_urlsafe(32)).encode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminAuth:
    """Checks the admin token in constant time against a digest kept in memory."""

    def __init__(self, digest: str):
        self._digest = bytes.fromhex(digest)

    @property
    def fingerprint(self) -> bytes:
        """The token's digest: what browser sessions are bound to, so a new admin token ends them all."""
        return self._digest

    def check(self, token: str | None) -> bool:
        if not token or token.startswith("aip_"):  # org keys never reach admin routes
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)


def admin_auth(conn: sa.Connection, configured: str | None = None) -> tuple[AdminAuth, str | None]:
    """The admin check, and the plaintext token when it was generated just now (to be printed once)."""
    if configured:
        return AdminAuth(token_digest(configured)), None
    with transaction(conn):
        token = ADMIN_TOKEN_PREFIX + pysecrets.token_urlsafe(32)
        digest = token_digest(token)
        stored = put_secret_if_absent(conn, ADMIN_TOKEN_DIGEST, digest)
    return AdminAuth(stored), token if stored == digest else None


def bump_auth_version(conn: sa.Connection) -> str:
    """Mark that a key or org changed; every process polls this and revalidates its cached keys."""
    version = uuid.uuid4().hex
    with transaction(conn):
        updated = conn.execute(secrets.update().where(secrets.c.name == AUTH_VERSION).values(value=version))
        if updated.rowcount == 0:
            put_secret_if_absent(conn, AUTH_VERSION, version)
            conn.execute(secrets.update().where(secrets.c.name == AUTH_VERSION).values(value=version))
    return version


def auth_version(conn: sa.Connection) -> str | None:
    return get_secret(conn, AUTH_VERSION)
