"""Streams: the caller gets exactly the bare SDK's chunks; the ledger keeps counters and records once."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
import llm_ledger.testing
from llm_ledger.report import summarise_records, usage_row
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY
from tests.plugin_helpers import LoopbackServer
from tests.sdk import STREAM_BREAKS, sdk_http

MESSAGES: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream me a story"}]


def _dump(chunks: list[Any]) -> list[Any]:
    """Chunks without the per-call random parts (ids and timestamps differ between two calls)."""
    out = []
    for chunk in chunks:
        data = chunk.model_dump(exclude={"id", "created"})
        out.append(data)
    return out


def _bare_chunks(fake_openai: FakeOpenAI, **kwargs: Any) -> list[Any]:
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        return list(bare.chat.completions.create(**kwargs))


def test_caller_gets_the_bare_sdk_chunks_and_usage_is_recorded(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """Without include_usage the caller sees no usage chunk, yet the record has usage and cost."""
    kwargs: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    expected = _bare_chunks(fake_openai, **kwargs)
    got = list(client.chat.completions.create(**kwargs))
    assert _dump(got) == _dump(expected)
    assert all(chunk.choices for chunk in got)
    [record] = records.calls
    assert record["status"] == "ok" and record["request"]["stream"] is True
    assert record["usage"]["total_tokens"] and record["cost"]["total_cost_usd"]
    text = "".join(c.choices[0].delta.content or "" for c in got)
    assert record["response"]["content_length"] == len(text)
    assert record["response"]["finish_reason"] == "stop"
    assert record["timing"]["time_to_first_token_ms"] is not None
    assert 0 < record["timing"]["time_to_first_token_ms"] <= record["timing"]["duration_ms"]


def test_caller_that_asked_for_usage_gets_it(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """With include_usage the caller gets the usage chunk exactly as without the ledger."""
    kwargs: Any = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    expected = _bare_chunks(fake_openai, **kwargs)
    got = list(client.chat.completions.create(**kwargs))
    assert _dump(got) == _dump(expected)
    assert got[-1].usage is not None
    [record] = records.calls
    assert record["usage"]["total_tokens"] == got[-1].usage.total_tokens


def test_request_sent_by_the_caller_is_not_changed_in_place(client: openai.OpenAI, records: Captured) -> None:
    """Asking for usage on the caller's behalf does not mutate the caller's stream_options."""
    stream_options: Any = {}
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=stream_options
        )
    )
    assert stream_options == {}
    assert records.calls[0]["usage"]["total_tokens"]


def test_explicit_include_usage_false_is_respected(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """stream_options={"include_usage": False} is sent as written; the record then has null usage."""
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": False}
        )
    )
    assert (fake_openai.requests[-1].json or {})["stream_options"] == {"include_usage": False}
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_options_passed_in_extra_body_are_the_callers(
    include_usage: bool, fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """stream_options given through extra_body (sent over the body's own) are the caller's: with
    include_usage the caller gets the usage chunk, as without the ledger, and the record its usage."""
    kwargs: Any = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "extra_body": {"stream_options": {"include_usage": include_usage}},
    }
    expected = _bare_chunks(fake_openai, **kwargs)
    got = list(client.chat.completions.create(**kwargs))
    assert _dump(got) == _dump(expected)
    assert (fake_openai.requests[-1].json or {})["stream_options"] == {"include_usage": include_usage}
    [record] = records.calls
    assert record["usage"]["total_tokens"] == (got[-1].usage.total_tokens if include_usage else None)


def test_stop_after_the_finish_chunk_records_ok_without_usage(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A caller that stops after the finish chunk, before the usage chunk: ok, null usage, lens incomplete.

    No chunk is read ahead of the caller, so the usage chunk it never asked for is never read.
    """
    with monitor.lens("stops-early") as run:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                break
        assert records.calls == []  # the stream is still open: the usage chunk may still be read
        stream.close()
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_stream_closed_early_is_interrupted(client: openai.OpenAI, records: Captured) -> None:
    """close() in the middle of a stream writes one interrupted record with what was seen."""
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
    )
    first = [next(stream), next(stream), next(stream)]
    stream.close()
    [record] = records.calls
    assert record["status"] == "interrupted" and record["level"] == "WARNING"
    seen = sum(len(c.choices[0].delta.content or "") for c in first)
    assert record["response"]["content_length"] == seen
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None


def test_stream_used_as_context_manager_and_left_early(client: openai.OpenAI, records: Captured) -> None:
    """Leaving a `with stream:` block early records the call as interrupted."""
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
    ) as stream:
        next(stream)
    assert [r["status"] for r in records.calls] == ["interrupted"]


def test_abandoned_stream_is_recorded_when_collected(client: openai.OpenAI, records: Captured) -> None:
    """A stream the caller drops without closing is recorded as interrupted once collected."""
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
    )
    next(stream)
    del stream
    gc.collect()
    assert [r["status"] for r in records.calls] == ["interrupted"]


class _Closes(sdk_http.HTTPTransport):
    """A transport that counts the responses it gave and those closed (their connection let go)."""

    given = closed = 0

    def handle_request(self, request: Any) -> Any:
        response = super().handle_request(request)
        body: Any = response.stream
        counts = self
        self.given += 1

        class Counted(sdk_http.SyncByteStream):
            def __iter__(self) -> Any:
                return iter(body)

            def close(self) -> None:
                counts.closed += 1
                body.close()

        response.stream = Counted()
        return response


class _AsyncCloses(sdk_http.AsyncHTTPTransport):
    """``_Closes`` for an async client."""

    given = closed = 0

    async def handle_async_request(self, request: Any) -> Any:
        response = await super().handle_async_request(request)
        body: Any = response.stream
        counts = self
        self.given += 1

        class Counted(sdk_http.AsyncByteStream):
            def __aiter__(self) -> Any:
                return body.__aiter__()

            async def aclose(self) -> None:
                counts.closed += 1
                await body.aclose()

        response.stream = Counted()
        return response


