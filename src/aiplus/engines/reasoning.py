"""DeepSeek-R1-style reasoning: text inside ``<think>...</think>`` is reasoning, the rest is the answer.

As in vLLM's ``deepseek_r1`` parser, an answer is reasoning from its start until ``</think>``: R1 chat templates
often write the opening ``<think>`` into the prompt, so the model's output may begin without it (a leading
``<think>`` is dropped when present). An answer with no ``</think>`` at all is all reasoning, as DeepSeek's API
returns it. The splitter is incremental: tags cut across stream chunks (``"</thi"`` + ``"nk>"``) are still found,
holding back only the few characters that could be the start of a tag.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Feed text pieces; get back ``(reasoning, content)`` pieces."""

    __slots__ = ("_buffer", "_state")

    def __init__(self) -> None:
        self._state = "start"  # start -> think -> answer
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == "answer":
            return "", text
        self._buffer += text
        if self._state == "start":
            stripped = self._buffer.lstrip()
            if OPEN.startswith(stripped) and len(stripped) < len(OPEN):
                return "", ""  # could still become "<think>": wait
            self._buffer = stripped[len(OPEN) :] if stripped.startswith(OPEN) else self._buffer
            self._state = "think"
        pos = self._buffer.find(CLOSE)
        if pos != -1:
            reasoning, content = self._buffer[:pos], self._buffer[pos + len(CLOSE) :]
            self._buffer = ""
            self._state = "answer"
            return reasoning, content
        keep = _partial_suffix(self._buffer, CLOSE)
        cut = len(self._buffer) - keep
        reasoning, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return reasoning, ""

    def flush(self) -> tuple[str, str]:
        """The held-back tail at the end of the stream (it is reasoning: no ``</think>`` came)."""
        rest, self._buffer = self._buffer, ""
        if self._state == "answer":
            return "", rest
        return rest, ""

    @property
    def answering(self) -> bool:
        return self._state == "answer"


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a whole answer into ``(reasoning, content)``, trimming the newlines R1 puts around its thoughts."""
    splitter = ThinkSplitter()
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.flush()
    return (r1 + r2).strip("\n"), (c1 + c2).lstrip("\n")
