"""The time-of-use rollup: usage by local month, tariff version, time-of-use band and service tier, written with the
events. ``band`` here is the tariff's time-of-use band (by local hour); ``service_tier`` is the scheduling band
the request was served in (OpenAI's ``service_tier``), which a tariff may price with its own multiplier.

Statements read this table, never the raw events. Which band and which month an event falls in depends on the
tariff version in force when it started (its time zone and the band of each local hour); billing adopts
versions only ahead of the usage they price, so a row's classification never changes after it is written.
The versions are read in the writer's own transaction (a small table): no cache to fall out of date.
"""

from __future__ import annotations

import bisect
import json
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from aiplus.storage.db import dialect_insert
from aiplus.storage.tables import tariff_versions, usage_tou

NO_TARIFF = 0  # version id of usage recorded while no tariff was in force: the UTC month, no band


class Calendar:
    """Maps an instant to (version id, local month, band) for the adopted tariff versions."""

    def __init__(self, versions: list[tuple[int, datetime, str, list[str]]]):
        ordered = sorted(versions, key=lambda v: v[1])
        self._starts = [as_utc(v[1]) for v in ordered]
        self._versions = [(v[0], _zone(v[2]), tuple(v[3])) for v in ordered]

    @classmethod
    def load(cls, conn: sa.Connection) -> Calendar:
        t = tariff_versions.c
        rows = conn.execute(sa.select(t.id, t.effective_from, t.timezone, t.hour_bands)).all()
        return cls([(r.id, r.effective_from, r.timezone, json.loads(r.hour_bands)) for r in rows])

    def classify(self, started_at: datetime) -> tuple[int, str, str]:
        i = bisect.bisect_right(self._starts, started_at) - 1
        if i < 0:
            utc = started_at.astimezone(UTC)
            return NO_TARIFF, f"{utc.year:04d}-{utc.month:02d}", ""
        version_id, zone, bands = self._versions[i]
        local = started_at.astimezone(zone)
        return version_id, f"{local.year:04d}-{local.month:02d}", bands[local.hour]


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the database stores UTC only."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_to_tou(conn: sa.Connection, rows: list[dict]) -> None:
    """Add new event rows (already inserted in this transaction) to ``usage_tou``; rows without tokens add nothing."""
    calendar = Calendar.load(conn)
    sums: dict[tuple[str, str, int, str, str, str], list[int]] = {}
    for row in rows:
        if row["prompt_tokens"] + row["completion_tokens"] <= 0:
            continue
        version_id, month, band = calendar.classify(row["started_at"])
        key = (month, row["org_id"], version_id, row["model"], band, row["service_tier"])
        acc = sums.setdefault(key, [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += row["prompt_tokens"]
        acc[2] += row["completion_tokens"]
        acc[3] += row["cost_micros"]
    if not sums:
        return
    params = [
        {
            "month": month,
            "org_id": org,
            "version_id": version_id,
            "model": model,
            "band": band,
            "service_tier": service_tier,
            "requests": acc[0],
            "prompt_tokens": acc[1],
            "completion_tokens": acc[2],
            "cost_micros": acc[3],
        }
        for (month, org, version_id, model, band, service_tier), acc in sorted(
            sums.items()
        )  # one lock order: no deadlocks
    ]
    stmt = dialect_insert(conn, usage_tou)
    counters = ("requests", "prompt_tokens", "completion_tokens", "cost_micros")
    stmt = stmt.on_conflict_do_update(
        index_elements=["month", "org_id", "version_id", "model", "band", "service_tier"],
        set_={name: usage_tou.c[name] + stmt.excluded[name] for name in counters},
    )
    conn.execute(stmt, params)