@pytest.mark.sdk2  # openai 1.x's streams close nothing when collected, the bare SDK's neither
def test_an_abandoned_stream_lets_its_connection_go_when_collected(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A stream dropped unread and unclosed has its HTTP response closed when the garbage collector takes
    it (the SDK's streams are in a reference cycle), as the bare SDK's is. It was not: the SDK's pool
    kept each such response's connection for good, and scanned them all on every later request (a
    long-running service that drops streams grew slower, by over 1 ms a call after 3,000 of them)."""
    transport = _Closes()
    http = sdk_http.Client(transport=transport)
    with openai.OpenAI(
        api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0, http_client=http
    ) as raw:
        client = monitor.instrument(raw)
        for _ in range(3):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
            )
            next(stream)
            del stream
            gc.collect()
        assert (transport.given, transport.closed) == (3, 3)
    assert [r["status"] for r in records.calls] == ["interrupted"] * 3


@pytest.mark.sdk2  # as above
@pytest.mark.asyncio
async def test_an_abandoned_async_stream_lets_its_connection_go_when_collected(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """As above, for an async stream: the loop closes it once collected, and its response with it."""
    transport = _AsyncCloses()
    http = sdk_http.AsyncClient(transport=transport)
    raw = openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0, http_client=http)
    async with raw:
        client = monitor.instrument(raw)
        for _ in range(3):
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
            )
            await stream.__anext__()
            del stream
            gc.collect()
            for _ in range(5):
                await asyncio.sleep(0)  # the loop closes a collected async generator in a task of its own
        assert (transport.given, transport.closed) == (3, 3)
    assert [r["status"] for r in records.calls] == ["interrupted"] * 3


def test_stream_cut_by_the_server_is_an_error_record(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A connection reset mid-stream raises the SDK's error to the caller and records an error, with the
    status the server answered; the tokens produced before the cut were billed, their count unknown:
    the lens's cost is not complete."""
    with monitor.lens("cut"), pytest.raises(Exception) as raised:  # noqa: PT011 - whatever httpx2 raises
        list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-fault": "reset"}
            )
        )
    [record] = records.calls
    assert record["status"] == "error" and record["error"]["type"] == type(raised.value).__name__
    assert record["error"]["status_code"] == 200  # the stream's answer, let go when it began
    assert record["response"]["id"] and record["usage"]["total_tokens"] is None
    [lens] = records.lenses
    assert lens["summary"]["cost_complete"] is False
    # the reports and the pytest plugin read it as the lens does: billed, with no cost
    assert usage_row(record).uncosted_calls == 1
    total = summarise_records(records, by=["lens"]).total
    assert total.unpriced_calls == 1 and total.cost_complete is False


def test_tool_call_stream_is_counted(client: openai.OpenAI, records: Captured) -> None:
    """Tool calls in a stream are counted from their deltas."""
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, tools=tools, tool_choice="required"
        )
    )
    [record] = records.calls
    assert record["response"]["tool_calls_count"] == 1 and record["response"]["finish_reason"] == "tool_calls"
    assert record["timing"]["time_to_first_token_ms"] is not None


def test_stream_helper_is_recorded(client: openai.OpenAI, records: Captured) -> None:
    """The SDK's chat.completions.stream() helper works on top of the watched stream."""
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"]


def test_azure_stream_is_recorded_as_its_answer_is(fake_openai: FakeOpenAI) -> None:
    """An Azure chat stream opens with a prompt-filter chunk (no choices, empty id and model): the
    record still names the served model and the answer's id, and is priced as the unstreamed call."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    endpoint = fake_openai.base_url.removesuffix("/v1")
    azure = openai.AzureOpenAI(api_key=FAKE_KEY, azure_endpoint=endpoint, api_version="2024-10-21")
    kwargs: Any = {
        "model": "summaries",  # the deployment's name; the answer names the model behind it
        "messages": MESSAGES,
        "extra_headers": {"x-fake-served-model": "gpt-4o-mini-2024-07-18"},
    }
    with llm_ledger.testing.capture(monitor) as mine, monitor.instrument(azure) as client:
        client.chat.completions.create(**kwargs)
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].prompt_filter_results and not chunks[0].choices  # Azure's opening chunk, handed on
    plain, streamed = mine.calls
    assert streamed["response"]["model"] == plain["response"]["model"] == "gpt-4o-mini-2024-07-18"
    assert streamed["response"]["id"] == chunks[1].id != ""
    assert streamed["usage"] == plain["usage"]
    assert streamed["cost"]["total_cost_usd"] == plain["cost"]["total_cost_usd"] is not None


HELPERS: Any = {
    "chat": lambda c: c.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-chunks": "10"}
    ),
    "responses": lambda c: c.responses.stream(
        model="gpt-4o-mini", input="Stream me a story", extra_headers={"x-fake-chunks": "10"}
    ),
}


@pytest.mark.parametrize("helper", HELPERS)
def test_stream_helper_left_early_is_recorded_when_its_block_ends(
    helper: str, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Leaving a stream helper's `with` block early (the helper closes the HTTP response, not the
    stream) records the call as interrupted then, not when the helper object is collected, and the
    lens around it ends with it."""
    with monitor.lens("helper-left-early"):
        with HELPERS[helper](client) as stream:
            next(iter(stream))
        assert [r["status"] for r in records.calls] == ["interrupted"]
    assert [lens["summary"]["total_api_calls"] for lens in records.lenses] == [1]
    assert stream is not None  # still referenced: the record did not wait for it to be collected


