"""Billing months (``YYYY-MM`` in the tariff's time zone) and the instant one ends."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from aiplus.billing.errors import BillingError
from aiplus.billing.tariff import Tariff

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def parse_month(value: str | None, field: str = "month") -> str:
    if not isinstance(value, str) or not _MONTH.match(value.strip()):
        raise BillingError(f"{field} must be a month like 2026-11, not {value!r}", field)
    return value.strip()


def next_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:])
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def prev_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:])
    return f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"


def first_day(month: str) -> date:
    return date(int(month[:4]), int(month[5:]), 1)


def month_end(month: str, versions: list[tuple[datetime, Tariff]]) -> datetime:
    """The UTC instant ``month`` ends: midnight starting the next month in the zone of the version then in force."""
    following = first_day(next_month(month))
    zone = "UTC"
    for start, tariff in sorted(versions, key=lambda v: v[0]):
        local_midnight = datetime.combine(following, time(0), ZoneInfo(tariff.timezone)).astimezone(UTC)
        if start <= local_midnight:
            zone = tariff.timezone
    return datetime.combine(following, time(0), ZoneInfo(zone)).astimezone(UTC)
