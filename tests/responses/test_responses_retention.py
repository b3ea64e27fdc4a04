"""Retention, purge and storage of stored responses: the store on real SQLite and PostgreSQL, then the running
gateway, the admin API's storage report and the ``aiplus responses purge`` command together."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import openai
import pytest
import sqlalchemy as sa

from aiplus.config import ConfigError, load_settings
from aiplus.responses import store
from aiplus.storage.tables import stored_responses
from aiplus.storage.testing import scratch_database
from tests.conftest import ADMIN_TOKEN
from tests.responses.conftest import TOOL_MODEL

DAY = 86_400


def _body(response_id: str, previous: str | None, created: int) -> dict:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": "m",
        "previous_response_id": previous,
        "output": [{"type": "message", "id": f"msg_{response_id}", "role": "assistant", "content": []}],
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_store_expires_and_purges(kind, tmp_path):
    with scratch_database(kind, tmp_path) as (engine, _url):
        t0 = 1_800_000_000
        with engine.begin() as conn:
            store.save(conn, "a", _body("resp_1", None, t0), [{"type": "message", "id": "m1"}], 7)
            store.save(
                conn, "a", _body("resp_2", "resp_1", t0 + 3 * DAY), [{"type": "message", "id": "m2"}], 7
            )
            store.save(conn, "b", _body("resp_3", None, t0), [], 7)
        with engine.connect() as conn:
            turns = store.chain(conn, "a", "resp_2", now=t0 + 6 * DAY)
            assert [t.id for t in turns] == ["resp_1", "resp_2"]
            assert [t.input_items[0]["id"] for t in turns] == ["m1", "m2"]
            with pytest.raises(store.ResponseNotFound):
                store.chain(conn, "b", "resp_2", now=t0)  # another organization's: as if it did not exist
            with pytest.raises(store.BrokenChain):
                store.chain(conn, "a", "resp_2", now=t0 + 8 * DAY)  # resp_1 expired after its 7 days
            assert [(r["org_id"], r["responses"]) for r in store.storage_by_org(conn)] == [("a", 2), ("b", 1)]
        with engine.begin() as conn:
            assert store.purge(conn, now=t0 + 7 * DAY) == 2  # resp_1 and resp_3, not resp_2
            assert conn.execute(sa.select(stored_responses.c.id)).scalars().all() == ["resp_2"]


def test_retention_setting():
    assert load_settings(env={}).responses_retention_days == 30
    assert load_settings(env={"AIPLUS_RESPONSES_RETENTION_DAYS": "7"}).responses_retention_days == 7
    with pytest.raises(ConfigError, match="responses_retention_days"):
        load_settings(env={"AIPLUS_RESPONSES_RETENTION_DAYS": "0"})


def test_expiry_storage_report_and_purge_command(gateway, deployment, tmp_path):
    org = gateway.new_org("Retention Co")
    client = openai.OpenAI(base_url=gateway.v1, api_key=org["key"], max_retries=0)
    first = client.responses.create(model=TOOL_MODEL, input="one")
    second = client.responses.create(model=TOOL_MODEL, input="two", previous_response_id=first.id)
    admin = httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    org_id = org["org"]["id"]

    def report() -> dict:
        r = admin.get("/admin/responses/storage", params={"org_id": org_id})
        assert r.status_code == 200, r.text
        assert r.json()["retention_days"] == 30
        return r.json()["data"][0]

    before = report()
    assert before["responses"] == 2 and before["bytes"] > 0 and before["expired"] == 0
    with deployment.db.begin() as conn:
        rows = conn.execute(sa.select(stored_responses).where(stored_responses.c.org_id == org_id)).all()
        assert {r.expires_at - r.created_at for r in rows} == {30 * DAY}
        # thirty days pass for the first response
        conn.execute(
            stored_responses.update()
            .where(stored_responses.c.id == first.id)
            .values(expires_at=stored_responses.c.created_at - 1)
        )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError, match="expired"):
        client.responses.create(model=TOOL_MODEL, input="three", previous_response_id=second.id)
    assert report()["expired"] == 1
    config = tmp_path / "aiplus.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n{deployment.config}')
    done = subprocess.run(
        [sys.executable, "-m", "aiplus.cli", "responses", "purge", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "purged 1 expired response" in done.stdout
    after = report()
    assert after["responses"] == 1 and after["expired"] == 0 and after["bytes"] < before["bytes"]
    assert client.responses.retrieve(second.id).id == second.id
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiplus.cli",
            "responses",
            "storage",
            "--org",
            org_id,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"{org_id}\s*│\s*1\s*│\s*{after['bytes']}\s*│\s*0", shown.stdout), shown.stdout