@pytest.mark.asyncio
@pytest.mark.parametrize("helper", HELPERS)
async def test_async_stream_helper_left_early_is_recorded_when_its_block_ends(
    helper: str, aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The same with async helpers: `async with` left early records the call then."""
    with monitor.lens("helper-left-early"):
        async with HELPERS[helper](aclient) as stream:
            await stream.__aiter__().__anext__()
        assert [r["status"] for r in records.calls] == ["interrupted"]
    assert [lens["summary"]["total_api_calls"] for lens in records.lenses] == [1]
    assert stream is not None


@pytest.mark.asyncio
async def test_async_stream_matches_the_bare_sdk(
    fake_openai: FakeOpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Async streams give the bare SDK's chunks and one complete record."""
    kwargs: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as bare:
        expected = [c async for c in await bare.chat.completions.create(**kwargs)]
    got = [c async for c in await aclient.chat.completions.create(**kwargs)]
    assert _dump(got) == _dump(expected)
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"]


@pytest.mark.asyncio
async def test_async_stream_closed_early_is_interrupted(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Closing an async stream early records it as interrupted."""
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
    )
    await stream.__anext__()
    await stream.close()
    assert [r["status"] for r in records.calls] == ["interrupted"]


# a stream read slowly: a chunk every 300 ms, so a reader waits for the next one when another closes it
SLOW = {"x-fake-fault": "slow", "x-fake-delay-ms": "300", "x-fake-chunks": "10"}


def test_a_stream_closed_from_another_thread_while_read_is_interrupted(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A "stop generating" button: the stream closed from another thread while a thread reads it is
    the caller's stop, interrupted (no error in its lens), though the reader gets the SDK's error."""
    first, raised = threading.Event(), []
    with monitor.lens("chat") as run:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=SLOW
        )

        def read() -> None:
            try:
                for _ in stream:
                    first.set()
            except Exception as exc:
                raised.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(5)
        time.sleep(0.1)  # the reader waits for the next chunk
        stream.close()
        reader.join(5)
    assert len(raised) == 1 and isinstance(raised[0], STREAM_BREAKS)
    [record] = records.calls
    assert record["status"] == "interrupted" and record["error"] is None
    assert run.summary is not None and run.summary["errors"] == 0


def test_a_stream_ended_by_two_threads_at_once_is_recorded_once(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A stream closed on one thread between two chunks as its reader, on another, reads on: both end
    it at once, and it is recorded (and counted in its lens) once. The closing thread runs under a
    Python tracer, as under a debugger or a profiler: other threads may run between any two of its
    lines. The tracer holds it at its second line recording the call, the scheduler's worst moment."""
    recording = llm_ledger.LLMCallMonitor._finish.__code__
    held, go = threading.Event(), threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not recording:
            return None
        lines = []

        def each_line(frame: Any, event: str, arg: Any) -> Any:
            if event == "line":
                lines.append(frame.f_lineno)
                if len(lines) == 2 and not held.is_set():
                    held.set()
                    go.wait(5)
            return each_line

        return each_line

    def close() -> None:
        sys.settrace(tracer)  # this thread's only
        stream.close()

    with monitor.lens("chat") as run:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=SLOW
        )
        chunks = iter(stream)
        next(chunks)
        closer = threading.Thread(target=close)
        closer.start()
        try:
            assert held.wait(5)
            # the reader reads on: the closed body fails, as without the ledger
            with pytest.raises(STREAM_BREAKS):
                for _ in chunks:
                    pass
        finally:
            go.set()
            closer.join(5)
    assert [(r["status"], r["error"]) for r in records.calls] == [("interrupted", None)]
    assert run.summary is not None and run.summary["total_api_calls"] == 1 and run.summary["errors"] == 0


@pytest.mark.asyncio
async def test_an_async_stream_closed_from_another_task_while_read_is_interrupted(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """The async "stop generating" button: closed by one task while another reads it, interrupted."""
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=SLOW
    )
    first = asyncio.Event()

    async def read() -> None:
        async for _ in stream:
            first.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 5)
    await asyncio.sleep(0.1)  # the reader waits for the next chunk
    await stream.close()
    with pytest.raises(STREAM_BREAKS):
        await reader
    [record] = records.calls
    assert record["status"] == "interrupted" and record["error"] is None


@pytest.mark.asyncio
async def test_async_stop_after_the_finish_chunk_records_ok_without_usage(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """An async caller breaking at finish_reason and closing: ok, null usage."""
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            break
    await stream.close()
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] is None


def test_responses_stream_is_recorded(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """responses.create(stream=True) passes every event through and records the completed usage."""
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as bare:
        expected = [e.type for e in bare.responses.create(model="gpt-4o-mini", input="hi", stream=True)]
    events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert [e.type for e in events] == expected
    completed = events[-1]
    assert completed.type == "response.completed"
    [record] = records.calls
    assert record["status"] == "ok" and record["operation"] == "responses"
    assert completed.response.usage is not None
    assert record["usage"]["total_tokens"] == completed.response.usage.total_tokens
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert record["response"]["content_length"] == len(deltas)
    assert record["timing"]["time_to_first_token_ms"] is not None


@pytest.mark.asyncio
async def test_async_responses_stream_closed_early(aclient: openai.AsyncOpenAI, records: Captured) -> None:
    """An async responses stream closed before completion is interrupted, and names the response
    its first event announced (as an interrupted chat stream names its first chunk's)."""
    stream = await aclient.responses.create(
        model="gpt-4o-mini", input="hi", stream=True, extra_headers={"x-fake-served-model": "dated"}
    )
    created = await stream.__anext__()
    await stream.close()
    [record] = records.calls
    assert record["status"] == "interrupted"
    assert created.type == "response.created"
    assert record["response"]["model"] == created.response.model == "gpt-4o-mini-2024-07-18"
    assert record["response"]["id"] == created.response.id


NAMES = {"x-fake-content": " ".join(["Alice"] * 4), "x-fake-chunks": "5"}  # 'Alice', ' Alic', 'e Ali'...


def _chat_cut(client: openai.OpenAI) -> str:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=NAMES
    )
    said = "".join(
        next(stream).choices[0].delta.content or "" for _ in range(3)
    )  # the role chunk, two pieces
    stream.close()
    return said


