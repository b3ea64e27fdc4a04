"""Stored responses per organization: save a turn, walk a conversation's chain, read, delete, expire, report.

A turn stores only what it added — its new input items and its output — once; ``previous_id`` links it to the
turn before. ``chain`` rebuilds a conversation with one recursive query (one round trip however long the
conversation), so continuing turn n costs one indexed read per turn, and the stored state grows linearly. Every
read filters by organization at every step: another organization's id looks exactly like an unknown one.
Expired rows (``expires_at`` passed) are invisible at once and deleted by ``purge``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from aiplus.storage.tables import stored_responses as table

MAX_CHAIN = 10_000  # turns walked at most: a guard against a cycle, far above any real conversation


class ResponseNotFound(Exception):
    """No such response for this organization (unknown, another organization's, deleted or expired)."""

    def __init__(self, response_id: str):
        super().__init__(response_id)
        self.response_id = response_id


class BrokenChain(Exception):
    """A conversation whose earlier turn was deleted or has expired: its context cannot be rebuilt."""

    def __init__(self, response_id: str, missing_id: str):
        super().__init__(missing_id)
        self.response_id = response_id
        self.missing_id = missing_id


@dataclass(slots=True)
class Turn:
    """One stored response as a conversation step."""

    id: str
    previous_id: str | None
    input_items: list[dict[str, Any]]
    output: list[dict[str, Any]]


# The walk follows primary keys only, so the planner looks each turn up by its key whatever it knows of the
# table (with the organization in the join it scanned the organization's rows once per turn: 8 ms for 50 turns
# on a fresh PostgreSQL table). Each step checks that the turn it leaves is the caller's and alive; the caller
# checks the turns it gets.
_CHAIN = sa.text(
    """
    WITH RECURSIVE chain(id, previous_id, org_id, expires_at, input_items, output, depth) AS (
        SELECT id, previous_id, org_id, expires_at, input_items, output, 0 FROM stored_responses WHERE id = :id
        UNION ALL
        SELECT r.id, r.previous_id, r.org_id, r.expires_at, r.input_items, r.output, c.depth + 1
        FROM chain c JOIN stored_responses r ON r.id = c.previous_id
        WHERE c.org_id = :org AND c.expires_at > :now AND c.depth < :limit
    )
    SELECT id, previous_id, org_id, expires_at, input_items, output FROM chain ORDER BY depth DESC
    """
)


def chain(conn: sa.Connection, org_id: str, response_id: str, now: int | None = None) -> list[Turn]:
    """The conversation ending with ``response_id``, oldest turn first."""
    now = int(time.time()) if now is None else now
    rows = conn.execute(_CHAIN, {"id": response_id, "org": org_id, "now": now, "limit": MAX_CHAIN}).all()
    if not rows or rows[-1].org_id != org_id or rows[-1].expires_at <= now:
        raise ResponseNotFound(response_id)
    turns: list[Turn] = []
    for row in reversed(rows):
        if row.org_id != org_id or row.expires_at <= now:
            raise BrokenChain(response_id, row.id)
        turns.append(Turn(row.id, row.previous_id, orjson.loads(row.input_items), orjson.loads(row.output)))
    if turns[-1].previous_id is not None:
        raise BrokenChain(response_id, turns[-1].previous_id)  # deleted (or purged)
    turns.reverse()
    return turns


_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit = off")


def save(
    conn: sa.Connection,
    org_id: str,
    body: dict[str, Any],
    input_items: list[dict[str, Any]],
    retention_days: int,
) -> None:
    """Store one response (``body`` is the response object, output included) with this turn's input items."""
    output = orjson.dumps(body["output"]).decode()
    rest = orjson.dumps({k: v for k, v in body.items() if k != "output"}).decode()
    items = orjson.dumps(input_items).decode()
    created = int(body["created_at"])
    if conn.dialect.name == "postgresql":
        # The answer waits for this commit; waiting for its WAL flush too cost 3-6 ms a response on a busy
        # server. Without it the row is visible to every gateway at once and stays consistent; a crash of the
        # database itself (not of a gateway) may lose the last fraction of a second of responses.
        conn.execute(_ASYNC_COMMIT)
    conn.execute(
        table.insert(),
        {
            "id": body["id"],
            "org_id": org_id,
            "previous_id": body.get("previous_response_id"),
            "model": body["model"],
            "created_at": created,
            "expires_at": created + retention_days * 86_400,
            "input_items": items,
            "output": output,
            "body": rest,
            "bytes": len(output) + len(rest) + len(items),
        },
    )


def _visible(org_id: str, response_id: str) -> Any:
    return sa.and_(table.c.id == response_id, table.c.org_id == org_id, table.c.expires_at > int(time.time()))


def get(conn: sa.Connection, org_id: str, response_id: str) -> dict[str, Any]:
    """The response object as it was returned."""
    row = conn.execute(sa.select(table.c.body, table.c.output).where(_visible(org_id, response_id))).first()
    if row is None:
        raise ResponseNotFound(response_id)
    return {**orjson.loads(row.body), "output": orjson.loads(row.output)}


def input_items(conn: sa.Connection, org_id: str, response_id: str) -> list[dict[str, Any]]:
    """The input items this response added (its own turn's, not the earlier turns')."""
    value = conn.execute(sa.select(table.c.input_items).where(_visible(org_id, response_id))).scalar()
    if value is None:
        raise ResponseNotFound(response_id)
    return orjson.loads(value)


def delete(conn: sa.Connection, org_id: str, response_id: str) -> None:
    if conn.execute(table.delete().where(_visible(org_id, response_id))).rowcount == 0:
        raise ResponseNotFound(response_id)


def purge(conn: sa.Connection, now: int | None = None) -> int:
    """Delete every expired response; returns how many."""
    now = int(time.time()) if now is None else now
    return conn.execute(table.delete().where(table.c.expires_at <= now)).rowcount


def storage_by_org(conn: sa.Connection, org_id: str | None = None) -> list[dict[str, Any]]:
    """Stored responses per organization: how many, their bytes, the oldest, and how many have expired (and
    await the purge)."""
    now = int(time.time())
    stmt = sa.select(
        table.c.org_id,
        sa.func.count().label("responses"),
        sa.func.coalesce(sa.func.sum(table.c.bytes), 0).label("bytes"),
        sa.func.min(table.c.created_at).label("oldest"),
        sa.func.coalesce(sa.func.sum(sa.case((table.c.expires_at <= now, 1), else_=0)), 0).label("expired"),
    ).group_by(table.c.org_id)
    if org_id is not None:
        stmt = stmt.where(table.c.org_id == org_id)
    return [
        {
            "org_id": r.org_id,
            "responses": int(r.responses),
            "bytes": int(r.bytes),
            "oldest_created_at": r.oldest,
            "expired": int(r.expired),
        }
        for r in conn.execute(stmt.order_by(table.c.org_id))
    ]
