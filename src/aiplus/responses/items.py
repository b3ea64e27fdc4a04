"""Responses API items ↔ chat completion messages, and the request's tools and text format as chat sees them.

Every engine aiplus serves speaks chat completions, so a Responses request is translated: ``instructions`` become
a system message, message items messages, ``function_call`` items an assistant message's ``tool_calls`` and
``function_call_output`` items ``tool`` messages; reasoning items are kept in the stored conversation but not sent
back to the model (as DeepSeek-R1 and vLLM expect). Anything the translation cannot carry is refused with
``InvalidInput`` naming the parameter, never dropped silently.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from aiplus import protocol


class InvalidInput(Exception):
    """Bad input: the message names what is wrong; ``param`` is where (``input[2].call_id``)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


BUILT_IN_TOOLS = (
    "web_search",
    "file_search",
    "code_interpreter",
    "computer_use",
    "mcp",
    "image_generation",
)
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


class ItemIds:
    """Item ids unique across responses: the response's own unique part plus a counter."""

    __slots__ = ("_count", "_stem")

    def __init__(self, response_id: str):
        self._stem = response_id.removeprefix("resp_")
        self._count = itertools.count()

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{self._stem}{next(self._count):03x}"


def _str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidInput(
            f"'{where}.{key}' must be a string", f"{where}.{key}", "missing_required_parameter"
        )
    return value


def _content(role: str, content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as a list of typed parts (a string becomes one text part)."""
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        part: dict[str, Any] = {"type": text_type, "text": content}
        if role == "assistant":
            part["annotations"] = []
        return [part]
    if not isinstance(content, list):
        raise InvalidInput(
            f"'{where}.content' must be a string or a list of content parts", f"{where}.content"
        )
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidInput(f"'{at}' must be an object", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise InvalidInput(f"'{at}.{key}' must be a string", f"{at}.{key}")
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise InvalidInput(f"'{at}.image_url' must be a URL string (file ids are not supported)", at)
        else:
            raise InvalidInput(f"content part type {kind!r} ({at}) is not supported", f"{at}.type")
        parts.append(part)
    return parts


def normalize(value: str | list[Any], ids: ItemIds) -> list[dict[str, Any]]:
    """The request's ``input`` as validated items in their stored form, each with an id."""
    if isinstance(value, str):
        content = _content("user", value, "input")
        return [
            {"type": "message", "id": ids("msg"), "role": "user", "content": content, "status": "completed"}
        ]
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"'{where}' must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidInput(f"'{where}.role' must be one of {', '.join(_ROLES)}", f"{where}.role")
            items.append(
                {
                    "type": "message",
                    "id": item.get("id") or ids("msg"),
                    "role": role,
                    "content": _content(role, item.get("content"), where),
                    "status": "completed",
                }
            )
        elif kind == "function_call":
            items.append(
                {
                    "type": "function_call",
                    "id": item.get("id") or ids("fc"),
                    "call_id": _str(item, "call_id", where),
                    "name": _str(item, "name", where),
                    "arguments": _str(item, "arguments", where),
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _text(_content("user", output, where))
            if not isinstance(output, str):
                raise InvalidInput(f"'{where}.output' must be a string", f"{where}.output")
            items.append(
                {
                    "type": "function_call_output",
                    "id": item.get("id") or ids("fco"),
                    "call_id": _str(item, "call_id", where),
                    "output": output,
                    "status": "completed",
                }
            )
        elif kind == "reasoning":
            items.append({**item, "id": item.get("id") or ids("rs")})
        elif kind is None:
            raise InvalidInput(f"'{where}' needs a 'type' (or a 'role' for a message)", f"{where}.type")
        else:
            raise InvalidInput(
                f"input item type {kind!r} ({where}) is not supported: aiplus takes messages, function_call, "
                "function_call_output and reasoning items",
                f"{where}.type",
            )
    return items


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(p.get("text") or p.get("refusal") or "" for p in parts if p.get("type") != "input_image")


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and "text" in parts[0]:  # the common case, on every turn of every continuation
        return parts[0]["text"]
    if all(p.get("type") != "input_image" for p in parts):
        return _text(parts)  # every chat template takes a string
    return [
        {"type": "image_url", "image_url": {"url": p["image_url"]}}
        if p.get("type") == "input_image"
        else {"type": "text", "text": p.get("text") or p.get("refusal") or ""}
        for p in parts
    ]


def to_messages(instructions: str | None, items: list[dict[str, Any]], new_from: int = 0) -> list[dict]:
    """Chat messages for ``items`` (earlier turns' and this request's, in order); a ``function_call_output``
    at or after ``new_from`` (this request's) must answer a ``function_call`` made before it."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    calls: set[str] = set()
    for i, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            calls.add(item["call_id"])
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if (
                last is not None
                and last["role"] == "assistant"
                and isinstance(last.get("content"), str | None)
            ):
                last.setdefault("tool_calls", []).append(call)  # one assistant turn: its text and its calls
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if item["call_id"] not in calls and i >= new_from:
                where = f"input[{i - new_from}].call_id"
                raise InvalidInput(
                    f"No tool call found for function call output with call_id {item['call_id']!r}.", where
                )
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def has_function_calls(items: list[dict[str, Any]]) -> bool:
    return any(item["type"] in ("function_call", "function_call_output") for item in items)


def _built_in(kind: Any, where: str) -> InvalidInput:
    built_in = isinstance(kind, str) and kind.startswith(
        BUILT_IN_TOOLS + ("computer", "local_shell", "shell")
    )
    return InvalidInput(
        f"The {'built-in ' if built_in else ''}tool {kind!r} ({where}) is not supported: aiplus runs no tools "
        "itself; define a function tool and run it in your own code.",
        where,
        "unsupported_tool",
    )


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Function tools in chat form; any other tool type is refused by name."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidInput(f"'{where}' must be an object", where)
        if tool.get("type") != "function":
            raise _built_in(tool.get("type"), f"{where}.type")
        name = tool.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidInput(f"'{where}.name' must match ^[a-zA-Z0-9_-]{{1,64}}$", f"{where}.name")
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"'{where}.parameters' must be a JSON schema object", f"{where}.parameters")
        function: dict[str, Any] = {
            "name": name,
            "parameters": params or {"type": "object", "properties": {}},
        }
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in tools or ()):
            raise InvalidInput(f"tool_choice names function {name!r}, which is not in 'tools'", "tool_choice")
        return {"type": "function", "function": {"name": name}}
    if isinstance(choice, dict):
        raise _built_in(choice.get("type"), "tool_choice")
    raise InvalidInput("tool_choice must be 'auto', 'none', 'required' or a function", "tool_choice")


def chat_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as a chat ``response_format``."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise InvalidInput("'text.format' must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise InvalidInput(
                "a json_schema text format needs 'name' and 'schema' (an object)", "text.format"
            )
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return protocol.ResponseFormat(type="json_schema", json_schema=schema).model_dump(exclude_none=True)
    raise InvalidInput("text.format.type must be 'text', 'json_object' or 'json_schema'", "text.format.type")
