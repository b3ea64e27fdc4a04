"""Responses API state (issue 15): what continuing a 50-turn conversation adds to a request, and how stored state
grows, on SQLite and on PostgreSQL, in one run.

For each database: a fast fake upstream behind one ``aiplus serve``; a 50-turn conversation is built through
``previous_response_id``; then, interleaved round by round so that the machine's load falls on all alike, three
kinds of request are timed from a keep-alive HTTP client: a fresh response (no previous id), a continuation of
turn 1, and a continuation of turn 50. Every one is stored, as by default. "Added" is the p50 of continuing turn
50 minus the p50 of a fresh response. The database's share is timed on its own too (``store.chain`` for 50
turns, in process). Growth: the bytes stored by the first 10, 25 and 50 turns; a store that copied the history
into every turn would grow with the square of the turns, this one grows by the same bytes each turn.

    .venv/bin/python bench/responses.py            # about a minute
    .venv/bin/python bench/responses.py --quick    # a few seconds, for development
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from procstat import Server
from targets import BENCH_TIER, PYTHON, Direct, free_port

from aiplus.responses import store
from aiplus.storage.db import create_engine
from aiplus.storage.tables import stored_responses
from aiplus.storage.testing import DEFAULT_PG_URL, scratch_database

ADMIN = "bench-admin-token"
TURNS = 50
MODEL = "fake"


def start_aiplus(workdir: Path, db_url: str, upstream: str) -> tuple[Server, str]:
    port = free_port()
    config = workdir / f"aiplus-{port}.toml"
    config.write_text(
        f'[server]\ndata_dir = "{workdir / f"data-{port}"}"\ndatabase_url = "{db_url}"\n'
        f'[[models]]\nid = "{MODEL}"\nengine = "openai"\nupstreams = ["{upstream}"]\nmax_concurrency = 8\n'
        f"[tiers.{BENCH_TIER}]\nrequests_per_minute = 100000000\ntokens_per_minute = 10000000000\n"
    )
    env = {**os.environ, "AIPLUS_ADMIN_TOKEN": ADMIN}
    env.pop("AIPLUS_CONFIG", None)
    argv = [PYTHON, "-m", "aiplus.cli", "serve", "--config", str(config), "--port", str(port)]
    server = Server("aiplus", argv, env=env, cwd=str(workdir), log_path=workdir / f"aiplus-{port}.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/healthz", timeout=60)
    return server, url


def new_key(url: str, name: str) -> tuple[str, str]:
    admin = {"authorization": f"Bearer {ADMIN}"}
    org = httpx.post(
        f"{url}/admin/orgs", json={"name": name, "sector": "ict", "tier": BENCH_TIER}, headers=admin
    ).json()
    key = httpx.post(f"{url}/admin/orgs/{org['id']}/keys", json={"name": "bench"}, headers=admin).json()
    return org["id"], key["key"]


def post(client: httpx.Client, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    r = client.post("/v1/responses", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text}")
    return elapsed, r.json()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(kind: str, db_url: str, engine: sa.Engine, upstream: str, workdir: Path, rounds: int) -> dict:
    server, url = start_aiplus(workdir, db_url, upstream)
    try:
        org_id, key = new_key(url, f"bench {kind}")
        client = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        ids: list[str] = []
        previous = None
        for n in range(TURNS):
            body = {"model": MODEL, "input": f"turn {n}: tell me more about the weather in city number {n}"}
            if previous:
                body["previous_response_id"] = previous
            _, answer = post(client, body)
            previous = answer["id"]
            ids.append(previous)
        kinds = {
            "fresh": {"model": MODEL, "input": "a new question"},
            "continue turn 1": {"model": MODEL, "input": "and then?", "previous_response_id": ids[0]},
            f"continue turn {TURNS}": {"model": MODEL, "input": "and then?", "previous_response_id": ids[-1]},
        }
        for body in kinds.values():  # warm up each path
            for _ in range(5):
                post(client, body)
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(rounds):
            for name, body in kinds.items():
                times[name].append(post(client, body)[0])
        chain_ms = []
        with engine.connect() as conn:
            for _ in range(rounds):
                started = time.perf_counter()
                turns = store.chain(conn, org_id, ids[-1])
                chain_ms.append((time.perf_counter() - started) * 1000)
            assert len(turns) == TURNS
            sizes = dict(
                conn.execute(
                    sa.select(stored_responses.c.id, stored_responses.c.bytes).where(
                        stored_responses.c.id.in_(ids)
                    )
                ).all()
            )
        client.close()
    finally:
        server.stop()
    per_turn = [sizes[i] for i in ids]
    return {
        "kind": kind,
        "p50": {name: statistics.median(v) for name, v in times.items()},
        "p99": {name: percentile(v, 0.99) for name, v in times.items()},
        "chain_p50": statistics.median(chain_ms),
        "bytes": {n: sum(per_turn[:n]) for n in (10, 25, TURNS)},
        "first_last": (per_turn[0], per_turn[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50 rounds instead of 300")
    parser.add_argument("--pg-url", default=os.environ.get("AIPLUS_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    rounds = 50 if args.quick else 300
    results = []
    with tempfile.TemporaryDirectory(prefix="aiplus-bench-responses-") as tmp:
        workdir = Path(tmp)
        upstream = Direct(workdir)
        upstream.start()
        try:
            upstream.wait_ready()
            url = f"sqlite:///{workdir / 'aiplus.db'}"
            engine = create_engine(url)
            results.append(run_one("SQLite", url, engine, upstream.base_url, workdir, rounds))
            engine.dispose()
            with scratch_database("postgresql", workdir, args.pg_url) as (engine, url):
                results.append(run_one("PostgreSQL", url, engine, upstream.base_url, workdir, rounds))
        finally:
            upstream.stop()
    last = f"continue turn {TURNS}"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load} ({os.cpu_count()} CPUs; other work shares the machine)")
    print(
        f"\nResponses API state, {rounds} rounds of each request, interleaved (ms, client-side, keep-alive)\n"
    )
    print(
        "| database | fresh p50 | continue turn 1 p50 | continue turn 50 p50 | added by 50 turns (p50) "
        "| continue turn 50 p99 | store.chain(50 turns) p50 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        p50 = r["p50"]
        added = p50[last] - p50["fresh"]
        print(
            f"| {r['kind']} | {p50['fresh']:.2f} | {p50['continue turn 1']:.2f} | {p50[last]:.2f} | "
            f"**{added:+.2f}** (target <= 2) | {r['p99'][last]:.2f} | {r['chain_p50']:.3f} |"
        )
    print("\nStored bytes by the first n turns (linear: the same bytes each turn)\n")
    print(
        "| database | 10 turns | 25 turns | 50 turns | bytes/turn at 10 | at 50 | turn 1 row | turn 50 row |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        b = r["bytes"]
        print(
            f"| {r['kind']} | {b[10]} | {b[25]} | {b[TURNS]} | {b[10] / 10:.0f} | {b[TURNS] / TURNS:.0f} | "
            f"{r['first_last'][0]} | {r['first_last'][1]} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
