"""Schemathesis over an OpenAPI document, bounded: every operation gets ``examples`` generated cases (valid ones,
then invalid ones), each sent to a real server. A case fails on a 5xx, a hang (no answer in ``timeout_s``), an
answer without ``x-request-id``, or a status the document does not list for the operation.

Also the OpenAI routes' document, built from ``aiplus.protocol``'s wire types (the server keeps those routes out
of its own /openapi.json, which covers the admin API)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from aiplus import protocol


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def fuzz(
    doc: dict[str, Any], base_url: str, headers: dict[str, str], examples: int, timeout_s: float = 30
) -> Tally:
    """Run every operation of ``doc`` against ``base_url``; failures are collected, not raised, so that one run
    reports them all."""
    tally = Tally()
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _runner(operation, mode, base_url, headers, examples, timeout_s, tally)()
            except hypothesis.errors.Unsatisfiable:  # nothing to negate (an operation without inputs)
                pass
    return tally


def _runner(operation, mode, base_url, headers, examples, timeout_s, tally):
    documented = set(operation.definition.raw.get("responses", {}))

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: schemathesis.Case) -> None:
        label = f"{case.method} {case.formatted_path} [{mode.value}]"
        tally.cases += 1
        try:
            response = case.call(base_url=base_url, headers=headers, timeout=timeout_s)
        except Exception as exc:  # a hang or a dropped connection
            tally.failures.append(f"{label}: {exc.__class__.__name__}: {exc}"[:300])
            return
        status = response.status_code
        tally.statuses[status] += 1
        problem = None
        if status >= 500:
            problem = f"{status} {response.text[:200]}"
        elif "x-request-id" not in response.headers:
            problem = f"{status} without x-request-id"
        elif str(status) not in documented and "default" not in documented:
            problem = f"{status} not documented ({sorted(documented)}): {response.text[:200]}"
        if problem:
            tally.failures.append(f"{label}: {problem}")

    return send


_NARROWER = {
    "n": {"const": 1},
    "prompt": {"type": "string"},
    "input": {"type": "string", "minLength": 1},
    "dimensions": {"type": "null"},
}


def _body(model: type) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs


def openai_document(model_id: str) -> dict[str, Any]:
    """OpenAPI 3.1 for the OpenAI routes aiplus serves, from the same pydantic models that validate them."""
    errors = {
        str(s): {
            "description": "an OpenAI error",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
        for s in (400, 401, 404, 408, 413, 429)
    }
    ok = {"200": {"description": "the answer"}}
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for path, model in (
        ("/v1/chat/completions", protocol.ChatCompletionRequest),
        ("/v1/completions", protocol.CompletionRequest),
        ("/v1/embeddings", protocol.EmbeddingRequest),
    ):
        schema, defs = _body(model)
        props = schema["properties"]
        props["model"] = {"type": "string", "enum": [model_id]}
        # what cross-field validators refuse, said in the schema, so that valid cases are mostly served
        for name, value in _NARROWER.items():
            if name in props:
                props[name] = value
        components.update(defs)
        paths[path] = {
            "post": {
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                "responses": {**ok, **errors},
            }
        }
    paths["/v1/models"] = {"get": {"responses": {**ok, **errors}}}
    paths["/v1/models/{model}"] = {
        "get": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {**ok, **errors},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "aiplus OpenAI routes", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
