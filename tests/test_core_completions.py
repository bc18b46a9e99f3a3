"""The legacy text completions (``client.completions.create``, served by vLLM and others) are recorded
as chat ``create()`` is: every client path, sync and async, streamed or not, through the real SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

import llm_ledger
import llm_ledger.testing
from llm_ledger.testing import Captured, FakeOpenAI
from tests.test_ledger_paths import (
    Path,
    _drain,
    _enter,
    _essentials,
    _exit,
    _maybe,
    bare_stream_chunks,
    stream_chunks,
)

PROMPT = "Tell me about the ledger of every path"
COMPLETION: Any = {"model": "gpt-3.5-turbo-instruct", "prompt": PROMPT, "max_tokens": 64}
STREAM: Any = {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}


async def create(c: Any) -> None:
    await _maybe(c.completions.create(**COMPLETION))


async def create_stream(c: Any) -> None:
    await _drain(await _maybe(c.completions.create(**STREAM)))


async def raw(c: Any) -> None:
    response = await _maybe(c.completions.with_raw_response.create(**COMPLETION))
    assert (await _maybe(response.parse())).choices[0].text


async def raw_stream(c: Any) -> None:
    response = await _maybe(c.completions.with_raw_response.create(**STREAM))
    await _drain(await _maybe(response.parse()))


async def streaming_response(c: Any) -> None:
    manager = c.completions.with_streaming_response.create(**COMPLETION)
    response = await _enter(manager)
    assert (await _maybe(response.parse())).choices[0].text
    await _exit(manager)


async def streaming_response_stream(c: Any) -> None:
    manager = c.completions.with_streaming_response.create(**STREAM)
    response = await _enter(manager)
    await _drain(await _maybe(response.parse()))
    await _exit(manager)


PATHS: dict[str, Path] = {
    "create stream": create_stream,
    "with_raw_response": raw,
    "with_raw_response stream": raw_stream,
    "with_streaming_response": streaming_response,
    "with_streaming_response stream": streaming_response_stream,
}


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_completions_create_is_recorded(
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """completions.create() gives a text_completion record: the server's usage, model, finish
    reason, the text's length, the cost and the request's shape."""
    await create(aclient if is_async else client)
    [record] = records.calls
    answer = fake_openai.answers[-1].body
    assert record["status"] == "ok" and record["operation"] == "text_completion"
    assert record["usage"] == {
        **answer["usage"],
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "prompt_audio_tokens": 0,
        "completion_audio_tokens": 0,
        "cached_audio_tokens": 0,
        "prompt_image_tokens": 0,
        "cached_image_tokens": 0,
    }
    assert record["response"]["model"] == "gpt-3.5-turbo-instruct"
    assert record["response"]["finish_reason"] == "stop"
    assert record["response"]["content_length"] == len(answer["choices"][0]["text"])
    assert record["response"]["request_id"] is not None
    assert record["cost"]["total_cost_usd"] and record["cost"]["source"]
    assert record["request"]["user_prompt_length"] == len(PROMPT)
    assert record["request"]["max_tokens"] == 64 and record["request"]["stream"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", list(PATHS))
async def test_every_completions_path_records_what_create_records(
    name: str, is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Streamed, with_raw_response and with_streaming_response completions: create()'s record."""
    target = aclient if is_async else client
    await PATHS[name](target)
    await create(target)
    got, expected = records.calls
    assert _essentials(got) == _essentials(expected)
    assert got["operation"] == "text_completion" and got["status"] == "ok"
    assert got["usage"]["total_tokens"] and got["cost"]["total_cost_usd"]
    assert got["response"]["request_id"] is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_completions_stream_gets_usage_without_showing_it(
    is_async: bool,
    fake_openai: FakeOpenAI,
    aclient: openai.AsyncOpenAI,
    client: openai.OpenAI,
    records: Captured,
) -> None:
    """A stream whose caller did not ask for usage is asked on its behalf: the record has the usage,
    and the caller gets the chunks the bare SDK gives (no usage-only chunk, no usage field)."""

    def open_stream(c: Any) -> Any:
        return c.completions.create(**COMPLETION, stream=True)

    bare = await bare_stream_chunks(open_stream, fake_openai, is_async)
    watched = await stream_chunks(open_stream, aclient if is_async else client, is_async)
    assert watched == bare and all(chunk["choices"] for chunk in bare)
    assert fake_openai.requests[-1].json["stream_options"] == {"include_usage": True}
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"] == {
        **fake_openai.answers[-1].body[-1]["usage"],
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "prompt_audio_tokens": 0,
        "completion_audio_tokens": 0,
        "cached_audio_tokens": 0,
        "prompt_image_tokens": 0,
        "cached_image_tokens": 0,
    }


def test_completions_with_a_list_of_prompts_and_content_capture(fake_openai: FakeOpenAI, sdk: Any) -> None:
    """A list of prompts counts every prompt's characters; content capture keeps the prompts and
    every choice's text."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    prompts = ["First prompt here", "and a second one"]
    with llm_ledger.testing.capture(monitor) as records:
        result = sdk(monitor).completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts)
    [record] = records.calls
    assert record["request"]["user_prompt_length"] == sum(map(len, prompts))
    assert record["content"]["prompt"] == prompts
    assert record["content"]["output"] == "".join(choice.text for choice in result.choices)
    assert record["response"]["content_length"] == len(record["content"]["output"])


def test_captured_content_keeps_an_earlier_answer_and_tools_as_sent(
    fake_openai: FakeOpenAI, sdk: Any
) -> None:
    """Content capture of a conversation that goes on with the SDK's own message object from the
    previous answer, and tools whose schemas hold booleans and numbers: the record has them as sent."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    client = sdk(monitor)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "pick",
                "strict": True,
                "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1.5}}},
            },
        }
    ]
    with llm_ledger.testing.capture(monitor) as records:
        first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        messages += [first.choices[0].message, {"role": "user", "content": "more"}]
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    content = records.calls[1]["content"]
    assert content["messages"][1]["role"] == "assistant"
    assert content["messages"][1]["content"] == first.choices[0].message.content
    assert content["messages"][2] == {"role": "user", "content": "more"}
    assert content["tools"] == tools


def test_completions_error_is_recorded(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """A completions call the server refuses raises as without the ledger and is recorded as an error."""
    fake_openai.fail_next(400)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**COMPLETION)
    [record] = records.calls
    assert record["operation"] == "text_completion" and record["status"] == "error"
    assert record["error"]["status_code"] == 400
