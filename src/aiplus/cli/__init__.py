"""The ``aiplus`` command: a thin shell over the library; the admin API calls the same service functions.

One module per room registers its commands (``register(sub)``); ``shell`` holds what they share.
"""

from __future__ import annotations

import argparse
import logging

from aiplus.cli import adoption, billing, demo, responses, serve, tenancy, usage, vouchers
from aiplus.cli.shell import command

GROUPS = (serve, tenancy, usage, billing, vouchers, responses, adoption, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiplus", description="Open-weight AI as a public utility.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "own_logging", False):  # the server sets up its own; here a warning is one line
        logging.basicConfig(format="aiplus: warning: %(message)s", level=logging.WARNING)
    return command(args.func)(args)
