"""A Responses answer cut by ``max_output_tokens`` (status ``incomplete``) is recorded on every path."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from llm_ledger.testing import Captured
from tests.test_ledger_paths import RESPONSES, _drain, _enter, _exit, _maybe

CUT: Any = {**RESPONSES, "max_output_tokens": 16, "extra_headers": {"x-fake-content": "x" * 200}}


async def _create(c: Any) -> None:
    await _maybe(c.responses.create(**CUT))


async def _create_stream(c: Any) -> None:
    await _drain(await _maybe(c.responses.create(**CUT, stream=True)))


async def _streaming_response(c: Any) -> None:
    manager = c.responses.with_streaming_response.create(**CUT, stream=True)
    await _drain((await _enter(manager)).iter_lines())
    await _exit(manager)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_an_answer_cut_by_max_output_tokens_is_recorded_with_what_was_produced(
    is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """create(), a stream (response.incomplete) and a body read as lines: ok, the reason, 16 tokens."""
    target = aclient if is_async else client
    for path in (_create, _create_stream, _streaming_response):
        await path(target)
    got = [
        (
            r["status"],
            r["response"]["finish_reason"],
            r["usage"]["completion_tokens"],
            r["request"]["max_tokens"],
        )
        for r in records.calls
    ]
    assert got == [("ok", "max_output_tokens", 16, 16)] * 3
    assert all(r["cost"]["total_cost_usd"] for r in records.calls)
