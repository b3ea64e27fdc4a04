"""Shared fixtures: real aiplus servers in subprocesses on loopback ports, with real orgs and keys."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token-0123456789"
PG_URL = os.environ.get("AIPLUS_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIPLUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT_MODEL = "smollm2-135m-instruct"


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
