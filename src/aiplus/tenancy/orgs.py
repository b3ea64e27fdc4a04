"""Organizations: who draws from the utility, their sector, size class and tier."""

from __future__ import annotations

import re
import secrets as pysecrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from aiplus.config import DEFAULT_TIERS, SECTORS, TierConfig
from aiplus.storage.db import row_dict, transaction
from aiplus.storage.tables import orgs
from aiplus.tenancy.errors import Conflict, Invalid, NotFound

SIZE_CLASSES = ("micro", "small", "medium", "large")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def size_class(employees: int | None) -> str | None:
    """EU size classes by head count: micro < 10, small 10-49, medium 50-249, large >= 250."""
    if employees is None:
        return None
    if employees < 10:
        return "micro"
    if employees < 50:
        return "small"
    if employees < 250:
        return "medium"
    return "large"


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]
    return slug or "org"


def _row(row: sa.Row | None) -> dict | None:
    if row is None:
        return None
    out = row_dict(row)
    if out["created_at"] is not None and out["created_at"].tzinfo is None:
        out["created_at"] = out["created_at"].replace(tzinfo=UTC)
    return out


def _check_tier(tier: str, tiers: Sequence[TierConfig] | None) -> None:
    names = [t.name for t in (tiers or DEFAULT_TIERS)]
    if tier not in names:
        raise Invalid(f"unknown tier {tier!r}; known tiers: {', '.join(names)}", "tier")


def create_org(
    conn: sa.Connection,
    *,
    name: str,
    sector: str,
    tier: str = "standard",
    region: str = "",
    employees: int | None = None,
    org_id: str | None = None,
    tiers: Sequence[TierConfig] | None = None,
) -> dict:
    """Create an organization; its id is ``org_id`` or a slug of the name. Raises Invalid or Conflict."""
    name = (name or "").strip()
    if not name:
        raise Invalid("an organization needs a name", "name")
    if sector not in SECTORS:
        raise Invalid(f"unknown sector {sector!r}; known sectors: {', '.join(SECTORS)}", "sector")
    _check_tier(tier, tiers)
    if employees is not None and employees < 0:
        raise Invalid("employees cannot be negative", "employees")
    if org_id is not None and not _ID.match(org_id):
        raise Invalid("an org id is 1-64 characters of a-z, 0-9, '-' and '_'", "id")
    row = {
        "name": name,
        "sector": sector,
        "region": region or "",
        "employees": employees,
        "size_class": size_class(employees),
        "tier": tier,
        "created_at": datetime.now(UTC),
    }
    with transaction(conn):
        if org_id is None:
            org_id = _slug(name)
            if get_org(conn, org_id) is not None:
                org_id = f"{org_id[:55]}-{pysecrets.token_hex(4)}"
        elif get_org(conn, org_id) is not None:
            raise Conflict(f"organization {org_id!r} already exists", "id")
        conn.execute(orgs.insert().values(id=org_id, **row))
    return {"id": org_id, **row}


def get_org(conn: sa.Connection, org_id: str) -> dict | None:
    return _row(conn.execute(sa.select(orgs).where(orgs.c.id == org_id)).first())


def require_org(conn: sa.Connection, org_id: str) -> dict:
    org = get_org(conn, org_id)
    if org is None:
        raise NotFound(f"no organization {org_id!r}", "org_id")
    return org


def list_orgs(
    conn: sa.Connection,
    *,
    sector: str | None = None,
    tier: str | None = None,
    region: str | None = None,
    size_class: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Organizations by id, filtered by any of sector, tier, region and size class; at most ``limit``."""
    query = sa.select(orgs).order_by(orgs.c.id)
    for column, value in (
        (orgs.c.sector, sector),
        (orgs.c.tier, tier),
        (orgs.c.region, region),
        (orgs.c.size_class, size_class),
    ):
        if value:
            query = query.where(column == value)
    if limit is not None:
        query = query.limit(limit)
    return [_row(r) for r in conn.execute(query)]


def org_facets(conn: sa.Connection) -> dict[str, list[str]]:
    """The regions in use (for filter choices), sorted."""
    regions = conn.execute(sa.select(orgs.c.region).distinct().order_by(orgs.c.region)).scalars()
    return {"regions": [r for r in regions if r]}


def update_org(
    conn: sa.Connection,
    org_id: str,
    *,
    tier: str | None = None,
    name: str | None = None,
    region: str | None = None,
    employees: int | None = None,
    tiers: Sequence[TierConfig] | None = None,
) -> dict:
    """Change an org's tier (or name, region, head count). Cached keys of the org are refreshed on next use."""
    from aiplus.tenancy.secrets import bump_auth_version

    values: dict = {}
    if tier is not None:
        _check_tier(tier, tiers)
        values["tier"] = tier
    if name is not None:
        if not name.strip():
            raise Invalid("an organization needs a name", "name")
        values["name"] = name.strip()
    if region is not None:
        values["region"] = region
    if employees is not None:
        if employees < 0:
            raise Invalid("employees cannot be negative", "employees")
        values["employees"] = employees
        values["size_class"] = size_class(employees)
    with transaction(conn):
        require_org(conn, org_id)
        if values:
            conn.execute(orgs.update().where(orgs.c.id == org_id).values(**values))
            bump_auth_version(conn)
        return require_org(conn, org_id)
