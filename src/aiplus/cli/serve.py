"""``aiplus serve``: the OpenAI-compatible server."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from aiplus.cli.shell import add_config_option, command, load_settings
from aiplus.config import ModelConfig


@command
def serve(args: argparse.Namespace) -> int:
    from aiplus.server import run

    settings = load_settings(args, host=args.host, port=args.port, workers=args.workers)
    if args.model:
        models = tuple(ModelConfig(id=Path(p).stem.lower(), engine="llamacpp", path=p) for p in args.model)
        settings = replace(settings, models=models)
    return run(settings)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_config_option(sub.add_parser("serve", help="start the OpenAI-compatible server"))
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--model", action="append", metavar="PATH.gguf", help="serve this GGUF file (repeatable)")
    p.set_defaults(func=serve, own_logging=True)
