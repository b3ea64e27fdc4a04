"""Completion tokens/s of the embedded SmolLM2: through aiplus (HTTP, streaming) vs llama-cpp-python called directly.

Same GGUF, same prompts, same max_tokens, greedy decoding, alternating rounds in one run so drift hits both.
Usage: python bench/engine.py [--rounds 3] [--max-tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiplus.engines.llamacpp import default_model_path
from tests.conftest import DEFAULT_MODEL, start_server

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, step by step, for a ten-year-old.",
    "List ten ideas for a school science fair and describe each one in a sentence.",
    "Describe a day in the life of a farmer in spring.",
]


def direct_round(llm, template, max_tokens: int) -> tuple[int, float]:
    tokens = 0
    t0 = time.perf_counter()
    for prompt in PROMPTS:
        formatted = template(messages=[{"role": "user", "content": prompt}])
        ids = llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
        for chunk in llm.create_completion(
            ids,
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stop=[formatted.stop] if isinstance(formatted.stop, str) else formatted.stop,
        ):
            if chunk["choices"][0]["text"]:
                tokens += 1
    return tokens, time.perf_counter() - t0


def aiplus_round(client: httpx.Client, max_tokens: int) -> tuple[int, float]:
    tokens = 0
    t0 = time.perf_counter()
    for prompt in PROMPTS:
        body = {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    usage = orjson.loads(line[6:]).get("usage")
                    if usage:
                        tokens += usage["completion_tokens"]
    return tokens, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(
        model_path=str(default_model_path()), n_ctx=8192, n_threads=args.threads, n_batch=512, verbose=False
    )
    template = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), f'[[models]]\nid = "{DEFAULT_MODEL}"\nn_threads = {args.threads}\n')
        try:
            org = server.new_org("Bench", tier="standard", sector="ict")
            client = httpx.Client(
                base_url=server.url, timeout=300, headers={"authorization": f"Bearer {org['key']}"}
            )
            aiplus_round(client, 8)  # warm-up both
            direct_round(llm, template, 8)
            direct_rates, aiplus_rates = [], []
            for _ in range(args.rounds):
                n, s = direct_round(llm, template, args.max_tokens)
                direct_rates.append(n / s)
                n, s = aiplus_round(client, args.max_tokens)
                aiplus_rates.append(n / s)
        finally:
            server.stop()
    d, a = statistics.median(direct_rates), statistics.median(aiplus_rates)
    print(f"{'path':<40}{'tokens/s (median of ' + str(args.rounds) + ')':>28}")
    print(f"{'llama-cpp-python direct, in process':<40}{d:>28.1f}")
    print(f"{'aiplus HTTP streaming':<40}{a:>28.1f}")
    ratio = a / d
    print(f"aiplus / direct = {ratio:.3f}  (target >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'})")
    print(
        f"rounds direct {[round(x, 1) for x in direct_rates]}, aiplus {[round(x, 1) for x in aiplus_rates]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
