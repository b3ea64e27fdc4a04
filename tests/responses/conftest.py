"""A real aiplus server on a private PostgreSQL schema, in front of a stand-in upstream whose model calls tools."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from aiplus.storage.testing import scratch_database
from tests.conftest import Server, free_port, start_server, wait_http

HERE = Path(__file__).parent
TOOL_MODEL = "tool-model"


@dataclass
class Deployment:
    """What a second gateway needs to join the first: the same database and engines."""

    tmp: Path
    config: str
    db: object  # the migrated SQLAlchemy engine on the same schema, for reading what the gateways stored

    def start(self) -> Server:
        return start_server(self.tmp, self.config, data_dir=self.tmp / f"data-{free_port()}")


@pytest.fixture(scope="module")
def tool_upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tool-upstream")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tool_upstream.py"), str(port)],
        stdout=(tmp / "upstream.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{url}/models", proc)
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tool_upstream):
    tmp = tmp_path_factory.mktemp("responses-pg")
    with scratch_database("postgresql", tmp) as (engine, url):
        config = f"""database_url = "{url}"

[[models]]
id = "{TOOL_MODEL}"
engine = "openai"
upstreams = ["{tool_upstream}"]
max_concurrency = 4
"""
        yield Deployment(tmp, config, engine)


@pytest.fixture(scope="module")
def gateway(deployment):
    server = deployment.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def org(gateway):
    return gateway.new_org("Agent Works", sector="ict")


@pytest.fixture(scope="module")
def client(gateway, org):
    return openai.OpenAI(base_url=gateway.v1, api_key=org["key"], max_retries=0, timeout=60)


def seen(upstream_url: str) -> list[dict]:
    """The chat bodies the stand-in upstream received so far."""
    return httpx.get(upstream_url.removesuffix("/v1") + "/seen").json()


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
