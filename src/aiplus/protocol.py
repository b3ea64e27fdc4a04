"""OpenAI wire types for requests (pydantic), and the builders of the response shapes.

Requests are validated strictly enough to answer bad input with a 400 naming the parameter: types are strict
(``seed: true`` or ``max_tokens: "5"`` is refused, not coerced), and the sizes that cost work before a model runs
are capped. Unknown fields are kept (``extra="allow"``) so that options aiplus does not interpret still reach
upstream engines.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_JSON_DEPTH = 64  # arrays and objects nested in a request body (a tool's JSON Schema rarely passes 10)
MAX_MESSAGES = 2048  # messages in one chat request
MAX_TOOLS = 128  # as OpenAI

_WIRE = ConfigDict(extra="allow", strict=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, str_strip_whitespace=False)


class ToolFunction(BaseModel):
    model_config = _WIRE
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = _WIRE
    type: Literal["function"] = "function"
    function: ToolFunction


class ContentPart(BaseModel):
    """One part of a message's content; a text part's ``text`` must be a string (images pass on as sent)."""

    model_config = _WIRE
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_present(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type text needs 'text' (a string)")
        return self


class ChatMessage(BaseModel):
    model_config = _WIRE
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role not in ("assistant",):
            raise ValueError(f"a {self.role} message needs 'content'")
        return self

    def text(self) -> str:
        """The message's text: content parts of type text joined; images and audio are not supported here."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = _WIRE
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = _WIRE
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and not (
            self.json_schema and isinstance(self.json_schema.get("schema"), dict)
        ):
            raise ValueError("response_format of type json_schema needs json_schema.schema (an object)")
        return self


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1)]


def _stop_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


class _GenerationRequest(_Request):
    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _only_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @property
    def stop_list(self) -> list[str]:
        return _stop_list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: MaxTokens | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if len(value) > 2048:
                raise ValueError("at most 2048 inputs per request")
            if any(not isinstance(v, str) or not v for v in value):
                raise ValueError("every input must be a non-empty string")
        elif not value:
            raise ValueError("input must not be empty")
        return value

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``. Items, tools and the text format are checked where they are translated
    (``responses/items.py``); fields aiplus has no use for but clients send are accepted and ignored."""

    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[Any]
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    store: bool | None = None
    stream: bool | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    user: str | None = None
    # accepted, without effect here
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    top_logprobs: int | None = None
    background: Literal[False] | None = None
    max_tool_calls: int | None = None

    @field_validator("metadata")
    @classmethod
    def _keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and any(len(k) > 64 for k in value):
            raise ValueError("metadata keys are at most 64 characters")
        return value


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    request_id: str,
    model: str,
    content: str | None,
    reasoning: str | None,
    tool_calls: list | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    request_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None
) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(
    request_id: str, created: int, model: str, object_: str, prompt_tokens: int, completion_tokens: int
):
    return {
        "id": request_id,
        "object": object_,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    request_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    created: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if prompt_tokens is not None:
        body["usage"] = usage(prompt_tokens, completion_tokens or 0)
    return body


def model_card(model_id: str, created: int, owned_by: str = "aiplus") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
