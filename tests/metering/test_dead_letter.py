"""Events the ledger cannot or may not write go to the dead-letter file; they never block the others or start-up."""

import asyncio
import time
from datetime import UTC, datetime

import orjson
import pytest
import sqlalchemy as sa

from aiplus.metering.ledger import Ledger, UsageEvent
from aiplus.storage.db import create_engine
from aiplus.storage.tables import usage_daily, usage_events
from tests.conftest import free_port

pytestmark = pytest.mark.anyio


def event(i: int, org: str = "a", **changes) -> UsageEvent:
    e = UsageEvent(f"req-{org}-{i}", org, None, "m", "chat", 10, 5, "ok", False, datetime.now(UTC), 3, 20, 7)
    for name, value in changes.items():
        setattr(e, name, value)
    return e


def rows(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(usage_events.c.request_id, usage_events.c.prompt_tokens)).all())


def month(engine, org: str) -> tuple[int, int, int]:
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(
                sa.func.sum(usage_daily.c.prompt_tokens),
                sa.func.sum(usage_daily.c.completion_tokens),
                sa.func.sum(usage_daily.c.cost_micros),
            ).where(usage_daily.c.org_id == org)
        ).one()
    return tuple(int(v or 0) for v in got)


def dead(tmp_path) -> list[bytes]:
    path = tmp_path / "journal" / "rejected.events"
    return path.read_bytes().splitlines() if path.exists() else []


POISON = [
    {"prompt_tokens": 2**64 - 1},
    {"prompt_tokens": -5},
    {"completion_tokens": -1},
    {"cost_micros": -700},
    {"prompt_tokens": "12"},
    {"completion_tokens": 2.5},
    {"duration_ms": None},
]


async def test_bad_amounts_are_dead_lettered_and_never_lower_a_month(db, tmp_path):
    ledger = Ledger(db, tmp_path, flush_interval=0.02)
    await ledger.start()
    ledger.record(event(0))
    for i, changes in enumerate(POISON, 1):
        ledger.record(event(i, **changes))
        ledger.record(event(100 + i, org="b"))  # another org, in the same batches
    await asyncio.sleep(0.2)  # the background writer, not only close(), must get past them
    ledger.record(event(200))
    await ledger.close()
    written = rows(db)
    assert set(written) == {"req-a-0", "req-a-200"} | {f"req-b-{100 + i}" for i in range(1, len(POISON) + 1)}
    assert month(db, "a") == (20, 10, 14)  # only what was really drawn; nothing negative went in
    assert len(dead(tmp_path)) == len(POISON)
    assert list((tmp_path / "journal").glob("*.jsonl")) == []


async def test_start_survives_a_poisoned_journal(db, tmp_path):
    """The journal a pre-fix server left (an overflowing count, a line that is no event) replays without failing."""
    journal = tmp_path / "journal"
    journal.mkdir()
    good = [orjson.dumps(event(i)) for i in range(3)]
    bad = [
        orjson.dumps(event(10, prompt_tokens=2**64 - 1)),
        orjson.dumps({"request_id": "half-an-event"}),
        orjson.dumps({**orjson.loads(orjson.dumps(event(11))), "started_at": "yesterday"}),
        b"[1, 2, 3]",
    ]
    (journal / "00000000000000000001-1-abcdef.jsonl").write_bytes(
        b"\n".join(good[:2] + bad + good[2:]) + b"\n"
    )
    ledger = Ledger(db, tmp_path)
    await ledger.start()
    await ledger.close()
    assert set(rows(db)) == {"req-a-0", "req-a-1", "req-a-2"}
    assert len(dead(tmp_path)) == len(bad)
    assert list(journal.glob("*.jsonl")) == []


async def test_start_survives_a_database_that_is_away(tmp_path):
    """Replay with the database down does not stop start-up; the events wait and are written once it is back."""
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "00000000000000000001-1-abcdef.jsonl").write_bytes(
        orjson.dumps(event(1), option=orjson.OPT_APPEND_NEWLINE)
    )
    away = create_engine(f"postgresql+psycopg://root@127.0.0.1:{free_port()}/test")
    ledger = Ledger(away, tmp_path, flush_interval=60)
    await ledger.start()
    assert ledger.pending == 1
    await ledger.close()
    assert len(list((tmp_path / "journal").glob("*.jsonl"))) == 1  # kept for the next start


def refuse_org(engine, org: str, sqlstate: str = "22003") -> None:
    """A trigger that makes the database itself refuse one org's events (PostgreSQL: with ``sqlstate``)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON usage_events "
                    f"WHEN NEW.org_id = '{org}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
            return
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.org_id = '{org}' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '{sqlstate}'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse BEFORE INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )


async def test_an_event_the_database_refuses_does_not_block_the_others(db, tmp_path):
    refuse_org(db, "poison")
    ledger = Ledger(db, tmp_path, flush_interval=0.02)
    await ledger.start()
    for i in range(5):
        ledger.record(event(i))
        ledger.record(event(i, org="poison"))
    await asyncio.sleep(0.3)
    assert len(rows(db)) == 5 and ledger.pending == 0  # the writer got past them by itself
    await ledger.close()
    assert len(dead(tmp_path)) == 5


async def test_a_refusal_that_looks_like_an_outage_is_not_retried_forever(db_and_url, tmp_path):
    """A database that answers but refuses one event with a connection-class error (PostgreSQL: SQLSTATE 53000)
    is retried a few times, then that event goes to the dead letter and the rest is written."""
    engine, _url = db_and_url
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no way to raise an OperationalError from a trigger")
    refuse_org(engine, "poison", sqlstate="53000")
    ledger = Ledger(engine, tmp_path, flush_interval=0.02)
    await ledger.start()
    ledger.record(event(1))
    ledger.record(event(1, org="poison"))
    ledger.record(event(2))
    deadline = time.monotonic() + 20
    while ledger.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert ledger.pending == 0
    await ledger.close()
    assert set(rows(engine)) == {"req-a-1", "req-a-2"}
    assert len(dead(tmp_path)) == 1
