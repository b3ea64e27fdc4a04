"""Schemathesis over the admin API's OpenAPI document and over the OpenAI routes, against a real server on
PostgreSQL (where NUL in a query was a 500) in front of the switchable upstream. ``make test`` runs a few cases per
operation; ``make soak`` (AIPLUS_SOAK_EXAMPLES) many more. Asserts 0 5xx, 0 hangs, an x-request-id on every
answer and only documented statuses; prints the tally that docs/reliability.md quotes."""

from __future__ import annotations

import os

import httpx
import pytest

from aiplus.storage.testing import scratch_database
from tests.conftest import ADMIN_TOKEN, start_server
from tests.faults.fuzzing import fuzz, openai_document

EXAMPLES = int(os.environ.get("AIPLUS_SOAK_EXAMPLES", "15"))
MODEL = "up"


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("fuzz")
    with scratch_database("postgresql", tmp) as (_engine, url):
        config = (
            f'database_url = "{url}"\n'
            "[tiers.fuzz]\nweight = 1.0\n"  # no rate limits: the fuzzer's cases reach the handlers
            f'[[models]]\nid = "{MODEL}"\nengine = "openai"\nupstreams = ["{upstream.url}/v1"]\n'
            "embeddings = false\n"
        )
        server = start_server(tmp, config)
        yield server
        server.stop()


def report(name: str, tally) -> None:
    print(f"\n{name}: {tally.cases} cases, statuses {dict(sorted(tally.statuses.items()))}")
    assert not tally.failures, "\n".join(tally.failures[:20])


def test_admin_api_fuzzed(server):
    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    server.new_org("Fuzz Target", tier="fuzz")  # something for the reads to find
    tally = fuzz(doc, server.url, {"authorization": f"Bearer {ADMIN_TOKEN}"}, EXAMPLES)
    report("admin API", tally)
    assert tally.cases >= 10 * EXAMPLES


def test_openai_routes_fuzzed(server):
    key = server.new_org("Fuzz Client", tier="fuzz")["key"]
    tally = fuzz(openai_document(MODEL), server.url, {"authorization": f"Bearer {key}"}, EXAMPLES)
    report("OpenAI routes", tally)
    assert tally.cases >= 5 * EXAMPLES
    assert tally.statuses[200] > 0  # valid cases were served, not only refused
