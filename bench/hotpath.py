"""Profile a running gateway under load with py-spy, and boil the samples down to the frames that cost most.

py-spy samples the process from outside (no code change, little overhead); ``--format raw`` writes
collapsed stacks of the thread holding the GIL (the Python work), one ``frame;frame;... count`` line each, which this module sums into inclusive and
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
    """Start sampling ``pid`` and its subprocesses for ``seconds``; collapsed stacks go to ``out``."""
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
        "--subprocesses",
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


def summarize(raw: Path, top: int = 25) -> str:
    """Inclusive and self shares of the samples, per function, as two small markdown tables."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "| inclusive | function |", "|---|---|"]
    lines += [f"| {n / total:6.1%} | `{f}` |" for f, n in inclusive.most_common(top)]
    lines += ["", "| self | function |", "|---|---|"]
    lines += [f"| {n / total:6.1%} | `{f}` |" for f, n in own.most_common(top)]
    return "\n".join(lines)
