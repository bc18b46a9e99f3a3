"""langchain-openai's ChatOpenAI handed an instrumented client (``client=`` / ``root_client=``)."""

from __future__ import annotations

import functools
import operator
from typing import Any

import pydantic
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.integration.helpers import KEY, check_lens, run_both
from tests.integration.replay import record_then_replay

PROMPT = "Summarise the quarterly report on bakery waste in one line"


class Answer(pydantic.BaseModel):
    summary: str
    score: int


@tool  # type: ignore[untyped-decorator]
def lookup_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def chat(client: Any, **kwargs: Any) -> ChatOpenAI:
    """The documented way in: the instrumented client's resource and the client itself."""
    if type(client).__name__.startswith("Async"):
        return ChatOpenAI(
            model="gpt-4o-mini",
            api_key=KEY,
            async_client=client.chat.completions,
            root_async_client=client,
            **kwargs,
        )
    return ChatOpenAI(
        model="gpt-4o-mini", api_key=KEY, client=client.chat.completions, root_client=client, **kwargs
    )


def _without_run_id(message: Any) -> Any:
    return message.model_copy(update={"id": None})  # LangChain's own run id: a fresh uuid each run


def test_plain_call() -> None:
    """invoke(): the message, its usage and metadata are unchanged; the record matches the answer."""
    run = run_both(lambda c: _without_run_id(chat(c).invoke(PROMPT)))
    assert run.result.content == "Summary: Summarise the quarterly report on bakery waste in"
    assert run.result.usage_metadata["total_tokens"] == run.records.calls[0]["usage"]["total_tokens"]


def test_streamed_call() -> None:
    """stream(): the same chunks; the record has the usage of the whole answer."""

    def scenario(c: Any) -> Any:
        chunks = list(chat(c, stream_usage=True).stream(PROMPT))
        return [chunk.content for chunk in chunks], functools.reduce(operator.add, chunks).usage_metadata

    run = run_both(scenario)
    assert "".join(run.result[0]).startswith("Summary:")
    assert run.records.calls[0]["request"]["stream"] is True
    assert run.result[1]["total_tokens"] == run.records.calls[0]["usage"]["total_tokens"]


def test_streamed_call_without_usage_keeps_the_librarys_chunks() -> None:
    """stream_usage=False: the ledger asks for usage on the caller's behalf and hides that chunk."""
    run = run_both(lambda c: [chunk.content for chunk in chat(c, stream_usage=False).stream(PROMPT)])
    assert run.records.calls[0]["usage"]["total_tokens"] > 0


def test_structured_output() -> None:
    """with_structured_output(): the same parsed object (json_schema response_format)."""
    run = run_both(lambda c: chat(c).with_structured_output(Answer).invoke(PROMPT))
    assert run.result == Answer(summary="fake summary", score=42)


def test_tool_call() -> None:
    """bind_tools(tool_choice='required'): the same tool call; the record counts one tool call."""
    run = run_both(
        lambda c: chat(c).bind_tools([lookup_weather], tool_choice="required").invoke(PROMPT).tool_calls
    )
    assert [call["name"] for call in run.result] == ["lookup_weather"]
    assert run.records.calls[0]["request"]["tools_count"] == 1


def test_async_call_inside_a_lens() -> None:
    """ainvoke() inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        return (await chat(c).ainvoke(PROMPT)).content

    run = run_both(scenario, is_async=True, lens="langchain_summary")
    check_lens(run)


def test_batch_inside_a_lens() -> None:
    """batch() runs its calls on LangChain's thread pool: each is recorded once, in the lens."""
    run = run_both(
        lambda c: [m.content for m in chat(c).batch([PROMPT, "Name three bakeries", "Count to five"])],
        lens="langchain_batch",
    )
    assert len(run.result) == 3
    assert all(r["context"]["lens_key"] == "langchain_batch" for r in run.records.calls)
    check_lens(run)


# langchain-openai 1.8 dumps the helper's final ParsedChatCompletion, and pydantic warns about its
# `parsed` field, with or without the ledger
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_structured_output_streamed() -> None:
    """with_structured_output().stream() goes through the SDK's chat.completions.stream() helper:
    the same parsed object, one complete record."""
    run = run_both(lambda c: list(chat(c).with_structured_output(Answer).stream(PROMPT)))
    assert run.result[-1] == Answer(summary="fake summary", score=42)
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["status"] == "ok"


TEST = """
import os

import pytest
from langchain_openai import ChatOpenAI

import llm_ledger as ledger
import openai


@pytest.mark.llm
def test_chain(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as client:
        llm = ChatOpenAI(model="gpt-4o-mini", client=client.chat.completions, root_client=client)
        reply = llm.invoke("Replay this through the plugin please")
    assert reply.content == "Summary: Replay this through the plugin please"
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens == reply.usage_metadata["total_tokens"]
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST)
