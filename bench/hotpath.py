"""Profile a running gateway under load with py-spy, and boil the samples down to the frames that cost most.

py-spy samples the process from outside (no code change, little overhead); ``--format raw`` writes
collapsed stacks (with the thread as the first frame), one ``frame;frame;... count`` line each, which this module sums into inclusive and
self time per function. Needs py-spy (``.venv/bin/pip install py-spy``) and ptrace rights (root here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen:
    """Start sampling ``pid`` (all its threads) for ``seconds``; collapsed stacks go to ``out``."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found: install it with .venv/bin/pip install py-spy")
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def _idle(frames: list[str]) -> bool:
    # A thread-pool worker waiting for work is sampled as active (it blocks in a lock); it costs nothing.
    return frames[-1].startswith("_worker (concurrent/futures/thread.py")


def summarize(raw: Path, top: int = 25) -> str:
    """Busy samples per thread, then inclusive and self shares per function, as small markdown tables."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = [f for f in stack.split(";") if f and not f.startswith("process ")]
        thread = parts[0].split(": ", 1)[-1] if parts and parts[0].startswith("thread ") else "?"
        frames = [_short(f) for f in parts if not f.startswith("thread ")]
        if not frames or _idle(frames):
            continue
        total += count
        threads[thread] += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "no samples"
    lines = [f"{total} busy samples", "", "| share | thread |", "|---|---|"]
    lines += [f"| {n / total:6.1%} | {t} |" for t, n in threads.most_common(8)]
    lines += ["", "| inclusive | function |", "|---|---|"]
    lines += [f"| {n / total:6.1%} | `{f}` |" for f, n in inclusive.most_common(top)]
    lines += ["", "| self | function |", "|---|---|"]
    lines += [f"| {n / total:6.1%} | `{f}` |" for f, n in own.most_common(top)]
    return "\n".join(lines)
