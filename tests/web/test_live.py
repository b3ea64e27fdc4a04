"""The live view's and the models page's figures over real HTTP: calls counted, tiers' and orgs' shares set
against their weights, each replica's health."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, free_port, start_server
from tests.web.test_sessions import admin_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("web-live"))
    yield server
    server.stop()


def test_live_view_counts_calls_and_sets_shares_against_weights(server):
    client, _ = admin_client(server)
    assert "No calls in the window yet." in client.get("/admin/ui/live.part").text
    lifeline = server.new_org("Village School", tier="lifeline", sector="education")
    standard = server.new_org("Town Bank", tier="standard", sector="finance")
    for org in (lifeline, standard):
        r = httpx.post(
            f"{server.v1}/chat/completions",
            headers={"authorization": f"Bearer {org['key']}"},
            json={"model": DEFAULT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    r = httpx.post(  # a refusal counts as an error
        f"{server.v1}/chat/completions",
        headers={"authorization": f"Bearer {standard['key']}"},
        json={
            "model": DEFAULT_MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "x" * 40_000}],
        },
        timeout=60,
    )
    assert r.status_code == 400
    part = client.get("/admin/ui/live.part")
    assert part.status_code == 200 and "content-security-policy" in part.headers
    html = part.text
    assert re.search(r'id="calls">3<', html)
    assert re.search(r'id="errors">1 ', html)

    def row(table: str, name: str) -> str:
        section = html[html.index(f'id="{table}"') :]
        return re.search(rf"<tr><td>(?:<a [^>]*>)?{name}.*?</tr>", section, re.S).group(0)

    # by weight: lifeline 2.0 and standard 1.0 -> two thirds and one third, whatever each was served
    assert "66.7%" in row("tier-shares", "lifeline") and "33.3%" in row("tier-shares", "standard")
    assert "66.7%" in row("org-shares", lifeline["org"]["id"])
    assert DEFAULT_MODEL in html and "healthy" in html
    # signed out: no fragment
    assert httpx.get(f"{server.url}/admin/ui/live.part", timeout=30).status_code == 401


class _Models(BaseHTTPRequestHandler):
    """Stands in for a remote GPU server's model list (its health check), the one thing outside this machine."""

    def do_GET(self):
        body = b'{"object": "list", "data": []}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_models_page_shows_each_replicas_health(tmp_path):
    alive = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=alive.serve_forever, daemon=True).start()
    dead = free_port()
    config = (
        '[[models]]\nid = "remote-pair"\nengine = "openai"\nhealth_interval_s = 1\n'
        f'upstreams = ["http://127.0.0.1:{alive.server_port}/v1", "http://127.0.0.1:{dead}/v1"]\n'
    )
    server = start_server(tmp_path, config)
    try:
        client, _ = admin_client(server)
        html = client.get("/admin/ui/models").text
        replicas = re.search(r'<ul class="replicas">(.*?)</ul>', html, re.S).group(1)
        items = re.findall(
            r"<li>#(\d) <span class=\"(ok|bad)\">(up|down)</span> · (\d+) in flight</li>", replicas
        )
        assert items == [("0", "ok", "up", "0"), ("1", "bad", "down", "0")], replicas
        assert "remote-pair" in html and "healthy" in html  # the model serves while one replica does
    finally:
        server.stop()
        alive.shutdown()
