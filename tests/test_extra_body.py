"""``extra_body``: the fields the SDK sends over the request's own are in the record's request shape."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from llm_ledger.testing import Captured, FakeOpenAI
from tests.test_ledger_paths import CHAT, RESPONSES, _drain, _maybe


def _resource(c: Any, operation: str) -> Any:
    return c.chat.completions if operation == "chat" else c.responses


CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    # name: (operation, create() keywords, extra_body, the body field the shape's max_tokens reads)
    "chat max_tokens": ("chat", CHAT, {"max_tokens": 50, "temperature": 0.2}, "max_tokens"),
    "chat over the body's own": (
        "chat",
        {**CHAT, "temperature": 0.9, "max_completion_tokens": 7},
        {"temperature": 0.2, "max_completion_tokens": 50},
        "max_completion_tokens",
    ),
    "chat stream": ("chat", {**CHAT, "stream": True}, {"max_tokens": 50, "temperature": 0.2}, "max_tokens"),
    "responses": ("responses", RESPONSES, {"max_output_tokens": 50, "temperature": 0.2}, "max_output_tokens"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("case", list(CASES))
async def test_extra_body_fields_are_in_the_request_shape(
    case: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """max_tokens and temperature given in extra_body are recorded as the SDK sends them."""
    operation, kwargs, extra, limit = CASES[case]
    target = aclient if is_async else client
    result = await _maybe(_resource(target, operation).create(**kwargs, extra_body=extra))
    if kwargs.get("stream"):
        await _drain(result)
    sent = fake_openai.requests[-1].json
    assert (sent[limit], sent["temperature"]) == (50, 0.2)  # what the SDK sent
    [record] = records.calls
    assert record["request"]["max_tokens"] == 50
    assert record["request"]["temperature"] == 0.2
    assert record["request"]["messages_count"] == 1 and record["status"] == "ok"
