"""openai-agents handed an instrumented AsyncOpenAI client, on its default Responses model
(``OpenAIResponsesModel(openai_client=...)``; ``set_default_openai_client()`` works the same)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pydantic
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled

import llm_ledger
from llm_ledger.testing import FakeOpenAI, capture
from tests.integration.helpers import KEY, check_lens, run_both
from tests.integration.replay import record_then_replay

set_tracing_disabled(True)  # traces would be exported to OpenAI's API
PROMPT = "Summarise the quarterly report on bakery waste in one line"


class Answer(pydantic.BaseModel):
    summary: str
    score: int


def agent(client: Any, **kwargs: Any) -> Agent[Any]:
    model = OpenAIResponsesModel(model="gpt-4.1-mini", openai_client=client)
    return Agent(name="summariser", instructions="Be brief.", model=model, **kwargs)


def test_plain_call() -> None:
    """Runner.run(): the same final output; the record matches the Responses answer."""

    async def scenario(c: Any) -> Any:
        return (await Runner.run(agent(c), PROMPT)).final_output

    run = run_both(scenario, is_async=True)
    assert run.result == "Summary: Summarise the quarterly report on bakery waste in"
    assert run.records.calls[0]["operation"] == "responses"


def test_streamed_run() -> None:
    """Runner.run_streamed() on the default Responses model: the same events' text, and a record
    with the usage of the response.completed event."""

    async def scenario(c: Any) -> Any:
        result = Runner.run_streamed(agent(c), PROMPT)
        deltas = [
            event.data.delta
            async for event in result.stream_events()
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
        ]
        return deltas, result.final_output

    run = run_both(scenario, is_async=True)
    assert "".join(run.result[0]) == run.result[1]
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["usage"]["total_tokens"] > 0


def test_structured_output() -> None:
    """output_type: the same parsed object (text.format json_schema)."""

    async def scenario(c: Any) -> Any:
        return (await Runner.run(agent(c, output_type=Answer), PROMPT)).final_output

    run = run_both(scenario, is_async=True)
    assert run.result == Answer(summary="fake summary", score=42)


def test_async_call_inside_a_lens() -> None:
    """Runner.run() inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        return (await Runner.run(agent(c), PROMPT)).final_output

    check_lens(run_both(scenario, is_async=True, lens="agent_summary"))


def test_streamed_run_cancelled_inside_a_lens() -> None:
    """result.cancel() mid-stream: the call is recorded once, interrupted, naming the model that
    answered, and counted in the lens the run began in."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    slow = {"x-fake-fault": "slow", "x-fake-delay-ms": "20", "x-fake-chunks": "50"}

    async def main(server: FakeOpenAI) -> None:
        async with monitor.instrument(openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url)) as c:
            with monitor.lens("agent_cancelled"):
                slow_agent = agent(c, model_settings=ModelSettings(extra_headers=slow))
                result = Runner.run_streamed(slow_agent, PROMPT)
                async for event in result.stream_events():
                    if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                        result.cancel()
                await asyncio.sleep(0)  # the cancelled model task ends its stream

    with FakeOpenAI() as server, capture(monitor) as records:
        asyncio.run(main(server))
    [record] = records.calls
    assert record["status"] == "interrupted" and record["response"]["model"] == "gpt-4.1-mini"
    assert [lens["summary"]["total_api_calls"] for lens in records.lenses] == [1]


TEST = """
import os

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

import llm_ledger as ledger

set_tracing_disabled(True)


@pytest.mark.llm
@pytest.mark.asyncio
async def test_agent(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    async with ledger.instrument(openai.AsyncOpenAI(base_url=url, max_retries=0)) as client:
        model = OpenAIResponsesModel(model="gpt-4.1-mini", openai_client=client)
        result = await Runner.run(Agent(name="a", model=model), "Replay this agent through the plugin")
    assert result.final_output == "Summary: Replay this agent through the plugin"
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens > 0
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST)
