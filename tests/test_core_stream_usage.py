"""Usage the ledger asks a stream for on the caller's behalf stays out of the caller's chunks, also
from a compatible server that puts it on content chunks (``x-fake-usage-style: every-chunk``); usage
a server sends unasked (``x-fake-usage-style: mistral``) reaches the caller."""

from __future__ import annotations

import gc
import json
from typing import Any

import openai
import pytest

import llm_ledger
import llm_ledger._streams
from llm_ledger.testing import Captured, FakeOpenAI
from tests.test_cost_audit import async_provider_client, provider_client
from tests.test_ledger_paths import _maybe, bare_stream_chunks, stream_chunks

EVERY_CHUNK = {"x-fake-usage-style": "every-chunk"}
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("chat", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a tale"}]}),
    "completions": ("completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Tell me a tale"}),
}


def _opener(operation: str, kwargs: dict[str, Any]) -> Any:
    def open_stream(client: Any) -> Any:
        resource = client.chat.completions if operation == "chat" else client.completions
        return resource.create(**kwargs, stream=True, extra_headers=EVERY_CHUNK)

    return open_stream


def _chat_opener(path: str, kwargs: dict[str, Any], headers: dict[str, str]) -> Any:
    """A chat stream opened by ``create`` or through ``with_raw_response``'s ``parse()``."""

    async def open_stream(c: Any) -> Any:
        if path == "create":
            return await _maybe(c.chat.completions.create(**kwargs, stream=True, extra_headers=headers))
        raw = c.chat.completions.with_raw_response.create(**kwargs, stream=True, extra_headers=headers)
        return (await _maybe(raw)).parse()

    return open_stream


async def _chunks(
    client: Any, operation: str, kwargs: dict[str, Any], is_async: bool
) -> list[dict[str, Any]]:
    return await stream_chunks(_opener(operation, kwargs), client, is_async)


async def _bare(fake_openai: FakeOpenAI, operation: str, kwargs: dict[str, Any], is_async: bool) -> list[Any]:
    return await bare_stream_chunks(_opener(operation, kwargs), fake_openai, is_async)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", list(REQUESTS))
