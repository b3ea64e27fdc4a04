"""API keys: ``aip_`` + 32 random bytes, shown once, stored only as an HMAC-SHA256 digest under the server secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as pysecrets
from datetime import UTC, datetime

import sqlalchemy as sa

from aiplus.storage.db import row_dict, transaction
from aiplus.storage.tables import api_keys
from aiplus.tenancy.errors import Invalid, NotFound
from aiplus.tenancy.orgs import require_org
from aiplus.tenancy.secrets import bump_auth_version

KEY_PREFIX = "aip_"
DISPLAY_CHARS = 12  # "aip_" + 8 characters: enough to tell keys apart, far too few to guess one


def key_digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _public(row: sa.Row) -> dict:
    out = row_dict(row)
    out.pop("digest", None)
    out["models"] = json.loads(out["models"]) if out["models"] else None
    for name in ("created_at", "expires_at", "revoked_at"):
        out[name] = _utc(out[name])
    return out


def create_key(
    conn: sa.Connection,
    secret: bytes,
    org_id: str,
    *,
    name: str = "",
    expires_at: datetime | None = None,
    models: list[str] | None = None,
) -> tuple[dict, str]:
    """Create a key for ``org_id``; returns (its row without the digest, the plaintext key, shown only now)."""
    expires_at = _utc(expires_at)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise Invalid("expires_at must be in the future", "expires_at")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise Invalid("models must be a list of model ids", "models")
    plaintext = KEY_PREFIX + pysecrets.token_urlsafe(32)
    row = {
        "id": "key_" + pysecrets.token_hex(8),
        "org_id": org_id,
        "name": name or "",
        "prefix": plaintext[:DISPLAY_CHARS],
        "digest": key_digest(secret, plaintext),
        "models": json.dumps(sorted(set(models))) if models is not None else None,
        "created_at": datetime.now(UTC),
        "expires_at": expires_at,
        "revoked_at": None,
    }
    with transaction(conn):
        require_org(conn, org_id)
        conn.execute(api_keys.insert().values(**row))
    public = {k: v for k, v in row.items() if k != "digest"}
    public["models"] = sorted(set(models)) if models is not None else None
    return public, plaintext


def list_keys(conn: sa.Connection, org_id: str | None = None) -> list[dict]:
    query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if org_id is not None:
        query = query.where(api_keys.c.org_id == org_id)
    return [_public(r) for r in conn.execute(query)]


def get_key(conn: sa.Connection, key_id: str) -> dict | None:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
    return None if row is None else _public(row)


def revoke_key(conn: sa.Connection, key_id: str) -> tuple[dict, str]:
    """Revoke a key (revoking twice is harmless); returns (the key, its digest) so caches can drop it."""
    with transaction(conn):
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"no API key {key_id!r}", "key_id")
        if row.revoked_at is None:
            conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=datetime.now(UTC))
            )
            bump_auth_version(conn)
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
    return _public(row), row.digest


def lookup_digest(conn: sa.Connection, digest: str) -> dict | None:
    """The key with this digest joined with its org's tier and sector, or None."""
    from aiplus.storage.tables import orgs

    query = (
        sa.select(
            api_keys.c.id,
            api_keys.c.org_id,
            api_keys.c.models,
            api_keys.c.expires_at,
            api_keys.c.revoked_at,
            orgs.c.tier,
            orgs.c.sector,
        )
        .join(orgs, orgs.c.id == api_keys.c.org_id)
        .where(api_keys.c.digest == digest)
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    out = row_dict(row)
    out["models"] = json.loads(out["models"]) if out["models"] else None
    out["expires_at"] = _utc(out["expires_at"])
    out["revoked_at"] = _utc(out["revoked_at"])
    return out
