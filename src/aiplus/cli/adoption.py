"""``aiplus registry`` and ``aiplus adoption``: the register (the denominator) and the adoption report, the same
report the admin API serves."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from aiplus.adoption.report import BACKTEST_ORIGINS
from aiplus.cli.shell import UserError, add_config_option, command, load_settings, open_database


@command
def registry_import(args: argparse.Namespace) -> None:
    from aiplus.adoption.register import import_register, registered_tenants

    with open_database(args).begin() as conn:
        result = import_register(conn, args.file)
        matched = registered_tenants(conn)
    print(f"register: {result.rows} row(s) read, {result.inserted} added, {result.updated} updated")
    print(f"{matched} tenant organization(s) are in the register (matched by id)")


@command
def registry_observations(args: argparse.Namespace) -> None:
    from aiplus.adoption.register import import_observations

    with open_database(args).begin() as conn:
        result = import_observations(conn, args.file)
    print(f"observations: {result.rows} row(s) read, {result.inserted} added, {result.updated} replaced")


def _as_of(args: argparse.Namespace) -> date | None:
    try:
        return date.fromisoformat(args.as_of) if args.as_of else None
    except ValueError:
        raise UserError(f"--as-of: not a date (YYYY-MM-DD): {args.as_of!r}", 2) from None


def _origins(value: int, least: int) -> int:
    from aiplus.adoption.report import MAX_ORIGINS

    if not least <= value <= MAX_ORIGINS:
        raise UserError(f"back-test origins must be {least} to {MAX_ORIGINS}, not {value}", 2)
    return value


def _report(args: argparse.Namespace):
    from aiplus.adoption.report import build_report

    as_of, origins = _as_of(args), _origins(args.backtest, 0)
    settings, engine = load_settings(args), open_database(args)
    with engine.connect() as conn:
        report = build_report(
            conn, settings.adoption, by=args.by, as_of=as_of, fit_on=args.fit_on, backtest_origins=origins
        )
    if not report.total.latest.orgs:
        print(
            "aiplus: the register is empty, so there is no denominator: "
            "aiplus registry import FILE.csv, or aiplus demo seed to try it",
            file=sys.stderr,
        )
    return report


@command
def adoption_report(args: argparse.Namespace) -> None:
    import json

    from rich.console import Console

    from aiplus.adoption.report import to_csv, to_rich_table

    report = _report(args)
    if args.format == "json":
        print(json.dumps(report.as_dict(band=args.band), indent=2, default=str))
    elif args.format == "csv":
        sys.stdout.write(to_csv(report))
    else:
        Console(width=None if sys.stdout.isatty() else 240).print(to_rich_table(report))


@command
def adoption_chart(args: argparse.Namespace) -> None:
    from aiplus.adoption.charts import chart_path, write_chart

    try:
        out = chart_path(args.out)
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    path = write_chart(_report(args), out)
    print(f"chart written to {path}")


@command
def adoption_refresh(args: argparse.Namespace) -> None:
    from aiplus.adoption.penetration import Definition
    from aiplus.adoption.report import refresh_snapshots

    definition = Definition.from_config(load_settings(args).adoption)
    with open_database(args).connect() as conn:
        stored = refresh_snapshots(conn, definition, rebuild=args.rebuild)
    print(f"stored the window sums of {stored} settled month(s)")


@command
def adoption_backtest(args: argparse.Namespace) -> None:
    import json

    from rich.console import Console

    from aiplus.adoption.backtest import backtest_table
    from aiplus.adoption.report import build_backtest

    as_of, origins = _as_of(args), _origins(args.origins, 1)
    settings, engine = load_settings(args), open_database(args)
    with engine.connect() as conn:
        results = build_backtest(conn, settings.adoption, by=args.by, as_of=as_of, origins=origins)
    if args.format == "json":
        print(json.dumps({measure: r.as_dict() for measure, r in results.items()}, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(backtest_table(results))


def register(sub: argparse._SubParsersAction) -> None:
    registry = sub.add_parser("registry", help="the register of organizations in scope (the denominator)")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    p = registry_sub.add_parser("import", help="import FILE.csv with columns id,name,sector,region,employees")
    p.add_argument("file", metavar="FILE.csv")
    add_config_option(p).set_defaults(func=registry_import)
    p = registry_sub.add_parser(
        "observations",
        help="import external penetration figures: FILE.csv with sector,date,penetration,source",
    )
    p.add_argument("file", metavar="FILE.csv")
    add_config_option(p).set_defaults(func=registry_observations)

    adoption = sub.add_parser("adoption", help="AI adoption: penetration, forecasts and target status")
    adoption_sub = adoption.add_subparsers(dest="adoption_command", required=True)
    p = adoption_sub.add_parser(
        "report", help="penetration by sector, region or size with forecasts and target status"
    )
    _report_options(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--no-band", dest="band", action="store_false", help="JSON: leave out the monthly band")
    p.set_defaults(func=adoption_report)
    p = adoption_sub.add_parser("chart", help="penetration curves, forecast bands and targets as PNG or SVG")
    p.add_argument("out", metavar="OUT.png|OUT.svg")
    _report_options(p)
    p.set_defaults(func=adoption_chart)
    p = adoption_sub.add_parser(
        "refresh", help="store the window sums of settled months (reports then read them)"
    )
    p.add_argument("--rebuild", action="store_true", help="sum every settled month again (after late events)")
    add_config_option(p).set_defaults(func=adoption_refresh)
    p = adoption_sub.add_parser(
        "backtest",
        help="refit the forecasts as of each of the last N months and score the 6- and 12-month-ahead ones",
    )
    p.add_argument("--by", choices=("sector", "region", "size"), default="sector")
    p.add_argument("--as-of", metavar="YYYY-MM-DD", help="measure up to the last complete month at this date")
    p.add_argument("--origins", type=int, default=BACKTEST_ORIGINS, metavar="N", help="months to refit as of")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_config_option(p).set_defaults(func=adoption_backtest)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", choices=("sector", "region", "size"), default="sector")
    p.add_argument("--as-of", metavar="YYYY-MM-DD", help="measure up to the last complete month at this date")
    p.add_argument(
        "--fit-on",
        choices=("ledger", "observations", "both"),
        default="ledger",
        help="series the forecasts are fitted on (default: the ledger's monthly penetration)",
    )
    p.add_argument(
        "--backtest",
        type=int,
        default=BACKTEST_ORIGINS,
        metavar="N",
        help=f"show each forecast's back-tested error over the last N months (default {BACKTEST_ORIGINS}; 0: none)",
    )
    add_config_option(p)