def _responses_cut(client: openai.OpenAI) -> str:
    stream = client.responses.create(model="gpt-4o-mini", input="hi", stream=True, extra_headers=NAMES)
    deltas = (e.delta for e in stream if e.type == "response.output_text.delta")
    said = next(deltas) + next(deltas)
    stream.close()
    return said


def _responses_capped(client: openai.OpenAI) -> str:
    capped = {"x-fake-content": " ".join(["Alice"] * 12)}  # 16 tokens: cut inside the 11th name
    return client.responses.create(
        model="gpt-4o-mini", input="hi", max_output_tokens=16, extra_headers=capped
    ).output_text


@pytest.mark.parametrize(
    "cut", [_chat_cut, _responses_cut, _responses_capped], ids=["chat", "responses", "capped"]
)
def test_a_word_cut_mid_way_never_escapes_the_redact_hook(
    fake_openai: FakeOpenAI, sdk: Any, cut: Any
) -> None:
    """An answer cut short (a stream closed mid-word, a Responses answer cut by max_output_tokens) keeps
    its captured text up to its last whole word, as a realtime response's: the cut word ("Alic" of
    "Alice"), which a redact hook matching whole words would miss, is never stored."""
    seen: list[str] = []

    def redact(text: str) -> str:
        seen.append(text)
        return text.replace("Alice", "[NAME]")

    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True, redact=redact)
    with llm_ledger.testing.capture(monitor) as mine:
        said = cut(sdk(monitor))
    assert said.endswith(" Alic")  # what the caller received, cut mid-name
    (record,) = mine.calls
    assert record["response"]["content_length"] == len(said)
    assert record["content"]["output"] == said.removesuffix("Alic").replace("Alice", "[NAME]")
    assert "Alic" not in record["content"]["output"] and seen[-1] == said.removesuffix("Alic")


def test_stream_usage_can_be_switched_off(fake_openai: FakeOpenAI, records: Captured) -> None:
    """stream_usage=False sends the request unchanged; the record then has no usage."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, stream_usage=False)
    with llm_ledger.testing.capture(monitor) as mine:
        client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url))
        with client:
            list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "stream_options" not in (fake_openai.requests[-1].json or {})
    assert mine.calls[0]["usage"]["total_tokens"] is None
    assert mine.calls[0]["status"] == "ok"


def test_stream_record_never_holds_content(client: openai.OpenAI, records: Captured) -> None:
    """Streamed text is counted, never stored, when content capture is off."""
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    dumped = json.dumps(records.calls[0])
    assert "story" not in dumped and "Summary" not in dumped and "content" not in records.calls[0]


@pytest.mark.asyncio
async def test_async_abandoned_stream_is_recorded_when_collected(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """An async stream dropped without close() is recorded as interrupted once collected."""
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-fake-chunks": "10"}
    )
    await stream.__anext__()
    del stream
    gc.collect()
    assert [r["status"] for r in records.calls] == ["interrupted"]


def test_a_stream_that_ends_after_its_file_handler_closed_is_still_written(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A call that ends after the ``JsonlFileHandler`` it goes to was closed (a stream read to its end
    at shutdown, after logging closed its handlers) is written at once, not dropped."""
    handler = llm_ledger.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    with monitor.instrument(raw) as client:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        handler.close()
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    [line] = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert line["status"] == "ok" and line["response"]["content_length"] == len(text)


# weakref.finalize runs its finalizers at exit from one atexit hook, registered by the first
# finalize made: made before logging is imported, it runs after logging.shutdown() closed the file
EARLY_FINALIZE = "import weakref, tempfile; kept_dir = tempfile.TemporaryDirectory()"


@pytest.mark.parametrize("prelude", ["", EARLY_FINALIZE], ids=["plain", "finalize made before logging"])
def test_stream_left_open_at_exit_is_written(fake_openai: FakeOpenAI, tmp_path: Path, prelude: str) -> None:
    """A stream still open when the interpreter exits is written as interrupted, not lost, whatever
    the application made before importing the ledger."""
    script = textwrap.dedent(
        f"""
        {prelude}
        import openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        kept = client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)
        next(kept)
        """
    )
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=60)
    [line] = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert line["status"] == "interrupted"


def test_streams_open_at_sigterm_are_written_before_the_process_dies(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGTERM mid-stream (Kubernetes stopping a worker, a web client's stream relayed after its lens
    ended, an abandoned one not yet collected) writes each open stream as interrupted, and the lens
    it was waiting for, before the process dies by SIGTERM, past every exit hook."""
    script = textwrap.dedent(
        f"""
        import gc, os, signal, time, openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        gc.disable()  # the abandoned stream below stays uncollected, as between two collections
        with llm_ledger.lens("relayed"):
            relayed = client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)
        with llm_ledger.lens("abandoned"):
            abandoned = [client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)]
            next(abandoned[0])
            abandoned.append(abandoned)  # a cycle, as an exception's traceback makes
            del abandoned
        next(relayed)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        """
    )
    done = warm_python.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == -signal.SIGTERM
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    calls = {line["context"]["lens_key"]: line["status"] for line in lines if line["event"] == "llm_api_call"}
    assert calls == {"relayed": "interrupted", "abandoned": "interrupted"}
    summaries = {
        line["context"]["lens_key"]: line["summary"]["total_api_calls"]
        for line in lines
        if line["event"] == "lens_summary"
    }
    assert summaries == {"relayed": 1, "abandoned": 1}


def test_a_stream_abandoned_before_a_servers_sigterm_is_written(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A web client that disconnected mid-stream leaves its stream to the collector; a server whose
    graceful shutdown ends by raising SIGTERM again past every exit hook (uvicorn's) still gets its
    record and its lens's written: the ledger collects such garbage when the signal comes."""
    script = textwrap.dedent(
        f"""
        import gc, os, signal, time, openai, llm_ledger
        stopping = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))  # the server's
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        gc.disable()  # the abandoned stream below stays uncollected, as between two collections
        with llm_ledger.lens("abandoned"):
            hi = [{{"role": "user", "content": "hi"}}]
            abandoned = [client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)]
            next(abandoned[0])
            abandoned.append(abandoned)  # a cycle, as an exception's traceback makes
            del abandoned
        os.kill(os.getpid(), signal.SIGTERM)
        while not stopping:
            time.sleep(0.01)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the graceful shutdown is over
        signal.raise_signal(signal.SIGTERM)
        time.sleep(30)
        """
    )
    done = warm_python.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == -signal.SIGTERM
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert [line.get("status") for line in lines] == ["interrupted", None]
    assert lines[1]["summary"]["total_api_calls"] == 1


