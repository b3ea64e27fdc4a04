"""``aiplus usage``: usage by day or month from the ledger's daily rollups (the admin API's ``/admin/usage``)."""

from __future__ import annotations

import argparse

from aiplus.cli.shell import UserError, add_config_option, command, money, open_database, print_table
from aiplus.config import SECTORS, SERVICE_TIERS


@command
def usage(args: argparse.Namespace) -> None:
    from aiplus.metering.usage import parse_day, query_usage, totals, totals_by_service_tier

    try:
        start, end = parse_day(args.since, "--since"), parse_day(args.until, "--until")
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    with open_database(args).connect() as conn:
        rows = query_usage(
            conn,
            org_id=args.org,
            model=args.model,
            sector=args.sector,
            tier=args.tier,
            start=start,
            end=end,
            group_by=args.by,
            service_tier=args.service_tier,
            by_service_tier=args.by_service_tier,
        )
    split = args.by_service_tier
    body = [
        [r["period"], r["org_id"], r["model"], *([r["service_tier"]] if split else []), *_counts(r)]
        + [money(r["cost_micros"])]
        for r in rows
    ]
    if split:  # a total per service tier, then the grand total
        for name, t in totals_by_service_tier(rows).items():
            if t["requests"]:
                body.append(["total", "", "", name, *_counts(t), money(t["cost_micros"])])
    t = totals(rows)
    body.append(["total", "", "", *([""] if split else []), *_counts(t), money(t["cost_micros"])])
    columns = [args.by, "org", "model", *(["service tier"] if split else [])]
    columns += ["requests", "failed", "tools", "prompt", "completion", "cost"]
    print_table("usage (from the daily rollups, UTC)", columns, body)


def _counts(r: dict) -> list[int]:
    return [
        r["requests"],
        r["failed_requests"],
        r["tool_requests"],
        r["prompt_tokens"],
        r["completion_tokens"],
    ]


def register(sub: argparse._SubParsersAction) -> None:
    p = add_config_option(
        sub.add_parser("usage", help="usage by day or month, from the ledger's daily rollups")
    )
    p.add_argument("--org")
    p.add_argument("--model")
    p.add_argument("--sector", choices=SECTORS)
    p.add_argument("--tier")
    p.add_argument("--since", help="first day, inclusive (YYYY-MM-DD, UTC)")
    p.add_argument("--until", help="last day, inclusive")
    p.add_argument("--by", choices=("day", "month"), default="day")
    p.add_argument("--service-tier", choices=SERVICE_TIERS, help="only requests served in this service tier")
    p.add_argument(
        "--by-service-tier", action="store_true", help="a row per service tier, and a total for each"
    )
    p.set_defaults(func=usage)
