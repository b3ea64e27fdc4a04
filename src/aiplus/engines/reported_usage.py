"""Token counts an engine outside this machine reports, checked before anyone counts them.

An upstream is not trusted with the bill: a count is taken only if it is a non-negative integer no larger than
what the request could have used (the model's context, ``max_tokens``, the prompt's own size). Anything else —
2**64-1, a negative number, a string, a float — is dropped, aiplus meters its own count instead, and the log
names the upstream as misbehaving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from aiplus.engines.base import GenerationRequest

log = logging.getLogger("aiplus.upstream")

# No tokenizer turns fewer bytes into more tokens, except for what a chat template adds around the messages
# (a system prompt, role markers, a tool preamble): these allowances are generous for every template we know.
TEMPLATE_TOKENS = 1024
PER_MESSAGE_TOKENS = 64
PER_MEDIA_PART_TOKENS = 16_384  # an image or audio part given by URL: its tokens are not in its bytes
# With neither a context length nor max_tokens, a request could have used at most this many tokens.
UNKNOWN_CONTEXT = 1 << 20


def count(value: Any, ceiling: int) -> int | None:
    """``value`` if it is a sane token count (an int, not a bool, in ``0..ceiling``), else None."""
    return value if type(value) is int and 0 <= value <= ceiling else None


@dataclass(frozen=True, slots=True)
class UsageBounds:
    """The most tokens one request could have drawn, and whose report is being checked (for the log)."""

    prompt: int
    completion: int
    source: str

    @classmethod
    def of(cls, request: GenerationRequest, context_length: int | None, source: str) -> UsageBounds:
        context = context_length or UNKNOWN_CONTEXT
        if request.kind == "chat":
            messages = request.messages or ()
            size = len(orjson.dumps(messages)) + PER_MESSAGE_TOKENS * len(messages)
            size += PER_MEDIA_PART_TOKENS * sum(
                1
                for m in messages
                if isinstance(m.get("content"), list)
                for part in m["content"]
                if isinstance(part, dict) and part.get("type") not in (None, "text")
            )
        else:
            size = len((request.prompt or "").encode())
        if request.tools:
            size += len(orjson.dumps(request.tools))
        choices = request.extra.get("n")
        choices = choices if type(choices) is int and choices > 0 else 1
        completion = request.max_tokens if request.max_tokens is not None else context
        return cls(min(size + TEMPLATE_TOKENS, context), completion * choices, source)

    def check(self, name: str, value: Any) -> int | None:
        """A reported count if sane; None (and a log line naming the upstream) if not, or if it was absent."""
        if value is None:
            return None
        ceiling = self.prompt if name == "prompt_tokens" else self.completion
        sane = count(value, ceiling)
        if sane is None:
            log.warning(
                "upstream %s misbehaves: it reported %s=%.60r (expected an integer in 0..%d); "
                "metering aiplus's own count instead",
                self.source,
                name,
                value,
                ceiling,
            )
        return sane

    def usage(self, usage: Any) -> tuple[int | None, int | None]:
        """(prompt, completion) of an OpenAI ``usage`` object, each None when missing or not believable."""
        if not isinstance(usage, dict):
            if usage is not None:
                log.warning("upstream %s misbehaves: usage is %.60r, not an object", self.source, usage)
            return None, None
        return (
            self.check("prompt_tokens", usage.get("prompt_tokens")),
            self.check("completion_tokens", usage.get("completion_tokens")),
        )
