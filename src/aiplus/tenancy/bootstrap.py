"""First start: the server secret, the admin token, and on an empty database a ``demo`` org with a key."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from aiplus.config import Settings
from aiplus.storage.db import private_directory
from aiplus.storage.tables import orgs
from aiplus.tenancy.errors import Conflict
from aiplus.tenancy.keys import create_key
from aiplus.tenancy.orgs import create_org
from aiplus.tenancy.secrets import AdminAuth, admin_auth, server_secret

DEMO_ORG = "demo"
SECRETS_FILE = "first-start-secrets.txt"


@dataclass
class Bootstrap:
    secret: bytes
    admin: AdminAuth
    admin_token: str | None  # set only when generated now: print it, it is never shown again
    demo_key: str | None  # set only when the demo org was created now


def curl_line(settings: Settings, key: str) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    model = settings.models[0].id if settings.models else "MODEL"
    body = orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 100}
    ).decode()
    return (
        f"curl http://{host}:{settings.port}/v1/chat/completions "
        f'-H "Authorization: Bearer {key}" -H "Content-Type: application/json" -d {shlex.quote(body)}'
    )


def bootstrap(
    engine: sa.Engine,
    settings: Settings,
    say: Callable[[str], None] | None = print,
    terminal: bool | None = None,
) -> Bootstrap:
    """Idempotent and safe when several processes start at once against one database. Secrets made now are
    said in full only to a terminal (``terminal``: default, whether stdout is one); else see ``_teller``."""
    with engine.begin() as conn:
        secret = server_secret(conn, settings.secret)
    with engine.begin() as conn:
        admin, admin_token = admin_auth(conn, settings.admin_token)
    demo_key = None
    with engine.begin() as conn:
        empty = conn.execute(sa.select(orgs.c.id).limit(1)).first() is None
    if empty:
        try:
            with engine.begin() as conn:
                create_org(conn, name="Demo", sector="other", org_id=DEMO_ORG, tiers=settings.tiers)
                _row, demo_key = create_key(conn, secret, DEMO_ORG, name="demo")
        except (Conflict, sa.exc.IntegrityError):
            demo_key = None  # another process created it first
    if say is not None:
        tell = _teller(settings, say, sys.stdout.isatty() if terminal is None else terminal)
        if admin_token:
            tell("generated the admin token (shown once, stored hashed)", admin_token)
        if demo_key:
            tell(
                f"created org '{DEMO_ORG}' with an API key (shown once). Try it",
                curl_line(settings, demo_key),
            )
    return Bootstrap(secret, admin, admin_token, demo_key)


def _teller(settings: Settings, say: Callable[[str], None], terminal: bool) -> Callable[[str, str], None]:
    """Show a secret once: on the terminal when there is one; otherwise stdout is most likely a log (systemd, a
    container, a redirect), so the secret goes to an owner-only file in the data directory and the log says where."""
    if terminal:
        return lambda what, secret: say(f"aiplus: {what}:\n  {secret}")
    path = private_directory(settings.data_path) / SECRETS_FILE

    def tell(what: str, secret: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, f"{what}:\n  {secret}\n".encode())
        finally:
            os.close(fd)
        say(
            f"aiplus: {what}: written to {path} (readable by this user only; not printed, stdout is no terminal)"
        )

    return tell
