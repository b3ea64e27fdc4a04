"""``aiplus adoption backtest``: how far to trust the adoption forecasts (issue 13).

Pending: written against the CLI package contract (``aiplus.cli.shell``) while that package is being built; the
lead calls ``add_backtest(adoption_sub)`` from ``cli/adoption.py``'s ``register`` after merging, then folds this
module into it. The work is ``adoption.report.build_backtest`` and ``adoption.backtest.backtest_table``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date

from aiplus.cli.shell import UserError, add_config_option, command, load_settings, open_database


def add_backtest(adoption_sub: argparse._SubParsersAction) -> None:
    """Add ``backtest`` to the ``adoption`` group's subparsers."""
    from aiplus.adoption.penetration import CUTS
    from aiplus.adoption.report import BACKTEST_ORIGINS

    p = adoption_sub.add_parser(
        "backtest",
        help="refit the forecasts as of each of the last N months and score the 6- and 12-month-ahead ones",
    )
    p.add_argument("--by", choices=tuple(CUTS), default="sector")
    p.add_argument("--as-of", metavar="YYYY-MM-DD", help="measure up to the last complete month at this date")
    p.add_argument(
        "--origins",
        type=int,
        default=BACKTEST_ORIGINS,
        metavar="N",
        help=f"months to refit as of (default {BACKTEST_ORIGINS})",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_config_option(p)
    p.set_defaults(func=command(adoption_backtest))


def adoption_backtest(args) -> int:
    from rich.console import Console

    from aiplus.adoption.backtest import backtest_table
    from aiplus.adoption.report import MAX_ORIGINS, build_backtest

    if not 1 <= args.origins <= MAX_ORIGINS:
        raise UserError(f"--origins must be 1 to {MAX_ORIGINS}, not {args.origins}")
    try:
        as_of = date.fromisoformat(args.as_of) if args.as_of else None
    except ValueError:
        raise UserError(f"--as-of must be a date YYYY-MM-DD, not {args.as_of!r}") from None
    settings = load_settings(args)
    engine = open_database(args)
    with engine.connect() as conn:
        results = build_backtest(conn, settings.adoption, by=args.by, as_of=as_of, origins=args.origins)
    if args.format == "json":
        print(json.dumps({m: r.as_dict() for m, r in results.items()}, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(backtest_table(results))
    return 0
