"""llama-index-llms-openai's OpenAI LLM handed instrumented clients (``openai_client=`` and
``async_openai_client=``). Runs in the openai 1.x and 2.x venvs: every release caps openai below 3."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.openai import OpenAI

from tests.integration.helpers import KEY, check_lens, run_both
from tests.integration.replay import record_then_replay

PROMPT = "Summarise the quarterly report on bakery waste in one line"
MESSAGES = [ChatMessage(role="user", content=PROMPT)]


class Answer(pydantic.BaseModel):
    summary: str
    score: int


def llm(client: Any) -> OpenAI:
    if type(client).__name__.startswith("Async"):
        return OpenAI(model="gpt-4o-mini", api_key=KEY, async_openai_client=client)
    return OpenAI(model="gpt-4o-mini", api_key=KEY, openai_client=client)


def test_plain_call() -> None:
    """chat(): the same message and raw completion; the record matches the answer."""
    run = run_both(lambda c: (lambda r: (r.message.content, r.raw.model_dump()))(llm(c).chat(MESSAGES)))
    assert run.result[0] == "Summary: Summarise the quarterly report on bakery waste in"


def test_streamed_call() -> None:
    """stream_chat(): the same deltas; the record has the stream's usage (asked for by the ledger)."""
    run = run_both(lambda c: [r.delta for r in llm(c).stream_chat(MESSAGES)])
    assert "".join(d or "" for d in run.result).startswith("Summary:")
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["usage"]["total_tokens"] > 0


def test_structured_output() -> None:
    """structured_predict(): the same object (llama-index asks for a json_schema response_format)."""
    template = PromptTemplate("Summarise {topic}")
    run = run_both(lambda c: llm(c).structured_predict(Answer, template, topic="waste"))
    assert run.result == Answer(summary="fake summary", score=42)
    assert run.server.requests[0].body["response_format"]["type"] == "json_schema"


def test_async_call_inside_a_lens() -> None:
    """achat() inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        return (await llm(c).achat(MESSAGES)).message.content

    check_lens(run_both(scenario, is_async=True, lens="llama_index_summary"))


TEST = """
import os

import openai
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

import llm_ledger as ledger


@pytest.mark.llm
def test_chat(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as client:
        llm = OpenAI(model="gpt-4o-mini", openai_client=client)
        reply = llm.chat([ChatMessage(role="user", content="Replay it")])
    assert reply.message.content == "Summary: Replay it"
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens > 0
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST)
