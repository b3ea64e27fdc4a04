"""The ``aiplus`` command: a thin shell over the library (the admin API calls the same service functions)."""

from __future__ import annotations

import argparse
import sys

from aiplus.config import ConfigError, load_settings


def _serve(args: argparse.Namespace) -> int:
    from aiplus.server import run

    models = []
    for path in args.model or []:
        models.append({"id": _model_id_from_path(path), "engine": "llamacpp", "path": path})
    settings = load_settings(args.config, host=args.host, port=args.port, workers=args.workers)
    if models:
        from dataclasses import replace

        from aiplus.config import ModelConfig

        settings = replace(settings, models=tuple(ModelConfig(**m) for m in models))
    return run(settings)


def _model_id_from_path(path: str) -> str:
    from pathlib import Path

    return Path(path).stem.lower()


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument("--config", help="path to aiplus.toml (default: $AIPLUS_CONFIG)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--model", action="append", metavar="PATH.gguf", help="serve this GGUF file (repeatable)")
    p.set_defaults(func=_serve)


# Each room adds its own commands below; keep each block in its own function.
def _add_tenancy_commands(sub: argparse._SubParsersAction) -> None:
    """orgs, keys, usage (issue 3)."""


def _add_adoption_commands(sub: argparse._SubParsersAction) -> None:
    """registry, adoption, demo (issue 5)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiplus", description="Open-weight AI as a public utility.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_tenancy_commands(sub)
    _add_adoption_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"aiplus: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