def test_calls_made_in_an_atexit_hook_are_written(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """Calls an application makes in its own atexit hook (which runs before the ledger's: hooks run
    last registered first) are written, a stream it leaves open and the lens around them included."""
    script = textwrap.dedent(
        f"""
        import atexit, openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        # openai 1.x imports concurrent.futures on first use of client.chat, which fails once
        # threading has shut down (as it has in atexit hooks); an application has used it by then
        completions = client.chat.completions

        @atexit.register
        def goodbye():
            with llm_ledger.lens("goodbye"):
                completions.create(model="gpt-4o-mini", messages=hi)
                next(completions.create(model="gpt-4o-mini", messages=hi, stream=True))
        """
    )
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=60)
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert [line.get("status") for line in lines if line["event"] == "llm_api_call"] == ["ok", "interrupted"]
    assert [line["summary"]["total_api_calls"] for line in lines if line["event"] == "lens_summary"] == [2]


def test_a_stream_open_at_a_fork_is_recorded_once_by_the_parent(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A process forked while a stream is open in a lens: the child, leaving normally (its
    finalizers run), records its own call but not its parent's stream, nor the lens again; the
    parent records the stream and the lens once."""
    script = textwrap.dedent(
        f"""
        import os, sys, openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        with llm_ledger.lens("forks"):
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)
            next(stream)
            pid = os.fork()
            if pid == 0:
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
                sys.exit(0)
            os.waitpid(pid, 0)
            for _ in stream:
                pass
        """
    )
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=60)
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    streams = [line for line in lines if line["event"] == "llm_api_call" and line["request"]["stream"]]
    plain = [line for line in lines if line["event"] == "llm_api_call" and not line["request"]["stream"]]
    lenses = [line for line in lines if line["event"] == "lens_summary"]
    assert [line["status"] for line in streams] == ["ok"]
    assert [line["status"] for line in plain] == ["ok"]  # the child's own call
    assert [(s["summary"]["total_api_calls"], s["summary"]["open_calls"]) for s in lenses] == [(1, 0)]


# -- unusual chunk sequences: the short path for plain text chunks counts what the full one does -----


def _chunk(choices: list[Any], usage: Any = None, chunk_id: str | None = "chatcmpl-1") -> dict[str, Any]:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-x",
            "choices": choices, "usage": usage}  # fmt: skip


def _choice(finish: str | None = None, *, index: int = 0, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def _usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}


def _tool(call_id: str | None, arguments: str) -> list[dict[str, Any]]:
    function = {"name": "f", "arguments": arguments}
    return [{"index": 0, "id": call_id, "type": "function", "function": function}]


_WORDS = ["Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "ledger."]
_SEQUENCES: dict[str, list[dict[str, Any]]] = {
    "two choices in every chunk": [
        _chunk([_choice(role="assistant", content=""), _choice(index=1, role="assistant", content="")]),
        *(_chunk([_choice(content=w), _choice(index=1, content=w.upper())]) for w in _WORDS),
        _chunk([_choice("stop"), _choice("length", index=1)]),
        _chunk([], _usage(16)),
    ],
    "text, then tool calls": [
        _chunk([_choice(role="assistant", content="")]),
        *(_chunk([_choice(content=w)]) for w in _WORDS),
        _chunk([_choice(tool_calls=_tool("call_1", ""))]),
        _chunk([_choice(tool_calls=_tool(None, '{"a":'))]),
        _chunk([_choice(tool_calls=_tool("call_2", "1}"))]),
        _chunk([_choice(content="after ")]),
        _chunk([_choice("tool_calls")]),
        _chunk([], _usage(12)),
    ],
    "usage on the last content chunk": [
        _chunk([_choice(role="assistant", content="")]),
        *(_chunk([_choice(content=w)]) for w in _WORDS),
        _chunk([_choice("stop", content="end.")], _usage(9)),
    ],
    "usage on every chunk": [
        _chunk([_choice(role="assistant", content="")], _usage(0)),
        *(_chunk([_choice(content=w)], _usage(i + 1)) for i, w in enumerate(_WORDS)),
        _chunk([_choice("stop")], _usage(8)),
        _chunk([], _usage(8)),
    ],
    "no id on the first chunks, empty and null deltas": [
        _chunk([_choice(role="assistant", content="")], chunk_id=None),
        _chunk([_choice(content="first ")], chunk_id=None),
        *(_chunk([_choice(content=w)], chunk_id="chatcmpl-2") for w in _WORDS),  # the first id wins
        _chunk([{"index": 0, "delta": None, "finish_reason": None}]),
        _chunk([_choice(content=None)]),
        _chunk([_choice(content="")]),
        _chunk([_choice("stop")]),
        _chunk([], _usage(9)),
    ],
}


def _expected(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What the record of a stream of ``chunks`` must say, computed from the wire format."""
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    deltas = [choice["delta"] or {} for choice in choices]
    texts = [delta.get("content") or "" for delta in deltas]
    usages = [chunk["usage"] for chunk in chunks if chunk["usage"] is not None]
    finishes = [choice["finish_reason"] for choice in choices if choice["finish_reason"]]
    return {
        "id": next(chunk["id"] for chunk in chunks if chunk["id"] is not None),
        "content_length": sum(map(len, texts)),
        "output": "".join(texts),
        "tool_calls_count": sum(1 for d in deltas for call in d.get("tool_calls") or () if call["id"]),
        "finish_reason": finishes[0] if finishes else None,
        "total_tokens": usages[-1]["total_tokens"] if usages else None,
    }


