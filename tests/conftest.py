"""Shared fixtures: private databases and Redis prefixes, and real aiplus servers in subprocesses on loopback
ports, with real orgs and keys."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from aiplus.storage.redis import create_redis
from aiplus.storage.testing import scratch_database, shared_redis_url

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token-0123456789"
REDIS_URL = shared_redis_url()
DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_and_url(request, tmp_path):
    """A migrated, private database and its URL, on SQLite and on the shared PostgreSQL."""
    with scratch_database(request.param, tmp_path) as (engine, url):
        yield engine, url


@pytest.fixture
def db(db_and_url):
    """A migrated, private database on SQLite and on the shared PostgreSQL."""
    return db_and_url[0]


@pytest.fixture
def sqlite_db(tmp_path):
    with scratch_database("sqlite", tmp_path) as (engine, _url):
        yield engine


@pytest.fixture
def pg_db(tmp_path):
    """A private schema on the shared PostgreSQL, dropped afterwards (safe next to other test runs)."""
    with scratch_database("postgresql", tmp_path) as (engine, _url):
        yield engine


@pytest.fixture
async def redis_prefix():
    """A Redis client and a key prefix private to this test; its keys are deleted afterwards."""
    client = create_redis(REDIS_URL)
    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0, any_status: bool = False
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            status = httpx.get(url, timeout=2.0).status_code
            if any_status or status < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    data_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def new_org(self, name: str, *, tier: str = "standard", sector: str = "education", **extra) -> dict:
        """A real org and API key, created through the admin API."""
        with self.admin() as client:
            r = client.post("/admin/orgs", json={"name": name, "sector": sector, "tier": tier, **extra})
            assert r.status_code in (200, 201), r.text
            org = r.json()
            r = client.post(f"/admin/orgs/{org['id']}/keys", json={"name": "test"})
            assert r.status_code in (200, 201), r.text
            key = r.json()
        return {"org": org, "key": key["key"], "key_id": key["id"]}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    tmp: Path,
    config: str = "",
    env: dict[str, str] | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    args: tuple[str, ...] = (),
) -> Server:
    port = port or free_port()
    data_dir = data_dir or tmp / "data"
    cfg = tmp / f"aiplus-{port}.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data_dir}"\n{config}')
    log = tmp / f"server-{port}.log"
    full_env = {**os.environ, "AIPLUS_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
    full_env.pop("AIPLUS_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiplus.cli", "serve", "--config", str(cfg), "--port", str(port), *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=tmp,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, data_dir, log, full_env)
    try:
        wait_http(f"{server.url}/healthz", proc, any_status=True)  # 503 is an answer too: a model may be down
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start:\n{log.read_text()[-4000:]}") from None
    return server


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory):
    """One aiplus server on the embedded default model (SmolLM2), shared by the API tests."""
    tmp = tmp_path_factory.mktemp("embedded")
    server = start_server(tmp)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_org(embedded_server):
    return embedded_server.new_org("Test School", tier="lifeline", sector="education")
