"""``aiplus orgs`` and ``aiplus keys``: the tenancy service functions the admin API calls, printed as tables."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiplus.cli.shell import (
    UserError,
    add_config_option,
    command,
    load_settings,
    money,
    open_database,
    print_table,
    when,
)
from aiplus.config import SECTORS
from aiplus.tenancy import changes


def _change(
    args: argparse.Namespace, change: Callable[..., Awaitable[dict]], *params: Any, **changed: Any
) -> dict:
    """Run a ``tenancy.changes`` function with a signal that reaches every server sharing this Redis (if any)."""
    from aiplus.storage.redis import create_redis

    settings, engine = load_settings(args), open_database(args)

    async def run() -> dict:
        redis = create_redis(settings.redis_url) if settings.redis_url else None
        try:
            return await change(engine, changes.Signal(redis, settings.redis_prefix), *params, **changed)
        finally:
            if redis is not None:
                await redis.aclose()

    return asyncio.run(run())


@command
def orgs_add(args: argparse.Namespace) -> None:
    from aiplus.tenancy.orgs import create_org

    settings, engine = load_settings(args), open_database(args)
    with engine.begin() as conn:
        org = create_org(
            conn,
            name=args.name,
            sector=args.sector,
            tier=args.tier,
            region=args.region,
            employees=args.employees,
            org_id=args.id,
            tiers=settings.tiers,
        )
    print(f"created organization {org['id']} ({org['sector']}, tier {org['tier']})")
    print(f"next: aiplus keys create {org['id']}")


@command
def orgs_list(args: argparse.Namespace) -> None:
    from aiplus.tenancy.orgs import list_orgs

    with open_database(args).connect() as conn:
        found = list_orgs(conn, sector=args.sector, tier=args.tier)
    columns = ["id", "name", "sector", "region", "employees", "size", "tier", "created"]
    rows = [
        [
            o["id"],
            o["name"],
            o["sector"],
            o["region"],
            o["employees"],
            o["size_class"],
            o["tier"],
            when(o["created_at"]),
        ]
        for o in found
    ]
    print_table("organizations", columns, rows)


@command
def orgs_show(args: argparse.Namespace) -> None:
    from aiplus.metering.usage import query_usage, totals
    from aiplus.tenancy.keys import list_keys
    from aiplus.tenancy.orgs import require_org

    settings, engine = load_settings(args), open_database(args)
    with engine.connect() as conn:
        org = require_org(conn, args.id)
        keys = list_keys(conn, args.id)
        month = datetime.now(UTC).date().replace(day=1)
        used = totals(query_usage(conn, org_id=args.id, start=month, group_by="month"))
    tier = next((t for t in settings.tiers if t.name == org["tier"]), None)
    quota = tier.monthly_token_quota if tier else None
    rows = [[k, v] for k, v in org.items() if k != "created_at"] + [
        ["created", when(org["created_at"])],
        ["tokens this month", f"{used['total_tokens']}" + (f" of {quota}" if quota else "")],
        ["cost this month", money(used["cost_micros"])],
    ]
    print_table(f"organization {org['id']}", ["field", "value"], rows)
    _print_keys(keys, f"API keys of {org['id']}")


@command
def orgs_update(args: argparse.Namespace) -> None:
    fields = {"tier": args.tier, "name": args.name, "region": args.region, "employees": args.employees}
    changed = {k: v for k, v in fields.items() if v is not None}
    org = _change(args, changes.update_org, args.id, tiers=load_settings(args).tiers, **changed)
    print(f"organization {org['id']}: tier {org['tier']}, {org['sector']}, {org['size_class'] or '-'}")


def _print_keys(keys: list[dict], title: str) -> None:
    columns = ["id", "org", "key", "name", "models", "created", "expires", "revoked"]
    rows = [
        [
            k["id"],
            k["org_id"],
            k["prefix"] + "…",
            k["name"],
            ",".join(k["models"]) if k["models"] else "all",
            when(k["created_at"]),
            when(k["expires_at"]),
            when(k["revoked_at"]),
        ]
        for k in keys
    ]
    print_table(title, columns, rows)


@command
def keys_create(args: argparse.Namespace) -> None:
    from aiplus.tenancy.keys import create_key
    from aiplus.tenancy.secrets import server_secret

    settings, engine = load_settings(args), open_database(args)
    try:
        expires = datetime.fromisoformat(args.expires) if args.expires else None
    except ValueError:
        raise UserError(f"--expires: not an ISO 8601 date or time: {args.expires!r}", 2) from None
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    with engine.begin() as conn:
        secret = server_secret(conn, settings.secret)
        row, key = create_key(conn, secret, args.org, name=args.name, expires_at=expires, models=args.model)
    print(f"created {row['id']} for {row['org_id']}. The key is shown only now; store it safely:")
    print(key)


@command
def keys_list(args: argparse.Namespace) -> None:
    from aiplus.tenancy.keys import list_keys
    from aiplus.tenancy.orgs import require_org

    with open_database(args).connect() as conn:
        if args.org:
            require_org(conn, args.org)
        keys = list_keys(conn, args.org)
    _print_keys(keys, "API keys")


@command
def keys_revoke(args: argparse.Namespace) -> None:
    key = _change(args, changes.revoke_key, args.key_id)
    print(f"revoked {key['id']} ({key['prefix']}…) of {key['org_id']} at {when(key['revoked_at'])}")


def register(sub: argparse._SubParsersAction) -> None:
    orgs = sub.add_parser("orgs", help="organizations: add, list, show, update")
    orgs_sub = orgs.add_subparsers(dest="orgs_command", required=True)
    p = add_config_option(orgs_sub.add_parser("add", help="create an organization"))
    p.add_argument("name")
    p.add_argument("--sector", required=True, choices=SECTORS)
    p.add_argument("--tier", default="standard", help="lifeline, standard, batch or a tier from the config")
    p.add_argument("--region", default="")
    p.add_argument("--employees", type=int, help="head count (sets the size class)")
    p.add_argument("--id", help="org id (default: a slug of the name)")
    p.set_defaults(func=orgs_add)
    p = add_config_option(orgs_sub.add_parser("list", help="list organizations"))
    p.add_argument("--sector", choices=SECTORS)
    p.add_argument("--tier")
    p.set_defaults(func=orgs_list)
    p = add_config_option(
        orgs_sub.add_parser("show", help="an organization, its keys and this month's usage")
    )
    p.add_argument("id")
    p.set_defaults(func=orgs_show)
    p = add_config_option(
        orgs_sub.add_parser("update", help="change tier, name, region or head count (servers see it at once)")
    )
    p.add_argument("id")
    p.add_argument("--tier")
    p.add_argument("--name")
    p.add_argument("--region")
    p.add_argument("--employees", type=int)
    p.set_defaults(func=orgs_update)

    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = add_config_option(keys_sub.add_parser("create", help="create a key (printed once)"))
    p.add_argument("org", help="org id")
    p.add_argument("--name", default="")
    p.add_argument("--expires", help="ISO 8601 date or time (UTC if no offset)")
    p.add_argument("--model", action="append", help="allow only this model (repeatable; default: all)")
    p.set_defaults(func=keys_create)
    p = add_config_option(keys_sub.add_parser("list", help="list keys (never their values)"))
    p.add_argument("org", nargs="?", help="only this org's keys")
    p.set_defaults(func=keys_list)
    p = add_config_option(
        keys_sub.add_parser("revoke", help="revoke a key (servers reject it at once with Redis)")
    )
    p.add_argument("key_id")
    p.set_defaults(func=keys_revoke)
