"""What every command shares: the one user-error type, the one place failures become a message and an exit code,
the one ``--config`` option, settings and the migrated database, and tables."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from aiplus import config
from aiplus.adoption.register import ImportRejected
from aiplus.billing.errors import BillingError
from aiplus.tenancy.errors import TenancyError

Handler = Callable[[argparse.Namespace], "int | None"]


class UserError(Exception):
    """A failure the user can fix (bad input, unknown id): printed as one line, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _failure(exc: Exception) -> UserError | None:
    """The user-facing form of the rooms' own errors; None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, config.ConfigError):
        return UserError(f"configuration: {exc}", 2)
    if isinstance(exc, TenancyError):
        return UserError(exc.message)
    if isinstance(exc, ImportRejected):
        return UserError(str(exc))
    if isinstance(exc, BillingError):  # bad input (a tariff's field) exits 2, a refused operation 1
        return UserError(exc.message, 2 if exc.status == 400 else 1)
    if isinstance(exc, sa.exc.OperationalError):
        return UserError(f"the database cannot be used: {exc.orig}")
    return None


def command(fn: Handler) -> Handler:
    """Run a handler; its user errors print as ``aiplus: error: <message>`` on stderr and give the exit code."""
    if getattr(fn, "__aiplus_command__", False):
        return fn

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            print(f"aiplus: error: {failure.message}", file=sys.stderr)
            return failure.exit_code

    run.__aiplus_command__ = True  # type: ignore[attr-defined]
    return run


def add_config_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="path to aiplus.toml (default: $AIPLUS_CONFIG)")
    return parser


def load_settings(args: argparse.Namespace, **overrides: Any) -> config.Settings:
    """Settings from ``--config`` (or $AIPLUS_CONFIG), the AIPLUS_* variables and ``overrides``."""
    return config.load_settings(args.config, **overrides)


def open_database(args: argparse.Namespace) -> sa.Engine:
    """The database the settings name, migrated: what every admin command starts with."""
    from aiplus.storage.db import create_engine, migrate

    engine = create_engine(load_settings(args).db_url)
    migrate(engine)
    return engine


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout; None prints as empty. Piped output is not wrapped, so ids stay whole."""
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    Console(width=None if sys.stdout.isatty() else 200).print(out)


def when(value: datetime | None) -> str | None:
    """A timestamp as shown in tables: UTC, to the minute."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def money(micros: int) -> str:
    """Micro-units as a decimal amount with six places (exact: integers only)."""
    sign = "-" if micros < 0 else ""
    return f"{sign}{abs(micros) // 1_000_000}.{abs(micros) % 1_000_000:06d}"
