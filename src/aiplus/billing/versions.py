"""Tariff versions: adopted with an effective date, stored as the document itself, never edited afterwards.

A version is in force from its ``effective_from`` (local midnight in its own time zone) until the next one
starts. A new version must start after the newest one, after the last closed month, and after every usage
event already recorded: adopting a tariff never reprices usage that has happened.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, time
from functools import lru_cache
from importlib import resources
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from aiplus.billing.errors import BillingError, Conflict, NotFound
from aiplus.billing.locks import serialize
from aiplus.billing.tariff import Tariff, parse_tariff
from aiplus.metering.tou import as_utc
from aiplus.storage.db import transaction
from aiplus.storage.tables import billing_months, tariff_versions, usage_events


def effective_instant(tariff: Tariff, day: date) -> datetime:
    """The UTC instant a version adopted ``--from day`` comes into force: that day's midnight in its time zone."""
    return datetime.combine(day, time(0), ZoneInfo(tariff.timezone)).astimezone(UTC)


def adopt_tariff(
    conn: sa.Connection, text: str, effective_from: date | str, tiers, *, now: datetime | None = None
) -> dict:
    """Validate and store a tariff version; BillingError (naming the field) if anything is wrong, nothing written."""
    if isinstance(effective_from, str):
        try:
            effective_from = date.fromisoformat(effective_from)
        except ValueError:
            raise BillingError(
                f"--from must be a date like 2027-01-01, not {effective_from!r}", "from"
            ) from None
    tariff = parse_tariff(text, tuple(tiers))
    start = effective_instant(tariff, effective_from)
    t = tariff_versions.c
    with transaction(conn):
        serialize(conn)
        newest = conn.execute(
            sa.select(t.id, t.name, t.effective_from).order_by(t.effective_from.desc()).limit(1)
        ).first()
        if newest is not None and start <= as_utc(newest.effective_from):
            raise Conflict(
                f"overlapping version: version {newest.id} ({newest.name}) is in force from "
                f"{as_utc(newest.effective_from).isoformat()}; a new version must start after it",
                "from",
            )
        if newest is not None:
            previous = load_tariff(conn.scalar(sa.select(t.document).where(t.id == newest.id)))
            if previous.currency != tariff.currency:
                raise Conflict(
                    f"currency {tariff.currency} differs from the version in force ({previous.currency}); "
                    "statements carry balances forward in one currency",
                    "currency",
                )
        closed = conn.scalar(sa.select(sa.func.max(billing_months.c.month)))
        local_month = effective_from.strftime("%Y-%m")
        if closed is not None and local_month <= closed:
            raise Conflict(f"{closed} is closed: a version cannot start in or before a closed month", "from")
        late = conn.scalar(
            sa.select(sa.func.max(usage_events.c.started_at)).where(usage_events.c.started_at >= start)
        )
        if late is not None:
            raise Conflict(
                f"usage is already recorded at {as_utc(late).isoformat()}, after {start.isoformat()}: "
                "a tariff cannot reprice usage that has happened; choose a later --from",
                "from",
            )
        version_id = conn.execute(
            sa.insert(tariff_versions).returning(t.id),
            {
                "name": tariff.name,
                "effective_from": start,
                "timezone": tariff.timezone,
                "hour_bands": json.dumps(tariff.hour_bands),
                "document": text,
                "digest": hashlib.sha256(text.encode()).hexdigest(),
                "adopted_at": now or datetime.now(UTC),
            },
        ).scalar_one()
    return show_tariff(conn, version_id)


def list_tariffs(conn: sa.Connection) -> list[dict]:
    """Every version, oldest first, with the instant the next one replaced it (None: in force)."""
    t = tariff_versions.c
    rows = conn.execute(sa.select(tariff_versions).order_by(t.effective_from)).all()
    out = []
    for i, row in enumerate(rows):
        tariff = load_tariff(row.document)
        out.append(
            {
                "id": row.id,
                "name": row.name,
                "currency": tariff.currency,
                "timezone": row.timezone,
                "effective_from": as_utc(row.effective_from),
                "until": as_utc(rows[i + 1].effective_from) if i + 1 < len(rows) else None,
                "digest": row.digest,
                "adopted_at": as_utc(row.adopted_at),
            }
        )
    return out


def show_tariff(
    conn: sa.Connection, version_id: int | str | None = None, *, at: datetime | None = None
) -> dict:
    """One version (by id; by default the one in force at ``at`` or now) with its document."""
    versions = list_tariffs(conn)
    if not versions:
        raise NotFound("no tariff has been adopted yet (aiplus tariff adopt FILE --from DATE)", "id")
    if version_id is None:
        moment = at or datetime.now(UTC)
        current = [v for v in versions if v["effective_from"] <= moment]
        chosen = current[-1] if current else versions[0]
    else:
        try:
            wanted = int(version_id)
        except ValueError:
            raise BillingError(f"a tariff version id is a number, not {version_id!r}", "id") from None
        chosen = next((v for v in versions if v["id"] == wanted), None)
        if chosen is None:
            raise NotFound(f"no tariff version {wanted}", "id")
    document = conn.scalar(sa.select(tariff_versions.c.document).where(tariff_versions.c.id == chosen["id"]))
    return {**chosen, "document": document}


def load_versions(conn: sa.Connection) -> dict[int, Tariff]:
    """Every adopted version, parsed, by id (parsing is cached by document)."""
    rows = conn.execute(sa.select(tariff_versions.c.id, tariff_versions.c.document)).all()
    return {row.id: load_tariff(row.document) for row in rows}


@lru_cache(maxsize=256)
def load_tariff(document: str) -> Tariff:
    return parse_tariff(document)


def example_tariff_text() -> str:
    """The example tariff shipped with aiplus (``billing/example-tariff.toml``)."""
    return resources.files("aiplus.billing").joinpath("example-tariff.toml").read_text()


def adopt_example_tariff(conn: sa.Connection, effective_from: date, tiers) -> dict:
    """What ``aiplus demo seed`` calls before writing its usage: the example tariff in force from that day."""
    return adopt_tariff(conn, example_tariff_text(), effective_from, tiers)


def tariff_for_month(conn: sa.Connection, month: str) -> Tariff | None:
    """The version in force when ``month`` starts in its time zone (else the first adopted after); None: none."""
    t = tariff_versions.c
    rows = sorted(
        (
            (as_utc(r.effective_from), r.document)
            for r in conn.execute(sa.select(t.effective_from, t.document))
        ),
        key=lambda r: r[0],
    )
    chosen = None
    for start, document in rows:
        tariff = load_tariff(document)
        if chosen is None or start <= effective_instant(tariff, date(int(month[:4]), int(month[5:]), 1)):
            chosen = tariff
    return chosen
