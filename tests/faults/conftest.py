"""A switchable upstream in a subprocess, and helpers to drive it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_http

HERE = Path(__file__).parent


class Upstream:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url = url  # the root; the OpenAI base is url + "/v1"
        self.proc = proc

    def fault(self, mode: str, retry_after: str | None = None) -> None:
        r = httpx.post(f"{self.url}/fault", json={"mode": mode, "retry_after": retry_after}, timeout=10)
        r.raise_for_status()

    def served(self) -> int:
        return httpx.get(f"{self.url}/served", timeout=10).json()["served"]


def spawn_upstream(tmp: Path, port: int | None = None) -> Upstream:
    port = port or free_port()
    log = tmp / f"upstream-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models", proc, timeout=30)
    return Upstream(url, proc)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    up = spawn_upstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.proc.kill()
    up.proc.wait()
