"""A real aiplus server with a seeded demo region, and Debian's Chromium driven by Playwright.

Playwright's own browser download needs the internet; ``make test`` installs Debian's ``chromium`` instead and
the tests launch it by path. Screenshots go to ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, start_server

CHROMIUM = os.environ.get("AIPLUS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="session")
def web_server(tmp_path_factory):
    """One server whose database holds a small demo region (seeded before it starts, as a new user would)."""
    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "data"
    cfg = tmp / "seed.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data}"\n')
    seeded = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiplus.cli",
            "demo",
            "seed",
            "--orgs",
            "240",
            "--months",
            "14",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "AIPLUS_ADMIN_TOKEN": ADMIN_TOKEN},
        cwd=tmp,
    )
    assert seeded.returncode == 0, seeded.stderr
    server = start_server(tmp, data_dir=data)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium chromium-driver"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    """A fresh browser profile per test (no cookies carried over); CSP violations are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.csp_violations = []

    def watch(page):
        page.on(
            "console",
            lambda msg: (
                context.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
            ),
        )

    context.on("page", watch)
    yield context
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
