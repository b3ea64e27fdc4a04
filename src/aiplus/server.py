"""Runs the app under uvicorn (uvloop + httptools), in one process or several workers."""

from __future__ import annotations

import base64
import os
import pickle

import uvicorn

from aiplus.config import Settings

_SETTINGS_ENV = "AIPLUS__SETTINGS"  # how the parent hands its exact settings to worker processes


def app_from_env():
    """Factory for worker processes: the settings the parent resolved, flags and all."""
    from aiplus.app import create_app

    settings = pickle.loads(base64.b64decode(os.environ[_SETTINGS_ENV]))
    _limit_heads(settings)
    return create_app(settings)


def _limit_heads(settings: Settings) -> None:
    from aiplus.connections import GuardedHttpToolsProtocol, HeadLimits

    GuardedHttpToolsProtocol.limits = HeadLimits.of(settings)


def run(settings: Settings) -> int:
    options = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "aiplus.connections:GuardedHttpToolsProtocol",  # httptools with limits on request heads
        "timeout_keep_alive": settings.idle_connection_timeout_s,
        "log_level": settings.log_level,
        "access_log": False,
        "proxy_headers": False,  # aiplus never reads the client address; skip the per-request middleware
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers > 1:
        os.environ[_SETTINGS_ENV] = base64.b64encode(pickle.dumps(settings)).decode()
        uvicorn.run("aiplus.server:app_from_env", factory=True, workers=settings.workers, **options)
    else:
        from aiplus.app import create_app

        _limit_heads(settings)
        uvicorn.run(create_app(settings), **options)
    return 0