def _sse_client(chunks: list[dict[str, Any]], *, is_async: bool = False) -> Any:
    """A real SDK client whose every request is answered with ``chunks`` as a stream."""
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())

    transport = sdk_http.MockTransport(handler)
    if is_async:
        return openai.AsyncOpenAI(api_key=FAKE_KEY, http_client=sdk_http.AsyncClient(transport=transport))
    return openai.OpenAI(api_key=FAKE_KEY, http_client=sdk_http.Client(transport=transport))


def _as_recorded(record: dict[str, Any]) -> dict[str, Any]:
    response = record["response"]
    return {
        "id": response["id"],
        "content_length": response["content_length"],
        "output": record["content"]["output"],
        "tool_calls_count": response["tool_calls_count"],
        "finish_reason": response["finish_reason"],
        "total_tokens": record["usage"]["total_tokens"],
    }


_STREAM_KWARGS: Any = {
    "model": "gpt-4o-mini",
    "messages": MESSAGES,
    "stream": True,
    "stream_options": {"include_usage": True},
}


@pytest.mark.parametrize("name", list(_SEQUENCES))
def test_unusual_chunk_sequences_are_counted_in_full(name: str) -> None:
    """Several choices, tool calls after text, usage on content chunks, a late id, null deltas."""
    chunks = _SEQUENCES[name]
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    with llm_ledger.testing.capture(monitor) as mine, _sse_client(chunks) as raw:
        got = list(monitor.instrument(raw).chat.completions.create(**_STREAM_KWARGS))
    assert [chunk.model_dump(exclude_unset=True) for chunk in got] == chunks
    [record] = mine.calls
    assert record["status"] == "ok"
    assert _as_recorded(record) == _expected(chunks)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(_SEQUENCES))
async def test_unusual_chunk_sequences_are_counted_in_full_async(name: str) -> None:
    """The same sequences through an async client."""
    chunks = _SEQUENCES[name]
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    with llm_ledger.testing.capture(monitor) as mine:
        async with _sse_client(chunks, is_async=True) as raw:
            got = [c async for c in await monitor.instrument(raw).chat.completions.create(**_STREAM_KWARGS)]
    assert [chunk.model_dump(exclude_unset=True) for chunk in got] == chunks
    [record] = mine.calls
    assert _as_recorded(record) == _expected(chunks)


@pytest.mark.parametrize("seen", [2, 4, 7])
def test_usage_seen_mid_stream_is_kept_when_the_stream_is_closed(seen: int) -> None:
    """A server sending usage on every chunk: a stream closed early records the last usage seen."""
    chunks = _SEQUENCES["usage on every chunk"]
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    with llm_ledger.testing.capture(monitor) as mine, _sse_client(chunks) as raw:
        stream = monitor.instrument(raw).chat.completions.create(**_STREAM_KWARGS)
        for _ in range(seen):
            next(stream)
        stream.close()
    [record] = mine.calls
    assert record["status"] == "interrupted"
    assert _as_recorded(record) == _expected(chunks[:seen])


# -- what the caller sees: the bare SDK's chunks, as they arrive ---------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("include_usage", [None, True, False], ids=["usage unasked", "asked", "refused"])
async def test_chunks_are_the_bare_sdks_chunk_for_chunk(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, is_async: bool, include_usage: bool | None
) -> None:
    """The same request through a bare and an instrumented client gives equal to_dict() chunks."""
    kwargs: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    if include_usage is not None:
        kwargs["stream_options"] = {"include_usage": include_usage}
    dumps = []
    for instrumented in (False, True):
        if is_async:
            async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as aio:
                if instrumented:
                    monitor.instrument(aio)
                chunks = [c async for c in await aio.chat.completions.create(**kwargs)]
        else:
            with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as sync:
                if instrumented:
                    monitor.instrument(sync)
                chunks = list(sync.chat.completions.create(**kwargs))
        dumps.append([{k: v for k, v in c.to_dict().items() if k not in ("id", "created")} for c in chunks])
    bare, watched = dumps
    assert watched == bare and len(bare) > 3
    if include_usage is not True:  # no "usage": null added to any chunk, no usage chunk shown
        assert not [c for c in watched if "usage" in c]


def _scripted_client(events: list[bytes], after: Any = None, *, is_async: bool = False) -> Any:
    """A real SDK client whose stream sends ``events`` one network read each, then calls ``after``
    (which may raise, as a connection failing there would)."""

    class Body(sdk_http.SyncByteStream, sdk_http.AsyncByteStream):
        def __iter__(self) -> Any:
            yield from events
            if after is not None:
                after()

        async def __aiter__(self) -> Any:
            for event in events:
                yield event
            if after is not None:
                after()

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    transport = sdk_http.MockTransport(handler)
    if is_async:
        return openai.AsyncOpenAI(
            api_key=FAKE_KEY, max_retries=0, http_client=sdk_http.AsyncClient(transport=transport)
        )
    return openai.OpenAI(api_key=FAKE_KEY, max_retries=0, http_client=sdk_http.Client(transport=transport))


def _events(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]


