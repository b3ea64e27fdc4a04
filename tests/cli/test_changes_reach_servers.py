"""A revocation or a tier change made with the CLI reaches a running server through Redis at once.

The server also polls the database's auth version every second; each change here is checked on the very next
request, a few milliseconds after the command returns, and three times in a row, so polling alone would almost
never pass (about 1% per change).
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
import redis

from tests.cli.conftest import Aiplus
from tests.conftest import REDIS_URL, start_server

TIERS = "[tiers.closed]\nmonthly_token_quota = 1\n"  # every completion is refused: 429 insufficient_quota


@pytest.fixture
def redis_server(tmp_path, monkeypatch, clean_env):
    """A real server on Redis (a private key prefix) and the CLI on the same config, data and Redis."""
    prefix = f"aiplus-test:{uuid.uuid4().hex[:12]}:"
    monkeypatch.setenv("AIPLUS_REDIS_PREFIX", prefix)
    server = start_server(
        tmp_path, f'redis_url = "{REDIS_URL}"\n{TIERS}', env={"AIPLUS_REDIS_PREFIX": prefix}
    )
    yield server
    server.stop()
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def cli_for(server, capsys) -> Aiplus:
    return Aiplus(next(server.data_dir.parent.glob("aiplus-*.toml")), capsys)


def test_a_revocation_is_refused_on_the_next_request(redis_server, capsys):
    aiplus = cli_for(redis_server, capsys)
    assert aiplus("orgs", "add", "Town Hall", "--sector", "public_administration").code == 0
    for _ in range(3):
        r = aiplus("keys", "create", "town-hall")
        key, key_id = (
            re.search(r"^aip_\S+$", r.out, re.M).group(0),
            re.search(r"key_[0-9a-f]{16}", r.out).group(0),
        )
        with httpx.Client(base_url=redis_server.url, headers={"authorization": f"Bearer {key}"}) as client:
            assert client.get("/v1/usage").status_code == 200  # cached by the server now
            assert aiplus("keys", "revoke", key_id).code == 0
            refused = client.get("/v1/usage")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_a_tier_change_applies_on_the_next_request(redis_server, capsys):
    aiplus = cli_for(redis_server, capsys)
    assert aiplus("orgs", "add", "Village School", "--sector", "education", "--tier", "closed").code == 0
    key = re.search(r"^aip_\S+$", aiplus("keys", "create", "village-school").out, re.M).group(0)
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
    }

    def status() -> int:
        with httpx.Client(
            base_url=redis_server.v1, headers={"authorization": f"Bearer {key}"}, timeout=120
        ) as c:
            return c.post("/chat/completions", json=body).status_code

    assert status() == 429  # the closed tier: no quota
    for tier, expected in (("standard", 200), ("closed", 429), ("standard", 200)):
        assert aiplus("orgs", "update", "village-school", "--tier", tier).code == 0
        assert status() == expected, f"after the change to {tier}"


def test_the_admin_api_signals_other_servers_the_same_way(redis_server, tmp_path):
    """PATCH /admin/orgs and DELETE /admin/keys on one server apply on another at its next request."""
    prefix = redis_server.env["AIPLUS_REDIS_PREFIX"]
    other = start_server(
        tmp_path,
        f'redis_url = "{REDIS_URL}"\n{TIERS}',
        env={"AIPLUS_REDIS_PREFIX": prefix},
        data_dir=redis_server.data_dir,
    )
    try:
        made = redis_server.new_org("Harbour Office", tier="closed", sector="transport")
        headers = {"authorization": f"Bearer {made['key']}"}
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        }
        with (
            redis_server.admin() as admin,
            httpx.Client(base_url=other.v1, headers=headers, timeout=120) as there,
        ):
            assert there.post("/chat/completions", json=body).status_code == 429
            for tier, expected in (("standard", 200), ("closed", 429)):
                assert admin.patch(f"/admin/orgs/{made['org']['id']}", json={"tier": tier}).status_code == 200
                assert there.post("/chat/completions", json=body).status_code == expected, f"after {tier}"
            assert admin.delete(f"/admin/keys/{made['key_id']}").status_code == 200
            assert there.get("/usage").status_code == 401
    finally:
        other.stop()
