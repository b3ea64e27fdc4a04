"""``aiplus bill`` and ``aiplus tariff`` (issue 11): thin shells over aiplus.billing (the API calls the same).

Pending move: this is ``cli/billing.py`` of the CLI package (``register(sub)`` per the contract); it lives here
until the package lands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiplus.cli.shell import UserError, add_config_option, command, load_settings, open_database, print_table
from aiplus.cli.vouchers import register_claims

STATEMENT_FORMATS = ("table", "csv", "json", "html")
REPORT_FORMATS = ("table", "csv", "json")


def _emit(args: argparse.Namespace, rendered) -> None:
    """Print tables, or write text to --out (or stdout)."""
    if isinstance(rendered, list):
        for title, columns, rows in rendered:
            print_table(title, columns, rows)
        return
    if getattr(args, "out", None):
        Path(args.out).write_text(rendered)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(rendered)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


@command
def tariff_adopt(args: argparse.Namespace) -> None:
    from aiplus.billing.versions import adopt_tariff

    tiers = [t.name for t in load_settings(args).tiers]
    with open_database(args).begin() as conn:
        version = adopt_tariff(conn, _read(args.file), getattr(args, "from"), tiers)
    print(
        f"adopted tariff version {version['id']} ({version['name']}), in force from "
        f"{version['effective_from'].isoformat()}"
    )


@command
def tariff_list(args: argparse.Namespace) -> None:
    from aiplus.billing.versions import list_tariffs

    with open_database(args).connect() as conn:
        versions = list_tariffs(conn)
    rows = [
        [
            v["id"],
            v["name"],
            v["currency"],
            v["timezone"],
            v["effective_from"].isoformat(),
            v["until"].isoformat() if v["until"] else "in force",
            v["digest"][:12],
        ]
        for v in versions
    ]
    print_table("tariff versions", ["id", "name", "currency", "time zone", "from", "until", "sha-256"], rows)


@command
def tariff_show(args: argparse.Namespace) -> None:
    from aiplus.billing.versions import show_tariff

    with open_database(args).connect() as conn:
        version = show_tariff(conn, args.id)
    print(f"# version {version['id']}, in force from {version['effective_from'].isoformat()}")
    sys.stdout.write(version["document"])


@command
def tariff_simulate(args: argparse.Namespace) -> None:
    from aiplus.billing.render import simulation_csv, to_json
    from aiplus.billing.simulate import simulate, simulation_tables

    settings = load_settings(args)
    with open_database(args).connect() as conn:
        sim = simulate(conn, _read(args.file), args.month, [t.name for t in settings.tiers], settings.billing)
    fmt = args.format
    _emit(
        args,
        to_json(sim) if fmt == "json" else simulation_csv(sim) if fmt == "csv" else simulation_tables(sim),
    )


@command
def bill(args: argparse.Namespace) -> None:
    from aiplus.billing.render import render_statements
    from aiplus.billing.statements import statements

    with open_database(args).connect() as conn:
        docs = statements(conn, args.month, args.org)
    _emit(args, render_statements(docs, args.format))


@command
def bill_close(args: argparse.Namespace) -> None:
    from aiplus.billing.render import money
    from aiplus.billing.statements import close_month

    with open_database(args).begin() as conn:
        done = close_month(conn, args.month)
    print(
        f"closed {done['month']}: {done['statements']:,} statements frozen, {done['adjustments']:,} adjustments "
        f"booked, {money(done['amount_due_micros'])} due"
    )


@command
def bill_balance(args: argparse.Namespace) -> None:
    from aiplus.billing.balance import balance, balance_tables
    from aiplus.billing.render import balance_csv, to_json

    settings = load_settings(args)
    with open_database(args).connect() as conn:
        report = balance(conn, args.month, settings.billing)
    fmt = args.format
    _emit(
        args,
        to_json(report) if fmt == "json" else balance_csv(report) if fmt == "csv" else balance_tables(report),
    )


def register(sub: argparse._SubParsersAction) -> None:
    tariff = sub.add_parser(
        "tariff", help="utility tariffs: versioned documents adopted with an effective date"
    )
    tsub = tariff.add_subparsers(dest="tariff_command", required=True)
    p = add_config_option(
        tsub.add_parser("adopt", help="validate and adopt a tariff (TOML); never edited afterwards")
    )
    p.add_argument("file", help="the tariff document (see docs/tariffs.md)")
    p.add_argument(
        "--from", required=True, metavar="DATE", help="in force from this day's midnight in its time zone"
    )
    p.set_defaults(func=tariff_adopt)
    p = add_config_option(tsub.add_parser("list", help="every adopted version, oldest first"))
    p.set_defaults(func=tariff_list)
    p = add_config_option(tsub.add_parser("show", help="one version's document (default: the one in force)"))
    p.add_argument("id", nargs="?", help="version id")
    p.set_defaults(func=tariff_show)
    p = add_config_option(tsub.add_parser("simulate", help="reprice a past month under a proposed tariff"))
    p.add_argument("file", help="the proposed tariff (TOML)")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--format", choices=REPORT_FORMATS, default="table")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=tariff_simulate)

    billp = add_config_option(
        sub.add_parser("bill", help="balance-forward statements per organization and month")
    )
    billp.add_argument("--month", help="YYYY-MM in the tariff's time zone (default: this month)")
    billp.add_argument("--org", help="one organization (default: all)")
    billp.add_argument("--format", choices=STATEMENT_FORMATS, default="table")
    billp.add_argument("--out", help="write to this file instead of stdout (e.g. statements.html)")
    billp.set_defaults(func=bill)
    bsub = billp.add_subparsers(dest="bill_command")
    p = add_config_option(
        bsub.add_parser("close", help="freeze a finished month's statements (months close in order)")
    )
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.set_defaults(func=bill_close)
    p = add_config_option(
        bsub.add_parser("balance", help="the regulator's view: revenue, lifeline, subsidies, affordability")
    )
    p.add_argument("--month", help="YYYY-MM (default: this month)")
    p.add_argument("--format", choices=REPORT_FORMATS, default="table")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=bill_balance)
    register_claims(bsub)
