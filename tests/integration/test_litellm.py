"""LiteLLM handed an instrumented client per call (``litellm.completion(..., client=...)``)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from tests.integration.helpers import KEY, check_lens, run_both
from tests.integration.replay import record_then_replay

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report on bakery waste in one line"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _facts(response: Any) -> Any:
    """What callers read from a ModelResponse (its id and created time are LiteLLM's own)."""
    choice = response.choices[0]
    calls = [(t.function.name, t.function.arguments) for t in choice.message.tool_calls or ()]
    usage = response.usage
    return choice.message.content, choice.finish_reason, calls, usage.prompt_tokens, usage.completion_tokens


@pytest.fixture(autouse=True)
def _close_the_event_loop_litellm_leaves() -> Iterator[None]:
    """A sync litellm.completion() sets a new event loop on the thread and never closes it: the next
    asyncio.run() drops it, and the collector's ResourceWarning then fails whichever test it lands in."""
    yield
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop()
    except RuntimeError:  # no loop set (Python 3.14 no longer makes one here)
        return
    asyncio.set_event_loop(None)
    loop.close()


def test_plain_call() -> None:
    """completion(client=...): the same message and usage; the record matches the answer."""
    run = run_both(
        lambda c: _facts(litellm.completion(model=MODEL, messages=MESSAGES, client=c, api_key=KEY))
    )
    assert run.result[0] == "Summary: Summarise the quarterly report on bakery waste in"


def test_streamed_call() -> None:
    """completion(stream=True, client=...): the same text chunks; the record has the stream's usage."""

    def scenario(c: Any) -> Any:
        stream = litellm.completion(model=MODEL, messages=MESSAGES, client=c, api_key=KEY, stream=True)
        return [chunk.choices[0].delta.content for chunk in stream if chunk.choices]

    run = run_both(scenario)
    assert "".join(t or "" for t in run.result).startswith("Summary:")
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["usage"]["total_tokens"] > 0


def test_tool_call() -> None:
    """tools with tool_choice='required': the same tool call; one tool call recorded."""
    run = run_both(
        lambda c: _facts(
            litellm.completion(
                model=MODEL, messages=MESSAGES, client=c, api_key=KEY, tools=[WEATHER], tool_choice="required"
            )
        )
    )
    assert [name for name, _ in run.result[2]] == ["lookup_weather"]
    assert run.records.calls[0]["response"]["tool_calls_count"] == 1


def test_async_call_inside_a_lens() -> None:
    """acompletion(client=...) inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        return _facts(await litellm.acompletion(model=MODEL, messages=MESSAGES, client=c, api_key=KEY))

    check_lens(run_both(scenario, is_async=True, lens="litellm_summary"))


def test_async_stream_inside_a_lens() -> None:
    """acompletion(stream=True, client=...) inside a lens: the same text; the stream's usage counts."""

    async def scenario(c: Any) -> Any:
        stream = await litellm.acompletion(model=MODEL, messages=MESSAGES, client=c, api_key=KEY, stream=True)
        return [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]

    run = run_both(scenario, is_async=True, lens="litellm_stream")
    assert "".join(t or "" for t in run.result).startswith("Summary:")
    assert run.records.calls[0]["usage"]["total_tokens"] > 0
    check_lens(run)


TEST = """
import os

import litellm
import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_completion(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as client:
        response = litellm.completion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "Replay this completion through the plugin"}],
            client=client,
        )
    assert response.choices[0].message.content == "Summary: Replay this completion through the plugin"
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens == response.usage.total_tokens
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST, "-W", "ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")
