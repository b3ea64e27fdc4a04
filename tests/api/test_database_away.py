"""PostgreSQL unreachable (its packets dropped): what needs the database answers 503 with Retry-After within
seconds instead of hanging, requests from known keys keep being served and metered, and the server recovers by
itself once the database is back."""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from aiplus.storage.tables import usage_events
from aiplus.storage.testing import scratch_database
from tests.conftest import start_server
from tests.metering.test_upstream_usage import fake_upstream
from tests.tcp_proxy import TcpProxy

SECONDS = (
    15.0  # documented: about 5 s (a 2 s ping, then a 3 s connect timeout); generous for a loaded machine
)


@pytest.fixture
def stack(tmp_path):
    with scratch_database("postgresql", tmp_path) as (engine, url), fake_upstream(tmp_path) as upstream:
        proxy = TcpProxy(engine.url.port or 5432)
        through = url.replace(f":{engine.url.port or 5432}/", f":{proxy.port}/")
        config = f'[[models]]\nid = "m"\nengine = "openai"\nupstreams = ["{upstream}"]\nmax_concurrency = 4\n'
        server = start_server(tmp_path, config, env={"AIPLUS_DATABASE_URL": through})
        try:
            yield server, proxy, engine
        finally:
            proxy.restore()
            server.stop()
            proxy.close()


def timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    r = httpx.request(method, url, timeout=120, **kwargs)
    return r, time.monotonic() - began


def test_database_away_is_a_fast_503_and_recovers(stack):
    server, proxy, engine = stack
    org = server.new_org("Steady School")
    auth = {"authorization": f"Bearer {org['key']}"}
    admin = {"authorization": f"Bearer {server.env['AIPLUS_ADMIN_TOKEN']}"}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    assert httpx.post(f"{server.v1}/chat/completions", headers=auth, json=chat).status_code == 200

    proxy.blackhole()
    unknown = {"authorization": f"Bearer aip_{secrets.token_urlsafe(32)}"}
    probes = [
        ("GET", f"{server.url}/admin/orgs", {"headers": admin}),
        ("GET", f"{server.v1}/usage", {"headers": auth}),
        ("POST", f"{server.v1}/chat/completions", {"headers": unknown, "json": chat}),  # a key not cached
    ]
    with ThreadPoolExecutor(len(probes)) as pool:  # at once: one slow answer must not queue the others
        answers = list(pool.map(lambda p: timed(p[0], p[1], **p[2]), probes))
    for (r, took), probe in zip(answers, probes, strict=True):
        assert r.status_code == 503, (probe[1], r.text)
        assert r.headers["retry-after"].isdigit() and took < SECONDS, (probe[1], took)
        assert r.json()["error"]["code"] == "service_unavailable"

    # a key already known keeps working: served, and its usage waits in the journal
    served = []
    for _ in range(3):
        r, took = timed("POST", f"{server.v1}/chat/completions", headers=auth, json=chat)
        assert r.status_code == 200 and took < SECONDS
        served.append(r.headers["x-request-id"])

    proxy.restore()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/admin/orgs", headers=admin, timeout=30).status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the server did not recover by itself once the database was back")
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.count()).where(usage_events.c.request_id.in_(served))
            ).scalar()
        if found == len(served):
            break
        time.sleep(0.5)
    assert found == len(served)  # metered once the database was back