async def test_usage_on_content_chunks_is_hidden_when_the_ledger_asked_for_it(
    name: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """The caller who did not ask for usage gets the bare SDK's chunks, chunk for chunk (no usage on
    any of them); the record has the usage the server sent."""
    operation, kwargs = REQUESTS[name]
    bare = await _bare(fake_openai, operation, kwargs, is_async)
    watched = await _chunks(aclient if is_async else client, operation, kwargs, is_async)
    sent = fake_openai.answers[-1].body
    assert sent[1]["usage"]["total_tokens"]  # the server did put usage on content chunks
    assert watched == bare and not [chunk for chunk in watched if "usage" in chunk]
    [record] = records.calls
    assert record["status"] == "ok"
    assert record["usage"]["total_tokens"] == sent[-1]["usage"]["total_tokens"]


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_usage_on_content_chunks_is_shown_when_the_caller_asked_for_it(
    is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A caller who asked for usage gets it as the server sent it, on every chunk."""
    operation, kwargs = REQUESTS["chat"]
    kwargs = {**kwargs, "stream_options": {"include_usage": True}}
    watched = await _chunks(aclient if is_async else client, operation, kwargs, is_async)
    assert all(chunk["usage"]["total_tokens"] for chunk in watched)
    [record] = records.calls
    assert record["usage"]["total_tokens"] == watched[-1]["usage"]["total_tokens"]


@pytest.mark.asyncio
async def test_a_fault_reading_a_chunk_still_hides_the_usage(
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Chunks the ledger fails to read reach the caller as the bare SDK's: without the usage it
    asked for, whether on content chunks or in a chunk of its own."""
    operation, kwargs = REQUESTS["chat"]

    def boom(*args: Any) -> Any:
        raise RuntimeError("injected fault")

    bare = await _bare(fake_openai, operation, kwargs, False)
    monkeypatch.setattr(llm_ledger._streams._StreamState, "chat", boom)
    watched = await _chunks(client, operation, kwargs, False)
    assert watched == bare
    assert any("watching a stream" in r.getMessage() for r in internal_log.records)
    [record] = records.calls
    assert record["request"]["stream"] is True


@pytest.mark.asyncio
async def test_monitor_without_stream_usage_leaves_usage_on_chunks_alone(
    fake_openai: FakeOpenAI, sdk: Any
) -> None:
    """stream_usage=False: the ledger asks for nothing, so hides nothing."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, stream_usage=False)
    operation, kwargs = REQUESTS["chat"]
    kwargs = {**kwargs, "stream_options": {"include_usage": True}}
    watched = await _chunks(sdk(monitor), operation, kwargs, False)
    assert all(chunk["usage"]["total_tokens"] for chunk in watched)


MISTRAL = {"x-fake-usage-style": "mistral"}


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", ["create", "with_raw_response"])
async def test_usage_the_server_sends_unasked_reaches_the_caller(
    path: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """A server that puts the usage on its finishing chunk whether asked or not (Mistral): the
    caller gets it there, as from the bare SDK; the ledger hides only what it asked for."""
    _, kwargs = REQUESTS["chat"]

    open_stream = _chat_opener(path, kwargs, MISTRAL)

    bare = await bare_stream_chunks(open_stream, fake_openai, is_async)
    watched = await stream_chunks(open_stream, aclient if is_async else client, is_async)
    if path == "create":  # asked for on the caller's behalf (not where the caller may read the bytes)
        assert (fake_openai.requests[-1].json or {})["stream_options"] == {"include_usage": True}
    assert bare[-1]["usage"]["total_tokens"] and bare[-1]["choices"][0]["finish_reason"] == "stop"
    assert watched == bare
    [record] = records.calls
    assert record["status"] == "ok"
    assert record["usage"]["total_tokens"] == bare[-1]["usage"]["total_tokens"]


MOONSHOT = {"x-fake-usage-style": "moonshot"}


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", ["create", "with_raw_response"])
async def test_a_server_that_streams_usage_unasked_is_not_asked_for_it(
    path: str, is_async: bool, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Moonshot (Kimi) streams the usage unasked in the finishing chunk's ``choices[0].usage``, and in
    OpenAI's usage chunk in its place when asked: the ledger does not ask it, so the caller gets that
    chunk as from the bare SDK, and the record still has the usage and a cost."""
    kwargs = {"model": "kimi-k2-0905-preview", "messages": [{"role": "user", "content": "Tell me a tale"}]}

    open_stream = _chat_opener(path, kwargs, MOONSHOT)

    bare = await bare_stream_chunks(open_stream, fake_openai, is_async)
    kimi: Any = (async_provider_client if is_async else provider_client)(
        fake_openai, "https://api.moonshot.ai/v1"
    )
    try:
        watched = await stream_chunks(open_stream, monitor.instrument(kimi), is_async)
    finally:
        await _maybe(kimi.close())
    assert "stream_options" not in (fake_openai.requests[-1].json or {})
    in_choice = bare[-1]["choices"][0]["usage"]
    assert in_choice["total_tokens"] and bare[-1]["choices"][0]["finish_reason"] == "stop"
    assert watched == bare
    [record] = records.calls
    assert record["server"]["provider"] == "moonshotai"
    assert record["usage"]["total_tokens"] == in_choice["total_tokens"]
    assert record["cost"]["total_cost_usd"]


def test_a_gateway_priced_as_moonshot_is_still_asked_for_usage(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, client: openai.OpenAI, records: Captured
) -> None:
    """A host the price table names Moonshot (a gateway, which may not stream Moonshot's way) is asked
    for usage as any server is: only Moonshot's own base URL is known to send it unasked."""
    monitor.prices = llm_ledger.PriceTable(hosts={"127.0.0.1": llm_ledger.HostPrice("moonshotai")})
    _, kwargs = REQUESTS["chat"]
    for _ in client.chat.completions.create(**{**kwargs, "model": "kimi-k2-0905-preview"}, stream=True):
        pass
    assert (fake_openai.requests[-1].json or {})["stream_options"] == {"include_usage": True}
    [record] = records.calls
    assert record["server"]["provider"] == "moonshotai" and record["usage"]["total_tokens"]


async def _lines(client: Any, path: str, is_async: bool, kwargs: dict[str, Any]) -> list[Any]:
    """A chat stream's body read as raw lines through ``path``, each event's JSON less its id."""
    resource = client.chat.completions
    if path == "with_raw_response":
        raw = await _maybe(resource.with_raw_response.create(**kwargs, stream=True))
        http = raw.http_response
        try:
            got = [line async for line in http.aiter_lines()] if is_async else list(http.iter_lines())
        finally:
            await _maybe(http.aclose() if is_async else http.close())
    else:
        manager = resource.with_streaming_response.create(**kwargs, stream=True)
        if is_async:
            async with manager as response:
                got = [line async for line in response.iter_lines()]
        else:
            with manager as response:
                got = list(response.iter_lines())
    events = [json.loads(line[6:]) if line.startswith("data: {") else line for line in got]
    return [{k: v for k, v in e.items() if k != "id"} if type(e) is dict else e for e in events]


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", ["with_raw_response", "with_streaming_response"])
@pytest.mark.parametrize("include_usage", [None, True])
@pytest.mark.parametrize("style", ["openai", "mistral"])
async def test_a_stream_read_as_raw_lines_is_the_bare_sdks(
    style: str,
    include_usage: bool | None,
    path: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """A caller reading a stream's raw lines (``with_raw_response``'s ``http_response``,
    ``with_streaming_response``) is recorded as one reading its chunks, with the usage the stream
    carried. ``with_streaming_response``'s lines are the bare SDK's: no usage chunk nor ``"usage":
    null`` it did not ask for, and the usage a server sends unasked. ``with_raw_response`` is asked for
    usage as ``create()`` is (its callers ``parse()`` it): its lines are those of a bare caller who
    asked (a documented limit)."""
    _, kwargs = REQUESTS["chat"]
    kwargs = {**kwargs, "extra_headers": {"x-fake-usage-style": style}}
    if include_usage is not None:
        kwargs["stream_options"] = {"include_usage": include_usage}
    asked = path == "with_raw_response" and include_usage is None  # by the ledger, for parse()
    bare_client: Any = (openai.AsyncOpenAI if is_async else openai.OpenAI)(
        api_key="sk-bare", base_url=fake_openai.base_url, max_retries=0
    )
    try:
        as_sent = {**kwargs, "stream_options": {"include_usage": True}} if asked else kwargs
        bare = await _lines(bare_client, path, is_async, as_sent)
    finally:
        await _maybe(bare_client.close())
    watched = await _lines(aclient if is_async else client, path, is_async, kwargs)
    assert watched == bare and "data: [DONE]" in bare
    usage = [event["usage"] for event in bare if type(event) is dict and event.get("usage")]
    assert len(usage) == (1 if include_usage or asked or style == "mistral" else 0)  # Mistral's, unasked
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] == (usage[0]["total_tokens"] if usage else None)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raw_lines_read_after_the_raw_response_is_collected_are_recorded(
    is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A caller keeping only ``with_raw_response``'s ``http_response`` and reading its lines: the
    SDK stream ``parse()`` would have given, never read, is collected meanwhile (a cycle: at any
    collection); the call is recorded once, ``ok``, when the lines end, not ``interrupted`` then."""
    _, kwargs = REQUESTS["chat"]
    if is_async:
        http = (await aclient.chat.completions.with_raw_response.create(**kwargs, stream=True)).http_response
        gc.collect()
        try:
            lines = [line async for line in http.aiter_lines()]
        finally:
            await http.aclose()
    else:
        http = client.chat.completions.with_raw_response.create(**kwargs, stream=True).http_response
        gc.collect()
        try:
            lines = list(http.iter_lines())
        finally:
            http.close()
    assert "data: [DONE]" in lines
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"]
