"""Aggregate completion tokens/s of the embedded engine vs llama.cpp's llama-server and llama-cpp-python's server.

Same GGUF (SmolLM2-135M-Instruct Q4_1), same thread count, same prompts, greedy decoding, ``--max-tokens`` each,
at 1, 4 and 8 concurrent streams. The three servers run side by side in one run and are measured in alternation
(round by round), so the machine's drift hits all of them; compare the ratios, not the absolute figures.
llama-server (8 slots, continuous batching) is built from the llama.cpp vendored in the installed
llama-cpp-python's sdist (``bench/llama_server.py``; cached; its column is skipped if the build fails).
Usage: python bench/engine.py [--rounds 3] [--max-tokens 64] [--threads N] [--levels 1,4,8] [--per-stream 2]
       [--unique-prompts]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_server import llama_server_binary

from aiplus.engines.llamacpp import default_model_path
from tests.conftest import DEFAULT_MODEL, free_port, start_server, wait_http

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works, step by step, for a ten-year-old.",
    "List ten ideas for a school science fair and describe each one in a sentence.",
    "Describe a day in the life of a farmer in spring.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the seasons change, with examples.",
    "Tell the history of the printing press in a few paragraphs.",
    "Describe how to plant a vegetable garden.",
]
SLOTS = 8
_serial = itertools.count(1)


class Target:
    """A running OpenAI-compatible server: where to send requests and what to call the model."""

    def __init__(self, name: str, url: str, model: str, key: str = "none", stop=None):
        self.name, self.url, self.model, self.key, self._stop = name, url, model, key, stop

    def stop(self) -> None:
        if self._stop:
            self._stop()


def _child(name: str, argv: list[str], port: int, log_dir: Path, model: str) -> Target:
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout=120)
    except Exception:
        proc.kill()
        raise

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=30)

    return Target(name, f"http://127.0.0.1:{port}", model, stop=stop)


def start_targets(tmp: Path, threads: int, n_ctx_seq: int) -> list[Target]:
    gguf = str(default_model_path())
    targets = []
    server = start_server(
        tmp,
        f'[[models]]\nid = "{DEFAULT_MODEL}"\nn_threads = {threads}\nmax_concurrency = {SLOTS}\n'
        f"context_length = {n_ctx_seq}\n",
    )
    key = server.new_org("Bench", tier="standard", sector="ict")["key"]
    targets.append(Target("aiplus embedded", server.url, DEFAULT_MODEL, key, server.stop))
    binary = llama_server_binary()
    if binary is not None:
        port = free_port()
        argv = [str(binary), "-m", gguf, "--port", str(port), "-t", str(threads), "-tb", str(threads)]
        argv += ["-np", str(SLOTS), "-c", str(SLOTS * n_ctx_seq), "--no-webui"]
        targets.append(_child("llama-server", argv, port, tmp, "model"))
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port)]
    argv += ["--n_threads", str(threads), "--n_ctx", str(n_ctx_seq), "--verbose", "false"]
    argv += ["--interrupt_requests", "false"]  # else a new request cuts the running one short
    targets.append(_child("llama-cpp-python server", argv, port, tmp, "model"))
    return targets


async def measure(
    target: Target, concurrency: int, max_tokens: int, per_stream: int, unique: bool = False
) -> float:
    """Completion tokens/s over ``concurrency`` streams, each sending ``per_stream`` requests back to back.

    ``unique`` puts a fresh number at the start of each prompt, so that no server can reuse a cached prompt beyond
    the chat template's shared head (llama-server keeps each slot's last prompt and reuses its common prefix).
    """
    async with httpx.AsyncClient(
        base_url=target.url, timeout=600, headers={"authorization": f"Bearer {target.key}"}
    ) as client:

        def prefix() -> str:
            return f"Request {next(_serial)}. " if unique else ""

        async def stream(i: int) -> int:
            tokens = 0
            for j in range(per_stream):
                body = {
                    "model": target.model,
                    "messages": [{"role": "user", "content": prefix() + PROMPTS[(i + j) % len(PROMPTS)]}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
            return tokens

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(stream(i) for i in range(concurrency))))
        return tokens / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--per-stream", type=int, default=2, help="requests each stream sends back to back")
    parser.add_argument(
        "--unique-prompts", action="store_true", help="no prompt repeats (no prompt-cache hits)"
    )
    parser.add_argument("--context", type=int, default=2048, help="context per sequence / slot")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        targets = start_targets(Path(tmp), args.threads, args.context)
        try:
            for target in targets:  # warm-up
                asyncio.run(measure(target, 2, 8, per_stream=1))
            load = [os.getloadavg()[0]]
            rates: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for level in levels:
                    for target in targets:
                        rate = asyncio.run(
                            measure(target, level, args.max_tokens, args.per_stream, args.unique_prompts)
                        )
                        rates.setdefault((target.name, level), []).append(rate)
                        print(f"  {target.name} @ {level}: {rate:.1f} tokens/s", flush=True)
                load.append(os.getloadavg()[0])
        finally:
            for target in targets:
                target.stop()

    names = [t.name for t in targets]
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"completion tokens/s, median of {args.rounds} rounds, {args.max_tokens} tokens per request, "
        f"{args.threads} threads; 1-min load average during the run: {', '.join(f'{x:.1f}' for x in load)}"
    )
    print(
        f"{'server':<28}"
        + "".join(f"{f'{level} stream' + ('s' if level > 1 else ''):>14}" for level in levels)
    )
    for name in names:
        print(f"{name:<28}" + "".join(f"{median[(name, level)]:>14.1f}" for level in levels))
    if "llama-server" in names:
        ratios = [median[("aiplus embedded", lv)] / median[("llama-server", lv)] for lv in levels]
        print(f"{'aiplus / llama-server':<28}" + "".join(f"{r:>14.2f}" for r in ratios))
    else:
        print("llama-server: not built (see the message above); no ratio")
    for key, values in sorted(rates.items()):
        print(f"  rounds {key[0]} @ {key[1]}: {[round(v, 1) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
