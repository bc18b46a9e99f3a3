"""instructor wrapping an instrumented client (``instructor.from_openai(client)``)."""

from __future__ import annotations

from typing import Any

import instructor
import pydantic
import pytest

from tests.integration.helpers import check_lens, run_both
from tests.integration.replay import record_then_replay

MESSAGES: Any = [{"role": "user", "content": "Summarise the quarterly report on bakery waste in one line"}]


class Answer(pydantic.BaseModel):
    summary: str
    score: int


def test_plain_call() -> None:
    """create(response_model=None): the SDK's completion, unchanged; the record matches the answer."""
    run = run_both(
        lambda c: (
            instructor.from_openai(c)
            .chat.completions.create(model="gpt-4o-mini", response_model=None, messages=MESSAGES)
            .model_dump()
        )
    )
    assert run.result["choices"][0]["message"]["content"].startswith("Summary:")


def test_streamed_partial_objects() -> None:
    """create_partial(): the same partial objects, ending with the whole answer; one streamed record."""

    def scenario(c: Any) -> Any:
        client = instructor.from_openai(c)
        partials = client.chat.completions.create_partial(
            model="gpt-4o-mini", response_model=Answer, messages=MESSAGES
        )
        return [p.model_dump() for p in partials]

    run = run_both(scenario)
    assert run.result[-1] == {"summary": "fake summary", "score": 42}
    [record] = run.records.calls
    assert record["request"]["stream"] is True and record["response"]["tool_calls_count"] == 1


def test_structured_output_through_a_tool_call() -> None:
    """create(response_model=Answer) in TOOLS mode: the same object; one tool call recorded."""
    # instructor keeps the raw completion on the object (a private attribute that == compares): the
    # fields are compared
    run = run_both(
        lambda c: (
            instructor.from_openai(c)
            .chat.completions.create(model="gpt-4o-mini", response_model=Answer, messages=MESSAGES)
            .model_dump()
        )
    )
    assert run.result == {"summary": "fake summary", "score": 42}
    assert run.records.calls[0]["response"]["tool_calls_count"] == 1


def test_async_call_inside_a_lens() -> None:
    """An async create() inside a lens: the lens summary counts the call and its tokens."""

    async def scenario(c: Any) -> Any:
        client = instructor.from_openai(c)
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", response_model=Answer, messages=MESSAGES
        )
        return answer.model_dump()

    check_lens(run_both(scenario, is_async=True, lens="instructor_extract"))


TEST = """
import os

import instructor
import openai
import pydantic
import pytest

import llm_ledger as ledger


class Answer(pydantic.BaseModel):
    summary: str
    score: int


@pytest.mark.llm
def test_extract(llm_ledger):
    url = os.environ["LEDGER_TEST_BASE_URL"]
    with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as client:
        answer = instructor.from_openai(client).chat.completions.create(
            model="gpt-4o-mini", response_model=Answer, messages=[{"role": "user", "content": "Replay it"}]
        )
    assert answer.model_dump() == {"summary": "fake summary", "score": 42}
    assert llm_ledger.api_calls == 1 and llm_ledger.total_tokens > 0
"""


def test_record_then_replay(pytester: pytest.Pytester) -> None:
    """Recorded against the loopback server, then replayed offline with the same result and records."""
    record_then_replay(pytester, TEST)