_ANSWER = [
    _chunk([_choice(role="assistant", content="")], None),
    *(_chunk([_choice(content=w)], None) for w in _WORDS),
    _chunk([_choice("stop")], None),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_finish_chunk_reaches_the_caller_before_a_failure_after_it(is_async: bool) -> None:
    """A connection failing right after the finish chunk: the caller gets that chunk, then the error,
    exactly as without the ledger (nothing is read ahead); the call is recorded as an error."""

    def fail() -> None:
        raise sdk_http.RemoteProtocolError("peer closed connection")

    outcomes = []
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    for instrumented in (False, True):
        seen: list[Any] = []
        with llm_ledger.testing.capture(monitor) as mine:
            client = _scripted_client(_events(_ANSWER), fail, is_async=is_async)
            if instrumented:
                monitor.instrument(client)
            try:
                if is_async:
                    async with client:
                        async for c in await client.chat.completions.create(**_STREAM_KWARGS):
                            seen.append(c.to_dict())
                else:
                    with client:
                        seen.extend(c.to_dict() for c in client.chat.completions.create(**_STREAM_KWARGS))
            except STREAM_BREAKS as exc:
                outcomes.append((seen, type(exc).__name__))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0][-1]["choices"][0]["finish_reason"] == "stop"
    [record] = mine.calls
    assert record["status"] == "error" and record["error"]["type"] == outcomes[1][1]
    assert record["response"]["finish_reason"] == "stop"


def test_each_chunk_reaches_the_caller_before_the_next_is_read() -> None:
    """The finish chunk is handed over before the (separate) usage chunk is read from the network."""
    handed: list[int] = []
    read_when: list[int] = []
    events = _events(_ANSWER)
    usage_event = _events([_chunk([], _usage(8))])[0]

    def note_read() -> Any:
        read_when.append(len(handed))
        return usage_event

    class Lazy(list[bytes]):
        def __iter__(self) -> Any:
            yield from events
            yield note_read()

    monitor = llm_ledger.LLMCallMonitor(logger=None)
    with llm_ledger.testing.capture(monitor) as mine, _scripted_client(Lazy()) as raw:
        for _ in monitor.instrument(raw).chat.completions.create(**_STREAM_KWARGS):
            handed.append(1)
    assert read_when == [len(_ANSWER)]  # every earlier chunk, the finish chunk included, was handed over
    [record] = mine.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"] == 18


# -- interrupted, not error ---------------------------------------------------------------------------


def test_ctrl_c_mid_stream_is_interrupted() -> None:
    """KeyboardInterrupt while a stream is read reaches the caller; the call is recorded interrupted."""

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monitor = llm_ledger.LLMCallMonitor(logger=None)
    seen: list[Any] = []

    def read(client: openai.OpenAI) -> None:
        seen.extend(client.chat.completions.create(**_STREAM_KWARGS))

    with llm_ledger.testing.capture(monitor) as mine, _scripted_client(_events(_ANSWER[:4]), ctrl_c) as raw:
        monitor.instrument(raw)
        with pytest.raises(KeyboardInterrupt):
            read(raw)
    assert len(seen) == 4
    [record] = mine.calls
    assert record["status"] == "interrupted" and record["error"]["type"] == "KeyboardInterrupt"
    assert record["response"]["content_length"] == len("".join(_WORDS[:3]))


def test_ctrl_c_mid_request_is_interrupted(monitor: llm_ledger.LLMCallMonitor, records: Captured) -> None:
    """KeyboardInterrupt before the answer arrives reaches the caller; the call is recorded interrupted."""

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        raise KeyboardInterrupt

    http = sdk_http.Client(transport=sdk_http.MockTransport(handler))
    with (
        openai.OpenAI(api_key=FAKE_KEY, http_client=http, max_retries=0) as raw,
        pytest.raises(KeyboardInterrupt),
    ):
        monitor.instrument(raw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [record] = records.calls
    assert record["status"] == "interrupted" and record["error"]["type"] == "KeyboardInterrupt"


@pytest.mark.asyncio
async def test_cancelled_task_mid_stream_is_interrupted(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A task cancelled while it reads a slow stream is recorded interrupted, with what it had seen."""
    seen: list[Any] = []
    two_seen = asyncio.Event()

    async def read() -> None:
        stream = await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "50", "x-fake-chunks": "20"},
        )
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 2:
                two_seen.set()

    task = asyncio.create_task(read())
    await two_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = records.calls
    assert record["status"] == "interrupted" and record["error"]["type"] == "CancelledError"
    assert record["response"]["content_length"] == sum(len(c.choices[0].delta.content or "") for c in seen)


@pytest.mark.asyncio
async def test_cancelled_task_mid_request_is_interrupted(
    fake_openai: FakeOpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A task cancelled while it waits for a slow answer is recorded interrupted."""
    task = asyncio.create_task(
        aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "2000"},
        )
    )
    while not fake_openai.requests:  # noqa: ASYNC110 (sent: the task waits for the answer; the server is a thread)
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = records.calls
    assert record["status"] == "interrupted" and record["error"]["type"] == "CancelledError"


