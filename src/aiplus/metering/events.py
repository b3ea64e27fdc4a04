"""Usage events and their idempotent insertion into the ledger with the daily rollup in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa

from aiplus.config import SERVICE_TIERS
from aiplus.metering.tou import add_to_tou
from aiplus.storage.db import dialect_insert as _insert
from aiplus.storage.db import transaction
from aiplus.storage.tables import usage_daily, usage_events

ENDPOINTS = ("chat", "completion", "embedding")
STATUSES = ("ok", "error", "cancelled", "rejected", "interrupted")  # interrupted: its process died


@dataclass(slots=True)
class UsageEvent:
    """One request, as metered: written once per ``request_id`` however often it is recorded."""

    request_id: str
    org_id: str
    key_id: str | None
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    used_tools: bool
    started_at: datetime
    ttft_ms: int | None
    duration_ms: int
    cost_micros: int
    # The band it was served in: OpenAI's service_tier as the dispatcher resolved it (``auto`` is ``default``).
    # A request refused before its band was known (an invalid service_tier) is ``default``.
    service_tier: str = "default"

    def to_row(self) -> dict:
        """The row to insert; ValueError if the event cannot be one (the ledger then keeps it aside)."""
        started = self.started_at
        if not isinstance(started, datetime) or started.tzinfo is None:
            raise ValueError(f"usage event {self.request_id}: started_at must be timezone-aware")
        for name in ("request_id", "org_id", "model", "endpoint", "status"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"usage event {self.request_id!r}: {name} must be a string")
        if self.service_tier not in SERVICE_TIERS:
            raise ValueError(
                f"usage event {self.request_id!r}: service_tier={self.service_tier!r:.40} is not one of "
                f"{', '.join(SERVICE_TIERS)}"
            )
        return {
            "request_id": self.request_id,
            "org_id": self.org_id,
            "key_id": self.key_id if self.key_id is None else str(self.key_id),
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt_tokens": _amount(self, "prompt_tokens"),
            "completion_tokens": _amount(self, "completion_tokens"),
            "status": self.status,
            "used_tools": bool(self.used_tools),
            "started_at": started.astimezone(UTC),
            "ttft_ms": None if self.ttft_ms is None else _amount(self, "ttft_ms"),
            "duration_ms": _amount(self, "duration_ms"),
            "cost_micros": _amount(self, "cost_micros"),
            "service_tier": self.service_tier,
        }

    @classmethod
    def from_row(cls, row: dict) -> UsageEvent:
        """An event from a row or a journal line (lines written before service tiers existed read as default)."""
        started = row["started_at"]
        if isinstance(started, str):
            started = datetime.fromisoformat(started)
        if started.tzinfo is None:  # SQLite hands back naive datetimes; the ledger stores UTC only
            started = started.replace(tzinfo=UTC)
        fields = {k: row[k] for k in _REQUIRED}
        return cls(**fields, started_at=started, service_tier=row.get("service_tier", "default"))


_REQUIRED = tuple(k for k in UsageEvent.__slots__ if k not in ("started_at", "service_tier"))
MAX_AMOUNT = 2**63 - 1  # a BIGINT on PostgreSQL and SQLite alike


def _amount(event: UsageEvent, name: str) -> int:
    """A count or a cost as the ledger stores it: an integer in 0..MAX_AMOUNT. Nothing negative is recorded,
    so no event can lower an organization's month; nothing larger than a BIGINT reaches the database."""
    value = getattr(event, name)
    if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(
            f"usage event {event.request_id!r}: {name}={value!r:.60} is not an amount in 0..2**63-1"
        )
    return value


def write_events(conn: sa.Connection, events: list[UsageEvent]) -> int:
    """Insert events (a ``request_id`` seen before is a no-op) and add the new ones to ``usage_daily``.

    Both happen in one transaction (and ``usage_tou``, the time-of-use rollup billing reads), so the rollups
    always equal the sums of the raw rows. Returns how many events were new. Works on SQLite (3.35+) and PostgreSQL.
    """
    rows: dict[str, dict] = {}
    for event in events:
        rows.setdefault(event.request_id, event.to_row())
    if not rows:
        return 0
    with transaction(conn):
        stmt = _insert(conn, usage_events).on_conflict_do_nothing(index_elements=["request_id"])
        ordered = [rows[rid] for rid in sorted(rows)]  # one lock order for overlapping writers: no deadlocks
        inserted = conn.execute(stmt.returning(usage_events.c.request_id), ordered).scalars().all()
        if inserted:
            new = [rows[rid] for rid in inserted]
            _add_to_rollups(conn, new)
            add_to_tou(conn, new)
    return len(inserted)


def _add_to_rollups(conn: sa.Connection, rows: list[dict]) -> None:
    sums: dict[tuple[date, str, str, str, str], list[int]] = {}
    for row in rows:
        key = (row["started_at"].date(), row["org_id"], row["model"], row["status"], row["service_tier"])
        acc = sums.setdefault(key, [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += 1 if row["used_tools"] else 0
        acc[2] += row["prompt_tokens"]
        acc[3] += row["completion_tokens"]
        acc[4] += row["cost_micros"]
    params = [
        {
            "day": day,
            "org_id": org,
            "model": model,
            "status": status,
            "service_tier": service_tier,
            "requests": acc[0],
            "tool_requests": acc[1],
            "prompt_tokens": acc[2],
            "completion_tokens": acc[3],
            "cost_micros": acc[4],
        }
        for (day, org, model, status, service_tier), acc in sorted(
            sums.items()
        )  # one order everywhere: no deadlocks
    ]
    stmt = _insert(conn, usage_daily)
    counters = ("requests", "tool_requests", "prompt_tokens", "completion_tokens", "cost_micros")
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "org_id", "model", "status", "service_tier"],
        set_={name: usage_daily.c[name] + stmt.excluded[name] for name in counters},
    )
    conn.execute(stmt, params)
