"""pydantic-ai handed an instrumented AsyncOpenAI client (``OpenAIProvider(openai_client=...)``)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.integration.helpers import check_lens, run_both
from tests.integration.replay import record_then_replay

PROMPT = "Summarise the quarterly report on bakery waste in one line"


class Answer(pydantic.BaseModel):
    summary: str
    score: int


def agent(client: Any, **kwargs: Any) -> Agent[Any, Any]:
    model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
    return Agent(model, **kwargs)


def test_plain_call() -> None:
    """agent.run(): the same output and usage; the record matches the answer."""

    async def scenario(c: Any) -> Any:
        result = await agent(c).run(PROMPT)
        return result.output, result.usage.input_tokens, result.usage.output_tokens

    run = run_both(scenario, is_async=True)
    assert run.result[0] == "Summary: Summarise the quarterly report on bakery waste in"
    usage = run.records.calls[0]["usage"]
    assert run.result[1:] == (usage["prompt_tokens"], usage["completion_tokens"])


def test_streamed_call() -> None:
    """run_stream(): the same text deltas; the record has the stream's usage."""

    async def scenario(c: Any) -> Any:
        async with agent(c).run_stream(PROMPT) as result:
            return [delta async for delta in result.stream_text(delta=True)]

    run = run_both(scenario, is_async=True)
    assert "".join(run.result).startswith("Summary:")
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["usage"]["total_tokens"] > 0


def test_structured_output_through_a_tool_call() -> None:
    """output_type: pydantic-ai asks for its final_result tool; the same object, one tool call recorded."""

    async def scenario(c: Any) -> Any:
        return (await agent(c, output_type=Answer).run(PROMPT)).output

    run = run_both(scenario, is_async=True)
    assert run.result == Answer(summary="fake summary", score=42)
    assert run.records.calls[0]["response"]["tool_calls_count"] == 1


def test_async_call_inside_a_lens() -> None:
    """agent.run() inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        return (await agent(c).run(PROMPT)).output

    check_lens(run_both(scenario, is_async=True, lens="pydantic_ai_summary"))


TEST = """
import os

import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import llm_ledger as ledger


@pytest.mark.llm
@pytest.mark.asyncio
async def test_agent(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    async with ledger.instrument(openai.AsyncOpenAI(base_url=url, max_retries=0)) as client:
        model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
        result = await Agent(model).run("Replay this agent through the plugin")
    assert result.output == "Summary: Replay this agent through the plugin"
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens == result.usage.total_tokens
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST)
