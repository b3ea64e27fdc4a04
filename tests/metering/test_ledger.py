import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from aiplus.metering.ledger import Ledger, UsageEvent
from aiplus.storage.tables import usage_daily, usage_events

pytestmark = pytest.mark.anyio


def event(i: int) -> UsageEvent:
    return UsageEvent(
        f"req-{i}", "a", "key_1", "m", "chat", 10, 5, "ok", i % 2 == 0, datetime.now(UTC), 3, 20, 7
    )


def counts(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        raw = conn.execute(sa.select(sa.func.count(), sa.func.sum(usage_events.c.prompt_tokens))).one()
        rolled = conn.execute(sa.select(sa.func.sum(usage_daily.c.requests))).scalar()
    return raw[0], int(raw[1] or 0), int(rolled or 0)


async def test_close_flushes_everything(db, tmp_path):
    ledger = Ledger(db, tmp_path, flush_interval=0.05)
    await ledger.start()
    for i in range(1000):
        ledger.record(event(i))
    await asyncio.sleep(0.1)  # part goes through the background writer, the rest through close
    for i in range(1000, 1500):
        ledger.record(event(i))
    ledger.record(event(7))  # recorded twice: still one row
    await ledger.close()
    assert counts(db) == (1500, 15000, 1500)
    assert list((tmp_path / "journal").glob("*.jsonl")) == []


async def test_naive_timestamps_are_refused(sqlite_db, tmp_path):
    ledger = Ledger(sqlite_db, tmp_path)
    await ledger.start()
    bad = event(1)
    bad.started_at = datetime.now()
    with pytest.raises(ValueError):
        ledger.record(bad)
    await ledger.close()


async def test_live_segments_are_not_replayed_by_another_process(sqlite_db, tmp_path):
    first = Ledger(sqlite_db, tmp_path, flush_interval=60)
    await first.start()
    first.record(event(1))
    second = Ledger(sqlite_db, tmp_path, flush_interval=60)
    await second.start()
    assert second.replayed == 0
    await second.close()
    await first.close()
    assert counts(sqlite_db)[0] == 1


WORKER = """
import asyncio, os, sys
from datetime import UTC, datetime
from aiplus.metering.ledger import Ledger, UsageEvent
from aiplus.storage.db import create_engine

async def main(url, data_dir, acks):
    ledger = Ledger(create_engine(url), data_dir, flush_interval=0.02)
    await ledger.start()
    ack = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    i = 0
    while True:
        for _ in range(20):
            ledger.record(UsageEvent(f"req-{i}", "a", None, "m", "chat", 10, 5, "ok", False,
                                     datetime.now(UTC), 1, 2, 30))
            os.write(ack, f"{i}\\n".encode())  # the "200" a client saw
            i += 1
        await asyncio.sleep(0)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_journal_replay_after_kill_9(db_and_url, tmp_path):
    engine, url = db_and_url
    acks = tmp_path / "acks"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, url, str(tmp_path), str(acks))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill it mid-load: some events in the DB, more still coming
            await asyncio.sleep(0.1)
            if counts(engine)[0] > 2000:
                break
        assert proc.returncode is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    acked = {f"req-{line}" for line in acks.read_text().split()}
    before = counts(engine)[0]
    assert before < len(acked)  # the kill left events that only the journal holds

    ledger = Ledger(engine, tmp_path)
    await ledger.start()
    await ledger.close()
    assert ledger.replayed > 0
    with engine.connect() as conn:
        ids = conn.execute(sa.select(usage_events.c.request_id)).scalars().all()
    assert len(ids) == len(set(ids))
    assert acked <= set(ids)  # every acknowledged event, exactly once (request_id is the primary key)
    raw, prompt, rolled = counts(engine)
    assert rolled == raw and prompt == 10 * raw  # rollups match the raw rows after the replay
    assert list((tmp_path / "journal").glob("*.jsonl")) == []


async def test_an_event_recorded_after_close_is_kept_for_the_next_start(sqlite_db, tmp_path):
    ledger = Ledger(sqlite_db, tmp_path)
    await ledger.start()
    await ledger.close()
    ledger.record(event(1))  # a straggler finishing during shutdown
    ledger._journal.close()  # the process exits
    again = Ledger(sqlite_db, tmp_path)
    await again.start()
    await again.close()
    assert again.replayed == 1 and counts(sqlite_db)[0] == 1
