"""Turning overhead measurements into the printed table, the issue-6 target checks, and the docs section."""

from __future__ import annotations

import math
import re
from pathlib import Path

SECTION = "## Gateway overhead (issue 6)"
DOC_TITLE = "# Benchmarks"

Results = dict[tuple[str, str, int], dict]


def _f(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _diff(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def table(results: Results, targets: list[str], modes: list[str], concurrency: tuple[int, ...]) -> str:
    """One markdown table: a row per mode, concurrency and target; added figures are over direct."""
    head = (
        "| mode | conc | target | req/s | p50 ms | p99 ms | +p50 ms | +p99 ms | TTFT p50 ms | +TTFT p50 ms "
        "| CPU s / 1k req | upstream conns / 1k req | errors |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in modes:
        for c in concurrency:
            base = results.get(("direct", mode, c))
            for name in targets:
                r = results.get((name, mode, c))
                if r is None:
                    rows.append(f"| {mode} | {c} | {name} | not run | | | | | | | | | |")
                    continue
                lat, stream = r["latency"], "ttft" in r
                ttft = r.get("ttft", {}).get("p50_ms") if stream else None
                add50 = add99 = add_ttft = None
                if base is not None and name != "direct":
                    add50 = _diff(lat["p50_ms"], base["latency"]["p50_ms"])
                    add99 = _diff(lat["p99_ms"], base["latency"]["p99_ms"])
                    if stream:
                        add_ttft = _diff(ttft, base.get("ttft", {}).get("p50_ms"))
                rows.append(
                    f"| {mode} | {c} | {name} | {r['rps']:.0f} | {_f(lat['p50_ms'], 3)} | {_f(lat['p99_ms'], 3)} "
                    f"| {_f(add50, 3, True)} | {_f(add99, 3, True)} | {_f(ttft, 3)} | {_f(add_ttft, 3, True)} "
                    f"| {_f(r['cpu_s_per_1k'], 3)} | {_f(r.get('upstream_conns_per_1k'), 1)} | {r['errors']} |"
                )
    return "\n".join(rows)


def _get(results: Results, name: str, mode: str, c: int) -> dict | None:
    return results.get((name, mode, c))


def checks(
    results: Results, rss: list[dict], targets: list[str], peaks: dict[str, float] | None = None
) -> str:
    """The issue's targets, each with the measured figure and whether it is met (errors fail a target)."""
    lines = []

    def verdict(ok: bool, *cells: dict) -> str:
        errors = sum(cell["errors"] for cell in cells)
        return ("met" if ok else "NOT met") if not errors else f"NOT met ({errors} errors)"

    direct1, aip1 = _get(results, "direct", "json", 1), _get(results, "aiplus", "json", 1)
    added = _diff(aip1 and aip1["latency"]["p50_ms"], direct1 and direct1["latency"]["p50_ms"])
    if added is not None:
        lines.append(
            f"- aiplus added p50 latency at concurrency 1: {added:.3f} ms (target <= 0.5 ms): "
            f"{verdict(added <= 0.5, aip1)}"
        )
    aip16, lit16 = _get(results, "aiplus", "json", 16), _get(results, "litellm", "json", 16)
    if aip16:
        ratio = aip16["rps"] / lit16["rps"] if lit16 and lit16["rps"] else None
        ratio_txt = f", {ratio:.1f}x LiteLLM's {lit16['rps']:.0f}" if ratio else ""
        ok = aip16["rps"] >= 2000 and (ratio is None or ratio >= 15)
        lines.append(
            f"- aiplus requests/s at concurrency 16, non-streaming: {aip16['rps']:.0f}{ratio_txt} "
            f"(target >= 2,000 and >= 15x LiteLLM): {verdict(ok, aip16)}"
        )
    for mode, c in (("stream", 1), ("stream", 16), ("paced", 1), ("paced", 16)):
        ds, ast = _get(results, "direct", mode, c), _get(results, "aiplus", mode, c)
        added = _diff(ast and ast.get("ttft", {}).get("p50_ms"), ds and ds.get("ttft", {}).get("p50_ms"))
        if added is not None:
            lines.append(
                f"- aiplus added time to first token (p50), {mode}, concurrency {c}: {added:.3f} ms "
                f"(target <= 1 ms): {verdict(added <= 1.0, ast)}"
            )
    for check in rss:
        lines.append(
            f"- {check['target']} RSS over {check['requests']:,} requests: {check['baseline_mib']:.1f} MiB after "
            f"the first batch -> {check['final_mib']:.1f} MiB, growth {check['growth'] * 100:+.1f}% "
            f"(target < 10%): {verdict(check['growth'] < 0.10, check)}"
        )
    if "aiplus" in targets and not any(name == "aiplus" for name, _, _ in results):
        lines.append("- aiplus: not measured in this run (see the notes)")
    if peaks:
        lines.append(
            "- peak RSS (VmHWM, whole process tree): "
            + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in peaks.items())
        )
    return "\n".join(lines)


def section(meta: dict, table_md: str, checks_md: str, rss: list[dict]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) or "–"
    parts = [
        SECTION,
        "",
        f"Measured {meta['date']} ({meta['minutes']:.1f} min) with:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {meta['machine']}. Versions: {versions}.",
        "",
        (
            "Setup: a fake OpenAI upstream (`bench/fake_upstream.py`, raw asyncio + uvloop + httptools, fixed "
            "answers: 6 content chunks and a usage chunk when streaming, "
            f"{meta['paced_delay_ms']:g} ms between chunks in the `paced` mode, none otherwise) and a closed-loop load generator on keep-alive "
            "connections (`bench/loadgen.py`), each in its own process, loopback only. Every target serves the same "
            "short chat request. `direct` is the fake upstream alone; `aiplus` is `aiplus serve` with one worker, "
            "SQLite, a real org key on a tier whose limits are on but not binding, the fair scheduler and the ledger; "
            "`litellm` is LiteLLM proxy with one worker, default settings and a master key "
            "(`LITELLM_LOCAL_MODEL_COST_MAP=True`, since only loopback is reachable here). Each cell is "
            f"{meta['warmup']:g} s of warm-up then {meta['duration']:g} s measured. `+` columns are the difference "
            "from `direct` at the same concurrency; TTFT is the time to the first SSE event with content; CPU is "
            "user + system seconds of the server's process tree (/proc/PID/stat) per 1,000 requests sent; upstream "
            "conns are the TCP connections the fake upstream accepted per 1,000 requests (a gateway that keeps "
            "its upstream connections alive opens almost none). "
        )
        + (
            "Pinned (`--pin`): load generator and fake upstream on CPU 0, the gateway alone on CPU 1."
            if meta.get("pin")
            else "Not pinned: load generator, fake upstream and gateway share both cores."
        ),
        "",
        table_md,
        "",
        "Against the issue's targets:",
        "",
        checks_md,
    ]
    if meta["notes"]:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(parts) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace this benchmark's section in ``path`` (creating the file if needed), leaving others untouched."""
    text = path.read_text() if path.exists() else f"{DOC_TITLE}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
