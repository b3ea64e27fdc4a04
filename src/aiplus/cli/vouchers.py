"""``aiplus vouchers`` and ``aiplus bill claims`` (issue 12): thin shells over aiplus.billing (the API calls the same).

Money on the command line is written in currency units with up to six decimals (``--pool 600000000``,
``--amount 12.5``) and handed to the library as integer micro-units; shares as decimals (``--share 0.3``).
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from aiplus.cli.shell import UserError, add_config_option, command, open_database, print_table

MICROS = 1_000_000


def micros(value: str | None, flag: str) -> int | None:
    """A currency amount (``12.5``) as integer micro-units, exactly."""
    if value is None:
        return None
    try:
        scaled = Decimal(value) * MICROS
    except InvalidOperation:
        raise UserError(f"{flag} must be an amount like 1000 or 12.50, not {value!r}", 2) from None
    if scaled != scaled.to_integral_value() or not scaled.is_finite():
        raise UserError(f"{flag} has more than six decimals ({value})", 2)
    return int(scaled)


def _money(value: int | None) -> str:
    from aiplus.billing.render import money

    return "—" if value is None else money(value)


@command
def programme_add(args: argparse.Namespace) -> None:
    from aiplus.billing.programmes import add_programme
    from aiplus.billing.render import share

    spec = {
        "id": args.id,
        "name": args.name or args.id,
        "funder": args.funder,
        "pool_micros": micros(args.pool, "--pool"),
        "share": args.share,
        "cap_month_micros": micros(args.cap_month, "--cap-month"),
        "cap_year_micros": micros(args.cap_year, "--cap-year"),
        "valid_from": getattr(args, "from"),
        "valid_until": args.until,
        "sectors": args.sectors,
        "sizes": args.sizes,
        "regions": args.regions,
        "models": args.models,
        "stacks": args.stacks,
        "max_combined_share": args.max_combined,
    }
    with open_database(args).begin() as conn:
        p = add_programme(conn, spec)
    print(
        f"added programme {p['id']} ({p['funder']}): pool {_money(p['pool_micros'])}, share {share(p['share_bp'])}"
    )


@command
def programme_list(args: argparse.Namespace) -> None:
    from aiplus.billing.programmes import list_programmes
    from aiplus.billing.render import share

    with open_database(args).connect() as conn:
        rows = [
            [
                p["id"],
                p["funder"],
                share(p["share_bp"]),
                _money(p["pool_micros"]),
                _money(p["pool_left_micros"]),
                _money(p["cap_month_micros"]),
                _money(p["cap_year_micros"]),
                f"{p['valid_from']}..{p['valid_until']}",
                f"up to {share(p['max_combined_bp'])}" if p["stacks"] else "no",
            ]
            for p in list_programmes(conn)
        ]
    columns = ["id", "funder", "share", "pool", "pool left", "cap/month", "cap/year", "valid", "stacks"]
    print_table("voucher programmes (pool left after closed months)", columns, rows)


@command
def programme_show(args: argparse.Namespace) -> None:
    from aiplus.billing.claims import programme_statement
    from aiplus.billing.programmes import show_programme
    from aiplus.billing.render import to_json

    with open_database(args).connect() as conn:
        if args.month is None:
            print(to_json(show_programme(conn, args.id)), end="")
            return
        report = programme_statement(conn, args.id, args.month)
    if args.format == "json":
        print(to_json(report), end="")
        return
    title = f"{args.id} — {report['month']} ({report['status'] or 'no payments'})"
    summary = [
        ["disbursed", _money(report["disbursed_micros"])],
        ["pool left", _money(report["pool_left_micros"])],
    ]
    print_table(title, ["item", "amount"], summary)
    for dim in ("org", "sector", "region", "size"):
        rows = [[r[dim], r["organizations"], _money(r["amount_micros"])] for r in report[f"by_{dim}"]]
        print_table(f"disbursement by {dim}", [dim, "organizations", "amount"], rows)
    rows = [
        [v["id"], v["org_id"], v["expires_on"], _money(v["remaining_micros"])] for v in report["expiring"]
    ]
    print_table("vouchers expiring this month or the next", ["voucher", "org", "expires", "remaining"], rows)


@command
def voucher_issue(args: argparse.Namespace) -> None:
    from aiplus.billing.programmes import issue_voucher

    with open_database(args).begin() as conn:
        v = issue_voucher(
            conn,
            args.programme,
            args.org,
            micros(args.amount, "--amount"),
            args.expires,
            priority=args.priority,
            valid_from=getattr(args, "from"),
            note=args.note,
        )
    print(
        f"issued voucher {v['id']} of {v['programme']} to {v['org_id']}: {_money(v['amount_micros'])}, "
        f"valid {v['valid_from']}..{v['expires_on']}, priority {v['priority']}"
    )


@command
def voucher_list(args: argparse.Namespace) -> None:
    from aiplus.billing.programmes import list_vouchers

    with open_database(args).connect() as conn:
        found = list_vouchers(conn, programme_id=args.programme, org_id=args.org)
    rows = [
        [
            v["id"],
            v["programme"],
            v["org_id"],
            _money(v["amount_micros"]),
            _money(v["written_off_micros"]),
            _money(v["remaining_micros"]),
            v["priority"],
            f"{v['valid_from']}..{v['expires_on']}",
            v["revoked_on"] or "",
        ]
        for v in found
    ]
    columns = ["id", "programme", "org", "amount", "written off", "remaining", "priority", "valid", "revoked"]
    print_table("vouchers", columns, rows)


@command
def voucher_revoke(args: argparse.Namespace) -> None:
    from aiplus.billing.programmes import revoke_voucher

    with open_database(args).begin() as conn:
        v = revoke_voucher(conn, args.id, on=args.on)
    print(
        f"revoked voucher {v['id']} from {v['revoked_on']}; {_money(v['written_off_micros'])} stays written off"
    )


@command
def bill_claims(args: argparse.Namespace) -> None:
    from aiplus.billing.claims import verify_claim, write_claim

    if args.verify:
        result = verify_claim(args.verify)
        print(
            f"claim {result['programme']} {result['month']} verified: {result['rows']:,} rows, "
            f"charges {_money(result['charge_micros'])}, share {_money(result['share_micros'])}"
        )
        return
    if not (args.programme and args.month and args.out):
        raise UserError("--programme, --month and --out are required (or --verify DIR)", 2)
    with open_database(args).connect() as conn:
        manifest = write_claim(conn, args.programme, args.month, args.out)
    totals = manifest["totals"]
    print(
        f"wrote the {manifest['status']} claim of {args.programme} for {args.month} to {args.out}: "
        f"{totals['rows']:,} rows, {totals['organizations']:,} organizations, "
        f"share {_money(totals['share_micros'])} of charges {_money(totals['charge_micros'])}; "
        f"chain {manifest['chain'][:16]}"
    )


def register_claims(bill_sub: argparse._SubParsersAction) -> None:
    """``aiplus bill claims``: added to the ``bill`` group by cli/billing.py."""
    p = add_config_option(bill_sub.add_parser("claims", help="a voucher programme's claim pack for a month"))
    p.add_argument("--programme", help="the programme id")
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--out", help="directory to write usage.csv, statements/ and manifest.json into")
    p.add_argument("--verify", metavar="DIR", help="recompute a claim pack from its files instead")
    p.set_defaults(func=bill_claims)


def register(sub: argparse._SubParsersAction) -> None:
    vouchers = sub.add_parser("vouchers", help="funders' programmes and the compute vouchers they issue")
    vsub = vouchers.add_subparsers(dest="vouchers_command", required=True)
    programme = vsub.add_parser("programme", help="a funder's voucher programme")
    psub = programme.add_subparsers(dest="programme_command", required=True)
    p = add_config_option(psub.add_parser("add", help="add a programme (never edited afterwards)"))
    p.add_argument("id", help="a short id: lower-case letters, digits, '.', '_', '-'")
    p.add_argument("--name", help="a display name (default: the id)")
    p.add_argument("--funder", required=True, help="who pays, e.g. 'Shanghai Municipal Economy Commission'")
    p.add_argument("--pool", required=True, help="the money available, in currency units")
    p.add_argument("--share", required=True, help="the co-pay: the share of each eligible charge paid (0.3)")
    p.add_argument("--cap-month", help="the most it pays an organization a month")
    p.add_argument("--cap-year", help="the most it pays an organization a year")
    p.add_argument("--from", required=True, metavar="DATE", help="first valid local day")
    p.add_argument("--until", required=True, metavar="DATE", help="last valid local day")
    p.add_argument("--sectors", help="eligible sectors, comma-separated (default: any)")
    p.add_argument("--sizes", help="eligible size classes: micro,small,medium,large (default: any)")
    p.add_argument("--regions", help="eligible regions, comma-separated (default: any)")
    p.add_argument("--models", help="eligible models, comma-separated (default: any)")
    p.add_argument("--stacks", action="store_true", help="may pay beside other stacking programmes")
    p.add_argument("--max-combined", help="with --stacks: the most all programmes together pay (0.6)")
    p.set_defaults(func=programme_add)
    p = add_config_option(psub.add_parser("list", help="every programme and its pool left"))
    p.set_defaults(func=programme_list)
    p = add_config_option(psub.add_parser("show", help="a programme, or with --month its monthly statement"))
    p.add_argument("id")
    p.add_argument("--month", help="YYYY-MM: disbursement by org, sector, region, size; pool left; expiring")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=programme_show)

    p = add_config_option(vsub.add_parser("issue", help="issue a voucher to an organization"))
    p.add_argument("--programme", required=True)
    p.add_argument("--org", required=True)
    p.add_argument("--amount", required=True, help="in currency units")
    p.add_argument("--expires", required=True, metavar="DATE", help="the last local day it pays for")
    p.add_argument("--from", metavar="DATE", help="first local day it pays for (default: today)")
    p.add_argument("--priority", type=int, default=0, help="lower pays first (then the earlier expiry)")
    p.add_argument("--note", default="")
    p.set_defaults(func=voucher_issue)
    p = add_config_option(vsub.add_parser("list", help="vouchers with what they have paid and have left"))
    p.add_argument("--programme")
    p.add_argument("--org")
    p.set_defaults(func=voucher_list)
    p = add_config_option(vsub.add_parser("revoke", help="stop a voucher paying from a day on"))
    p.add_argument("id")
    p.add_argument("--on", metavar="DATE", help="from this local day (default: today)")
    p.set_defaults(func=voucher_revoke)
