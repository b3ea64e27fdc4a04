"""A generation's deltas as Responses output items, and as OpenAI's typed stream events in their order.

One ``OutputWriter`` serves both answers: a non-streamed response feeds it every delta and keeps only the items;
a stream sends the events it returns. Items open and close in the order the model produces them — a reasoning
item, a message, function calls — each announced with ``response.output_item.added`` (and, for text, a content
part), grown by deltas, and closed with the ``.done`` events carrying the whole value, as OpenAI sends them.
"""

from __future__ import annotations

import time
from typing import Any

from aiplus.engines.reasoning import ThinkSplitter
from aiplus.responses.items import ItemIds


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    response_id: str, model: str, request: dict[str, Any], status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """The response as OpenAI returns it; ``request`` holds the request's echoed settings."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": request["created_at"],
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": request.get("service_tier") or "default",
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


class OutputWriter:
    """Turns deltas into output items and the stream events that build them."""

    def __init__(self, ids: ItemIds, reasoning_model: bool):
        self.items: list[dict[str, Any]] = []
        self._ids = ids
        self._splitter = ThinkSplitter() if reasoning_model else None
        self._open: dict[str, Any] | None = None  # the item being built
        self._calls: dict[int, dict[str, Any]] = {}  # tool-call delta index -> its function_call item
        self._seq = 0

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def feed(
        self, text: str, reasoning: str, tool_calls: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._splitter is not None and text and not reasoning:
            reasoning, text = self._splitter.feed(text)
        if reasoning:
            self._grow("reasoning", reasoning, events)
        if text:
            self._grow("message", text, events)
        for call in tool_calls or ():
            self._call(call, events)
        return events

    def close(self, status: str = "completed") -> list[dict[str, Any]]:
        """Flush what the reasoning splitter held back and close the open item."""
        events: list[dict[str, Any]] = []
        if self._splitter is not None:
            reasoning, text = self._splitter.flush()
            if reasoning:
                self._grow("reasoning", reasoning, events)
            if text:
                self._grow("message", text, events)
        self._close(events, status)
        return events

    # items ---------------------------------------------------------------------------------------------------

    def _start(self, item: dict[str, Any], events: list[dict[str, Any]]) -> None:
        self._close(events)
        self._open = item
        self.items.append(item)
        index = len(self.items) - 1
        added = {**item, "content": []} if "content" in item else dict(item)  # announced empty, then grown
        events.append(self.event("response.output_item.added", output_index=index, item=added))
        if "content" in item:
            part = {**item["content"][0], "text": ""}
            events.append(
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )

    def _grow(self, kind: str, text: str, events: list[dict[str, Any]]) -> None:
        if self._open is None or self._open["type"] != kind:
            if self._splitter is not None:  # R1 writes newlines around its thoughts: not part of either item
                text = text.lstrip("\n")
                if not text:
                    return
            if kind == "message":
                item = {
                    "type": "message",
                    "id": self._ids("msg"),
                    "status": "in_progress",
                    "role": "assistant",
                }
                item["content"] = [{"type": "output_text", "text": "", "annotations": []}]
            else:
                item = {"type": "reasoning", "id": self._ids("rs"), "summary": []}
                item["content"] = [{"type": "reasoning_text", "text": ""}]
            self._start(item, events)
        part = self._open["content"][0]
        part["text"] += text
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(
            self.event(
                name,
                item_id=self._open["id"],
                output_index=len(self.items) - 1,
                content_index=0,
                delta=text,
                **extra,
            )
        )

    def _call(self, piece: dict[str, Any], events: list[dict[str, Any]]) -> None:
        index = piece.get("index")
        function = piece.get("function") or {}
        item = self._calls.get(index) if index is not None else None
        if item is None:
            item = {
                "type": "function_call",
                "id": self._ids("fc"),
                "call_id": piece.get("id") or self._ids("call"),
                "name": function.get("name") or "",
                "arguments": "",
                "status": "in_progress",
            }
            if index is not None:
                self._calls[index] = item
            self._start(item, events)
        elif function.get("name"):
            item["name"] += function["name"]
        arguments = function.get("arguments") or ""
        if arguments:
            item["arguments"] += arguments
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.items.index(item),
                    delta=arguments,
                )
            )

    def _close(self, events: list[dict[str, Any]], status: str = "completed") -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self.items.index(item)
        if item["type"] in ("message", "reasoning"):
            part = item["content"][0]
            done = (
                "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
            )
            extra = {"logprobs": []} if item["type"] == "message" else {}
            events.append(
                self.event(
                    done, item_id=item["id"], output_index=index, content_index=0, text=part["text"], **extra
                )
            )
            events.append(
                self.event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        if item["type"] != "reasoning":
            item["status"] = status
        events.append(self.event("response.output_item.done", output_index=index, item=_copy(item)))


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(p) for p in out["content"]]
    return out


def now() -> int:
    return int(time.time())
