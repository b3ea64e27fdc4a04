"""The servers an overhead benchmark compares: the fake upstream itself, aiplus, and LiteLLM proxy.

Each target starts its server in its own process, exposes the loopback port, the API key a client sends
and the pid whose process tree is measured, and stops it again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from procstat import Server

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
LITELLM_MASTER_KEY = "sk-bench-master"
ADMIN_TOKEN = "bench-admin-token"
BENCH_TIER = "bench"


def source_version() -> str:
    """The commit aiplus runs from, marked when src/ has changes not yet committed (editable install)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], check=False, capture_output=True, text=True)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return f"{commit} + uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else commit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    name = "target"
    api_key: str | None = None
    cpus: set[int] | None = None  # CPU affinity of the server's process tree (``--pin``)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.server: Server | None = None
        self.version = ""

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class Direct(Target):
    """The fake upstream, measured without anything in front of it."""

    name = "direct"

    def __init__(
        self, workdir: Path, chunk_delay_ms: float = 0.0, log_name: str = "fake_upstream.log"
    ) -> None:
        super().__init__(workdir)
        self.chunk_delay_ms = chunk_delay_ms
        self.log_name = log_name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        argv = [
            PYTHON,
            str(BENCH_DIR / "fake_upstream.py"),
            "--port",
            str(self.port),
            "--chunk-delay-ms",
            str(self.chunk_delay_ms),
        ]
        self.server = Server("fake upstream", argv, log_path=self.workdir / self.log_name, cpus=self.cpus)

    def wait_ready(self) -> None:
        assert self.server is not None
        self.server.wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=15)

    def stats(self) -> dict[str, int]:
        """Requests answered and connections accepted by the fake upstream so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/bench/stats", timeout=5) as resp:
            return json.loads(resp.read())


def litellm_installed(venv: Path) -> bool:
    return (venv / "bin" / "litellm").exists()


def install_litellm(venv: Path, spec: str, log_path: Path) -> subprocess.Popen | None:
    """Start creating ``venv`` with ``spec`` installed, unless it is there; returns the running installer."""
    if litellm_installed(venv):
        return None
    script = (
        f'set -e; "{PYTHON}" -m venv "{venv}"; "{venv}/bin/pip" install --disable-pip-version-check -q '
        f"'{spec}'"
    )
    log = open(log_path, "wb")
    return subprocess.Popen(
        ["bash", "-c", script],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


class LiteLLM(Target):
    """LiteLLM proxy, one worker, default settings, a master key, routed to the same fake upstream."""

    name = "litellm"
    api_key = LITELLM_MASTER_KEY

    def __init__(self, workdir: Path, upstreams: dict[str, str], venv: Path) -> None:
        super().__init__(workdir)
        self.upstreams = upstreams
        self.venv = venv

    def start(self) -> None:
        config = self.workdir / "litellm.yaml"
        models = "".join(
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {url}\n"
            "      api_key: sk-upstream\n"
            for model, url in self.upstreams.items()
        )
        config.write_text(f"model_list:\n{models}general_settings:\n  master_key: {LITELLM_MASTER_KEY}\n")
        env = dict(os.environ)
        # Only loopback is reachable here: use the bundled model-cost map instead of fetching it at start.
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        argv = [
            str(self.venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        self.server = Server(
            "litellm",
            argv,
            env=env,
            cwd=str(self.workdir),
            log_path=self.workdir / "litellm.log",
            cpus=self.cpus,
        )
        out = subprocess.run(
            [
                str(self.venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        self.version = out.stdout.strip()

    def wait_ready(self) -> None:
        assert self.server is not None
        self.server.wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=120)


class Aiplus(Target):
    """``aiplus serve``: one worker, SQLite, an org key on a tier whose limits are on but not binding."""

    name = "aiplus"

    def __init__(
        self,
        workdir: Path,
        upstreams: dict[str, str],
        command: list[str] | None = None,
        api_key: str | None = None,
        serve_args: list[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.upstreams = upstreams
        self.command = command or [str(Path(PYTHON).parent / "aiplus")]
        self.serve_args = serve_args or []
        self.api_key = api_key
        self.data_dir = workdir / "aiplus-data"

    def write_config(self) -> Path:
        config = self.workdir / "aiplus.toml"
        config.write_text(
            "[server]\n"
            f'data_dir = "{self.data_dir}"\n'
            "\n"
            f"[tiers.{BENCH_TIER}]\n"
            "weight = 1.0\n"
            "requests_per_minute = 100000000\n"
            "tokens_per_minute = 10000000000\n"
            "monthly_token_quota = 1000000000000000\n"
            "max_concurrent = 100000\n"
            "\n"
            "[scheduling]\n"
            'policy = "fair"\n'
            + "".join(
                f'\n[[models]]\nid = "{model}"\nengine = "openai"\nupstreams = ["{url}"]\nmax_concurrency = 256\n'
                for model, url in self.upstreams.items()
            )
        )
        return config

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        env = dict(os.environ)
        env["AIPLUS_ADMIN_TOKEN"] = ADMIN_TOKEN
        argv = [*self.command, "serve", "--config", str(config), "--port", str(self.port), *self.serve_args]
        self.server = Server(
            "aiplus",
            argv,
            env=env,
            cwd=str(self.workdir),
            log_path=self.workdir / "aiplus.log",
            cpus=self.cpus,
        )
        self.version = source_version()

    def wait_ready(self) -> None:
        assert self.server is not None
        self.server.wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=60)
        if not self.api_key:
            self.api_key = self._create_key()

    def _admin(self, method: str, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def _create_key(self) -> str:
        """A real org and key through the admin API (the same service functions the CLI uses)."""
        org = self._admin("POST", "/admin/orgs", {"name": "Bench Org", "sector": "ict", "tier": BENCH_TIER})
        org_id = org.get("id") or org.get("org_id") or (org.get("org") or {}).get("id")
        if not org_id:
            raise RuntimeError(f"aiplus: no org id in the admin answer {org!r}")
        key = self._admin("POST", f"/admin/orgs/{org_id}/keys", {"name": "bench"})
        secret = key.get("key") or key.get("api_key") or key.get("secret")
        if not secret:
            raise RuntimeError(f"aiplus: no key in the admin answer {key!r}")
        return secret
