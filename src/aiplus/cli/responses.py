"""``aiplus responses``: stored Responses API state — storage per organization, and the purge of expired responses
(the admin API's ``/admin/responses/storage`` reads the same function)."""

from __future__ import annotations

import argparse

from aiplus.cli.shell import add_config_option, command, open_database, print_table


@command
def storage(args: argparse.Namespace) -> None:
    from aiplus.responses.store import storage_by_org

    with open_database(args).connect() as conn:
        rows = storage_by_org(conn, args.org)
    body = [[r["org_id"], r["responses"], r["bytes"], r["expired"]] for r in rows]
    print_table("stored responses", ["org", "responses", "bytes", "expired (awaiting purge)"], body)


@command
def purge(args: argparse.Namespace) -> None:
    from aiplus.responses.store import purge as purge_expired

    with open_database(args).begin() as conn:
        removed = purge_expired(conn)
    print(f"purged {removed} expired response(s)")


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("responses", help="stored Responses API responses: storage, purge")
    group_sub = group.add_subparsers(dest="responses_command", required=True)
    p = add_config_option(
        group_sub.add_parser("storage", help="stored responses and their bytes per organization")
    )
    p.add_argument("--org")
    p.set_defaults(func=storage)
    p = add_config_option(
        group_sub.add_parser("purge", help="delete the responses older than responses_retention_days")
    )
    p.set_defaults(func=purge)
