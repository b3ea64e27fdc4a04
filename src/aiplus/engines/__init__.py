"""Engines generate tokens for one model each; ``create_engine`` picks the implementation by kind."""

from __future__ import annotations

import importlib

from aiplus.config import ModelConfig
from aiplus.engines.base import Engine

# kind -> "module:Class"; modules load lazily so that a gateway of upstreams never imports llama.cpp
REGISTRY = {
    "llamacpp": "aiplus.engines.llamacpp:LlamaCppEngine",
    "openai": "aiplus.engines.upstream:UpstreamEngine",
    "simulated": "aiplus.engines.simulated:SimulatedEngine",
}


def create_engine(config: ModelConfig) -> Engine:
    module, _, name = REGISTRY[config.engine].partition(":")
    return getattr(importlib.import_module(module), name)(config)
