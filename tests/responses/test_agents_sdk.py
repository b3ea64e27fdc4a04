"""The OpenAI Agents SDK, unchanged, running agents to completion against aiplus's Responses API: one with a
function tool (through the stand-in upstream whose model calls tools), one of plain text on the embedded SmolLM2."""

from __future__ import annotations

import asyncio

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from tests.conftest import DEFAULT_MODEL
from tests.responses.conftest import TOOL_MODEL

set_tracing_disabled(True)  # no traces to OpenAI's servers: this machine is offline


def _run(base_url: str, key: str, agent: Agent, prompt: str, **kwargs):
    async def go():
        client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
        model = OpenAIResponsesModel(model=agent.model, openai_client=client)
        try:
            return await Runner.run(agent.clone(model=model), prompt, run_config=RunConfig(), **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


def test_agent_with_a_function_tool_runs_to_completion(gateway, org):
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agent = Agent(
        name="weather", instructions="Answer with the weather.", model=TOOL_MODEL, tools=[get_weather]
    )
    result = _run(gateway.v1, org["key"], agent, "Paris")
    assert calls == ["Paris"]  # the model's call reached the tool, with its arguments
    assert result.final_output == "turns=1 calls=1 results=1 last=sunny in Paris"
    assert len(result.raw_responses) == 2


def test_agent_with_a_function_tool_streams_to_completion(gateway, org):
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"rain in {city}"

    async def go():
        client = AsyncOpenAI(base_url=gateway.v1, api_key=org["key"], max_retries=0, timeout=120)
        agent = Agent(
            name="weather",
            model=OpenAIResponsesModel(model=TOOL_MODEL, openai_client=client),
            tools=[get_weather],
        )
        result = Runner.run_streamed(agent, "Bergen")
        kinds = [event.type async for event in result.stream_events()]
        await client.close()
        return result, kinds

    result, kinds = asyncio.run(go())
    assert calls == ["Bergen"]
    assert result.final_output.strip() == "turns=1 calls=1 results=1 last=rain in Bergen"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds


@pytest.mark.timeout(600)
def test_plain_agent_on_the_embedded_model(embedded_server, embedded_org):
    # greedy: a sampled answer of a 135M model may now and then be only an end of turn (seen once in a full run)
    agent = Agent(
        name="greeter",
        instructions="Reply briefly.",
        model=DEFAULT_MODEL,
        model_settings=ModelSettings(temperature=0),
    )
    result = _run(embedded_server.v1, embedded_org["key"], agent, "Say hello.")
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert result.raw_responses[0].usage.output_tokens > 0
