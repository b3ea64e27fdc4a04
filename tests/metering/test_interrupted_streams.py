"""Streams cut by a kill -9 of the gateway are metered: each call is journaled when admitted and as it goes, so
the next start records it as ``interrupted`` with the tokens known — every 200 has exactly one row."""

import contextlib
import signal
import time
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from aiplus.metering.ledger import Ledger, UsageEvent
from aiplus.storage.tables import usage_events
from tests.conftest import start_server
from tests.metering.test_upstream_usage import fake_upstream, ledger_rows

PRICES = '[[prices]]\nmodel = "*"\ninput_per_mtok = 1000000\noutput_per_mtok = 2000000\n'


def test_streams_cut_by_kill_9_are_metered_as_interrupted(tmp_path, database):
    env, engine = database
    with fake_upstream(tmp_path) as url:
        config = (
            PRICES + f'[[models]]\nid = "m"\nengine = "openai"\nupstreams = ["{url}"]\nmax_concurrency = 8\n'
        )
        server = start_server(tmp_path, config, env=env)
        try:
            org = server.new_org("Cut Short")
            auth = {"authorization": f"Bearer {org['key']}"}
            body = {"model": "m", "messages": [{"role": "user", "content": "slow"}], "stream": True}
            received: dict[str, int] = {}
            with httpx.Client(timeout=60) as client, contextlib.ExitStack() as streams:
                responses = [
                    streams.enter_context(
                        client.stream("POST", f"{server.v1}/chat/completions", headers=auth, json=body)
                    )
                    for _ in range(3)
                ]
                lines = [r.iter_lines() for r in responses]
                for r, it in zip(responses, lines, strict=True):
                    assert r.status_code == 200
                    rid = r.headers["x-request-id"]
                    received[rid] = 0
                    while received[rid] < 3:
                        if '"content":"word ' in next(it):
                            received[rid] += 1
                time.sleep(1.0)  # a few of the ledger's ticks: the journal knows their progress
                server.stop(signal.SIGKILL)
            server = start_server(tmp_path, config, env=env, data_dir=server.data_dir)
            ledger_rows(engine, set(received))  # the replayed calls reach the database with the next batch
            with engine.connect() as conn:
                rows = {
                    r.request_id: r
                    for r in conn.execute(
                        sa.select(usage_events).where(usage_events.c.request_id.in_(received))
                    )
                }
            assert set(rows) == set(received)  # each 200 has its row
            for rid, row in rows.items():
                assert row.status == "interrupted"
                assert row.completion_tokens >= received[rid] and row.prompt_tokens > 0
                assert row.cost_micros == row.prompt_tokens + 2 * row.completion_tokens
        finally:
            server.stop()


@pytest.mark.anyio
async def test_only_calls_still_running_are_replayed_as_interrupted(sqlite_db, tmp_path):
    def event(rid: str, status: str, completion: int) -> UsageEvent:
        return UsageEvent(
            rid, "a", None, "m", "chat", 10, completion, status, False, datetime.now(UTC), 1, 5, 9
        )

    progress = {"done": 0, "cut": 0}
    ledger = Ledger(sqlite_db, tmp_path, flush_interval=60)
    await ledger.start()
    for rid in progress:
        ledger.open(rid, lambda rid=rid: event(rid, "interrupted", progress[rid]))
    progress.update(done=4, cut=7)
    ledger.record(event("other", "ok", 1))
    await ledger.flush()  # a tick: the journal rotates and notes both calls' progress
    ledger.record(event("done", "ok", 5))  # this one ends; "cut" is still running when the process dies
    ledger._writer.cancel()
    ledger._journal.close()  # kill -9: nothing more is written

    again = Ledger(sqlite_db, tmp_path)
    await again.start()
    await again.close()
    assert again.interrupted == 1
    with sqlite_db.connect() as conn:
        rows = dict(conn.execute(sa.select(usage_events.c.request_id, usage_events.c.status)).all())
        cut = conn.execute(
            sa.select(usage_events.c.completion_tokens).where(usage_events.c.request_id == "cut")
        )
        assert cut.scalar() == 7
    assert rows == {"other": "ok", "done": "ok", "cut": "interrupted"}