class _TwoChoicesHandler(BaseHTTPRequestHandler):
    """n=2 answered as OpenAI does, streamed one choice per chunk, the two interleaved: choice 1 is cut
    at its token limit before choice 0 ends. (The fake server streams its n choices alike, in step.)"""

    CHOICES = (("Hello there, my friend.", "stop"), ("Hi, how", "length"))
    ORDER = ((0, 0), (1, 0), (1, 1), (1, -1), (0, 1), (0, -1))  # (choice, piece; -1: its finish chunk)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        base = {"id": "chatcmpl-a", "created": 1, "model": body["model"]}
        usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        if not body.get("stream"):
            choices = [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                for i, (text, finish) in enumerate(self.CHOICES)
            ]
            answer = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
            self._send(json.dumps(answer).encode(), "application/json")
            return

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "finish_reason": finish}
            return {**base, "object": "chat.completion.chunk", "choices": [choice]}

        chunks = [chunk(i, {"role": "assistant", "content": ""}) for i in range(len(self.CHOICES))]
        for index, piece in self.ORDER:
            text, finish = self.CHOICES[index]
            if piece < 0:
                chunks.append(chunk(index, {}, finish))
            else:  # two pieces each: the first five characters and the rest
                chunks.append(chunk(index, {"content": text[:5] if piece == 0 else text[5:]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        events = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        self._send(events + b"data: [DONE]\n\n", "text/event-stream")

    def _send(self, payload: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _streamed_and_created(
    monitor: llm_ledger.LLMCallMonitor, records: Captured, base_url: str, read: str, **kwargs: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of one answer streamed (read as ``read`` says) and of the same answer created."""
    with openai.OpenAI(api_key=FAKE_KEY, base_url=base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        request: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, **kwargs}
        if read == "sdk stream":
            for _ in client.chat.completions.create(**request, stream=True):
                pass
        else:
            with client.chat.completions.with_streaming_response.create(**request, stream=True) as body:
                for _ in body.iter_lines():
                    pass
        client.chat.completions.create(**request)
    streamed, created = records.calls
    return streamed, created


@pytest.mark.parametrize("read", ["sdk stream", "with_streaming_response"])
def test_a_stream_of_several_choices_records_what_create_records(
    monitor: llm_ledger.LLMCallMonitor, records: Captured, read: str
) -> None:
    """With n=2 the record's finish_reason is the first choice's (``choices[0]``), as create()
    records the same answer, even when another choice finishes first in the stream; the content of
    every choice is counted, as create() counts it."""
    server = LoopbackServer(_TwoChoicesHandler)
    try:
        streamed, created = _streamed_and_created(monitor, records, f"{server.address}/v1", read, n=2)
    finally:
        server.stop()
    assert streamed["response"]["finish_reason"] == created["response"]["finish_reason"] == "stop"
    assert streamed["response"]["content_length"] == created["response"]["content_length"] == 30
    assert streamed["status"] == "ok"


@pytest.mark.parametrize("read", ["sdk stream", "with_streaming_response"])
def test_a_streamed_refusal_records_what_create_records(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, read: str
) -> None:
    """A refusal is not content: create() records a content_length of 0 for it (the refusal's text
    is in ``message.refusal``), and so does the same answer streamed as ``delta.refusal`` pieces."""
    refusal = {"x-fake-refusal": "I'm sorry, I cannot help with that."}
    streamed, created = _streamed_and_created(
        monitor, records, fake_openai.base_url, read, extra_headers=refusal
    )
    assert streamed["response"]["content_length"] == created["response"]["content_length"] == 0
    assert streamed["response"]["finish_reason"] == created["response"]["finish_reason"] == "stop"


def test_a_streamed_refusal_has_its_time_to_first_token(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """A model refusing streams ``delta.refusal`` pieces, no content: the record still has the time to
    its first token, as any stream's has (docs/MONITORING.md), with the answer's usage; the caller
    gets the bare SDK's chunks."""
    kwargs: Any = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "extra_headers": {"x-fake-refusal": "I'm sorry, I cannot help with that."},
    }
    expected = _bare_chunks(fake_openai, **kwargs)
    got = list(client.chat.completions.create(**kwargs))
    assert _dump(got) == _dump(expected)
    assert (
        "".join(chunk.choices[0].delta.refusal or "" for chunk in got)
        == "I'm sorry, I cannot help with that."
    )
    (record,) = records.calls
    assert (record["status"], record["response"]["finish_reason"]) == ("ok", "stop")
    assert record["usage"]["total_tokens"] == fake_openai.answers[-1].body[-1]["usage"]["total_tokens"]
    assert record["timing"]["time_to_first_token_ms"] is not None


def test_a_responses_stream_answering_with_a_tool_call_has_its_time_to_first_token(
    client: openai.OpenAI, records: Captured
) -> None:
    """A Responses stream that only calls a function (an agent's turn) has the time to its first
    token, as a chat stream answering with a tool call has; the usage and the tool call are recorded."""
    tool: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    events = list(
        client.responses.create(
            model="gpt-4o-mini",
            input="weather?",
            tools=[tool],
            tool_choice="required",
            stream=True,
            extra_headers={"x-fake-chunks": "2"},
        )
    )
    assert [e.type for e in events].count("response.function_call_arguments.delta") == 2
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    (record,) = records.calls
    assert (record["status"], record["response"]["tool_calls_count"]) == ("ok", 1)
    assert record["usage"]["total_tokens"] == completed.response.usage.total_tokens
    assert record["timing"]["time_to_first_token_ms"] is not None


def test_a_trio_cancelled_stream_or_call_is_interrupted(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """trio cancels a task by raising ``trio.Cancelled`` (a BaseException) in it: a stream or a call
    cancelled so is recorded interrupted, as one cancelled under asyncio is, not as an error."""
    import trio

    seen: list[Any] = []

    async def cancelled_during(reading: Any) -> None:
        async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
            client = monitor.instrument(raw)
            with trio.CancelScope() as scope:
                await reading(client, scope)
            assert scope.cancelled_caught

    async def stream(client: openai.AsyncOpenAI, scope: trio.CancelScope) -> None:
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "50", "x-fake-chunks": "20"},
        )
        async for chunk in chunks:
            seen.append(chunk)
            if len(seen) == 2:
                scope.cancel()  # raised at the stream's next read

    async def call(client: openai.AsyncOpenAI, scope: trio.CancelScope) -> None:
        scope.cancel()  # raised at the request's first wait
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    trio.run(cancelled_during, stream)
    trio.run(cancelled_during, call)
    streamed, called = records.calls
    assert streamed["status"] == called["status"] == "interrupted"
    assert streamed["error"]["type"] == called["error"]["type"] == "Cancelled"
    assert streamed["response"]["content_length"] == sum(len(c.choices[0].delta.content or "") for c in seen)
