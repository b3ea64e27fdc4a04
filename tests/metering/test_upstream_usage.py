"""An upstream that lies about usage cannot poison the ledger: the client gets a sane answer, the ledger a row
with aiplus's own count, other organizations keep being metered, and the server restarts — SQLite and PostgreSQL."""

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from aiplus.storage.tables import usage_daily, usage_events
from tests.conftest import free_port, start_server, wait_http

FAKE = Path(__file__).parents[1] / "engines" / "faulty_upstream.py"
LIES = ("huge", "negative", "string", "float", "not-an-object", "too-many")


@contextlib.contextmanager
def fake_upstream(tmp: Path, *args: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), str(port), *args],
        stdout=(tmp / f"upstream-{port}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait()


def ledger_rows(engine, ids: set[str], timeout: float = 15.0) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            found = {
                r.request_id: (r.org_id, r.prompt_tokens, r.completion_tokens, r.status, r.cost_micros)
                for r in conn.execute(sa.select(usage_events).where(usage_events.c.request_id.in_(ids)))
            }
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def chat(server, key: str, content: str, stream: bool, model: str = "liar") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 50}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return httpx.post(
        f"{server.v1}/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
    )


def usage_of(r: httpx.Response, stream: bool) -> dict:
    if not stream:
        return r.json()["usage"]
    chunks = [line[6:] for line in r.text.splitlines() if line.startswith("data: {")]
    return httpx.Response(200, content=chunks[-1]).json()["usage"]


def test_lying_usage_is_metered_with_aiplus_own_count(tmp_path, database):
    env, engine = database
    config = '[[prices]]\nmodel = "*"\ninput_per_mtok = 1000000\noutput_per_mtok = 2000000\n'
    with fake_upstream(tmp_path) as url:
        config += f'[[models]]\nid = "liar"\nengine = "openai"\nupstreams = ["{url}"]\nmax_concurrency = 4\n'
        server = start_server(tmp_path, config, env=env)
        try:
            liar = server.new_org("Liar's Customer", sector="trade")
            other = server.new_org("Bystander", sector="education")
            ids: dict[str, tuple] = {}
            for lie in LIES:
                for stream in (False, True):
                    r = chat(server, liar["key"], lie, stream)
                    assert r.status_code == 200, (lie, stream, r.text)
                    usage = usage_of(r, stream)
                    # aiplus's own count: its prompt estimate, and the pieces relayed (or the text's estimate)
                    assert 0 < usage["prompt_tokens"] < 20 and 0 < usage["completion_tokens"] <= 5, (
                        lie,
                        usage,
                    )
                    ids[r.headers["x-request-id"]] = (usage["prompt_tokens"], usage["completion_tokens"])
                    honest = chat(server, other["key"], "hello", stream)
                    assert honest.status_code == 200
                    assert usage_of(honest, stream)["prompt_tokens"] == 11  # an honest report is believed
                    ids[honest.headers["x-request-id"]] = (11, 5)
            rows = ledger_rows(engine, set(ids))
            assert set(rows) == set(ids)  # every 200 has its row, the liar's and the bystander's
            for rid, (prompt, completion) in ids.items():
                org, p, c, status, cost = rows[rid]
                assert (p, c, status) == (prompt, completion, "ok"), rid
                assert cost == p + 2 * c  # the price is one micro-unit a prompt token, two a completion one
            with engine.connect() as conn:
                month = conn.execute(
                    sa.select(
                        sa.func.sum(usage_daily.c.prompt_tokens), sa.func.sum(usage_daily.c.cost_micros)
                    ).where(usage_daily.c.org_id == liar["org"]["id"])
                ).one()
            assert 0 < month[0] < 20 * len(ids) and month[1] > 0
            log = server.log.read_text()
            assert "misbehaves" in log and url in log  # the upstream is named in the log

            # a kill -9 and a restart: the journal replays and the server starts and meters again
            server.stop(signal.SIGKILL)
            server = start_server(tmp_path, config, env=env, data_dir=server.data_dir)
            r = chat(server, other["key"], "huge", False)
            assert r.status_code == 200
            assert ledger_rows(engine, {r.headers["x-request-id"]})
        finally:
            server.stop()
