"""Every client path records a call as ``create()`` does: status, usage, model, finish reason, cost.

Each path runs through the real SDK against the loopback server, sync and async, and its record is
compared with the record of the same request made with plain ``create()`` (streamed for the
streamed paths, where the caller asks for usage: a body the caller reads itself is sent unchanged).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import orjson
import pydantic
import pytest

import llm_ledger
import llm_ledger._streams
from llm_ledger.testing import Captured, FakeOpenAI
from tests.conftest import FAKE_KEY
from tests.sdk import sdk_http

MESSAGES: Any = [{"role": "user", "content": "Tell me about the ledger of every path"}]
CHAT: Any = {"model": "gpt-4o-mini", "messages": MESSAGES}
CHAT_STREAM: Any = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
RESPONSES: Any = {"model": "gpt-4.1-mini", "input": "Tell me about the ledger of every path"}
EMBEDDINGS: Any = {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]}


class Answer(pydantic.BaseModel):
    summary: str


ANSWER_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "Answer", "schema": Answer.model_json_schema(), "strict": True},
}
# responses.parse() with the parameters a record shows (openai 3.61 rebuilt how parse() passes them on)
RESPONSES_PARSE: Any = {**RESPONSES, "max_output_tokens": 300, "temperature": 0.5, "service_tier": "flex"}


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def stream_chunks(
    open_stream: Callable[[Any], Any], client: Any, is_async: bool
) -> list[dict[str, Any]]:
    """The chunks of ``open_stream(client)`` as its caller sees them (``to_dict()``, less the id and
    time that differ between answers)."""
    stream = await _maybe(open_stream(client))
    got = [chunk async for chunk in stream] if is_async else list(stream)
    return [{k: v for k, v in chunk.to_dict().items() if k not in ("id", "created")} for chunk in got]


async def bare_stream_chunks(
    open_stream: Callable[[Any], Any], fake: FakeOpenAI, is_async: bool
) -> list[dict[str, Any]]:
    """``stream_chunks`` through a client the ledger does not watch: what the bare SDK gives."""
    client: Any = (openai.AsyncOpenAI if is_async else openai.OpenAI)(
        api_key="sk-bare", base_url=fake.base_url, max_retries=0
    )
    try:
        return await stream_chunks(open_stream, client, is_async)
    finally:
        await _maybe(client.close())


async def _drain(stream: Any) -> None:
    if hasattr(stream, "__aiter__"):
        async for _ in stream:
            pass
    else:
        for _ in stream:
            pass


async def _enter(manager: Any) -> Any:
    return await manager.__aenter__() if hasattr(manager, "__aenter__") else manager.__enter__()


async def _exit(manager: Any) -> None:
    if hasattr(manager, "__aexit__"):
        await manager.__aexit__(None, None, None)
    else:
        manager.__exit__(None, None, None)


# one definition per path serves both clients: _maybe awaits what the async client returns


async def chat_create(c: Any) -> None:
    await _maybe(c.chat.completions.create(**CHAT))


async def chat_create_stream(c: Any) -> None:
    await _drain(await _maybe(c.chat.completions.create(**CHAT_STREAM)))


async def chat_raw(c: Any) -> None:
    raw = await _maybe(c.chat.completions.with_raw_response.create(**CHAT))
    assert (await _maybe(raw.parse())).choices


async def chat_raw_stream(c: Any) -> None:
    raw = await _maybe(c.chat.completions.with_raw_response.create(**CHAT_STREAM))
    await _drain(await _maybe(raw.parse()))


async def chat_streaming_response(c: Any) -> None:
    manager = c.chat.completions.with_streaming_response.create(**CHAT)
    response = await _enter(manager)
    assert (await _maybe(response.parse())).choices
    await _exit(manager)


async def chat_streaming_response_stream(c: Any) -> None:
    manager = c.chat.completions.with_streaming_response.create(**CHAT_STREAM)
    response = await _enter(manager)
    await _drain(await _maybe(response.parse()))
    await _exit(manager)


async def chat_stream_helper(c: Any) -> None:
    manager = c.chat.completions.stream(**CHAT, stream_options={"include_usage": True})
    stream = await _enter(manager)
    assert (await _maybe(stream.get_final_completion())).choices
    await _exit(manager)


async def chat_parse(c: Any) -> None:
    parsed = await _maybe(c.chat.completions.parse(**CHAT, response_format=Answer))
    assert parsed.choices[0].message.parsed is not None


async def chat_create_json_schema(c: Any) -> None:
    await _maybe(c.chat.completions.create(**CHAT, response_format=ANSWER_FORMAT))


async def responses_create(c: Any) -> None:
    await _maybe(c.responses.create(**RESPONSES))


async def responses_create_json_schema(c: Any) -> None:
    text: Any = {"format": {"type": "json_schema", **ANSWER_FORMAT["json_schema"]}}
    await _maybe(c.responses.create(**RESPONSES_PARSE, text=text))


async def responses_parse(c: Any) -> None:
    parsed = await _maybe(c.responses.parse(**RESPONSES_PARSE, text_format=Answer))
    assert parsed.output_parsed is not None


async def responses_create_stream(c: Any) -> None:
    await _drain(await _maybe(c.responses.create(**RESPONSES, stream=True)))


async def responses_raw(c: Any) -> None:
    raw = await _maybe(c.responses.with_raw_response.create(**RESPONSES))
    assert (await _maybe(raw.parse())).output_text


async def responses_streaming_response(c: Any) -> None:
    manager = c.responses.with_streaming_response.create(**RESPONSES)
    response = await _enter(manager)
    assert (await _maybe(response.parse())).output_text
    await _exit(manager)


async def responses_streaming_response_stream(c: Any) -> None:
    manager = c.responses.with_streaming_response.create(**RESPONSES, stream=True)
    response = await _enter(manager)
    await _drain(await _maybe(response.parse()))
    await _exit(manager)


async def responses_stream_helper(c: Any) -> None:
    manager = c.responses.stream(**RESPONSES)
    stream = await _enter(manager)
    assert (await _maybe(stream.get_final_response())).output_text
    await _exit(manager)


async def embeddings_create(c: Any) -> None:
    await _maybe(c.embeddings.create(**EMBEDDINGS))


async def embeddings_raw(c: Any) -> None:
    raw = await _maybe(c.embeddings.with_raw_response.create(**EMBEDDINGS))
    assert (await _maybe(raw.parse())).data


async def embeddings_streaming_response(c: Any) -> None:
    manager = c.embeddings.with_streaming_response.create(**EMBEDDINGS)
    response = await _enter(manager)
    assert (await _maybe(response.parse())).data
    await _exit(manager)


Path = Callable[[Any], Awaitable[None]]
# each path -> the create() call that makes the same request
PATHS: dict[str, tuple[Path, Path]] = {
    "chat create stream": (chat_create_stream, chat_create_stream),
    "chat with_raw_response": (chat_raw, chat_create),
    "chat with_raw_response stream": (chat_raw_stream, chat_create_stream),
    "chat with_streaming_response": (chat_streaming_response, chat_create),
    "chat with_streaming_response stream": (chat_streaming_response_stream, chat_create_stream),
    "chat stream() helper": (chat_stream_helper, chat_create_stream),
    "chat parse": (chat_parse, chat_create_json_schema),
    "responses create": (responses_create, responses_create),
    "responses create stream": (responses_create_stream, responses_create),
    "responses with_raw_response": (responses_raw, responses_create),
    "responses with_streaming_response": (responses_streaming_response, responses_create),
    "responses with_streaming_response stream": (responses_streaming_response_stream, responses_create),
    "responses stream() helper": (responses_stream_helper, responses_create),
    "responses parse": (responses_parse, responses_create_json_schema),
    "embeddings create": (embeddings_create, embeddings_create),
    "embeddings with_raw_response": (embeddings_raw, embeddings_create),
    "embeddings with_streaming_response": (embeddings_streaming_response, embeddings_create),
}


def _essentials(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": record["status"],
        "error": record["error"],
        "usage": record["usage"],
        "model": record["response"]["model"],
        "finish_reason": record["response"]["finish_reason"],
        "content_length": record["response"]["content_length"],
        "tool_calls_count": record["response"]["tool_calls_count"],
        "cost": record["cost"],
        "request": {k: v for k, v in record["request"].items() if k != "stream"},
        "server": record["server"],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", list(PATHS))
async def test_every_path_records_what_create_records(
    name: str, is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Each client path's record has create()'s status, usage, model, finish reason and cost."""
    path, reference = PATHS[name]
    target = aclient if is_async else client
    await path(target)
    await reference(target)
    got, expected = records.calls
    assert _essentials(got) == _essentials(expected)
    assert got["status"] == "ok" and got["usage"]["total_tokens"] and got["cost"]["total_cost_usd"]
    assert got["response"]["request_id"] is not None


async def responses_compact(c: Any) -> Any:
    return await _maybe(c.responses.compact(**RESPONSES))


async def responses_compact_raw(c: Any) -> Any:
    return await _maybe((await _maybe(c.responses.with_raw_response.compact(**RESPONSES))).parse())


async def responses_compact_streaming_response(c: Any) -> Any:
    manager = c.responses.with_streaming_response.compact(**RESPONSES)
    try:
        return await _maybe((await _enter(manager)).parse())
    finally:
        await _exit(manager)


@pytest.mark.sdk2  # openai 1.x has no responses.compact()
@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "path", [responses_compact, responses_compact_raw, responses_compact_streaming_response]
)
async def test_a_compaction_is_a_billed_call_of_its_lens(
    path: Callable[[Any], Awaitable[Any]],
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """responses.compact() runs the model over the conversation and is billed its tokens: a
    ``responses`` call with its usage and cost, counted in its lens."""
    with monitor.lens("compact") as run:
        compacted = await path(aclient if is_async else client)
    [record] = records.calls
    assert record["status"] == "ok" and record["operation"] == "responses"
    assert record["request"]["model"] == RESPONSES["model"] and record["request"]["stream"] is False
    assert record["usage"]["prompt_tokens"] == compacted.usage.input_tokens
    assert record["usage"]["total_tokens"] == compacted.usage.total_tokens
    assert record["cost"]["total_cost_usd"] and record["response"]["content_length"] == 0
    assert run.summary is not None and run.summary["total_api_calls"] == 1 and run.summary["cost_complete"]


# -- with_streaming_response: the body read any way, broken, or left early ------------------------------


async def _read(response: Any, how: str, stream: bool) -> None:
    """Read a with_streaming_response body the way a caller may."""
    if how == "parse":
        parsed = await _maybe(response.parse())
        if stream:
            await _drain(parsed)
    elif how in ("iter_lines", "iter_bytes", "iter_text"):
        await _drain(getattr(response, how)())
    else:  # read, text, json
        await _maybe(getattr(response, how)())


READS = ["parse", "iter_lines", "iter_bytes", "iter_text", "read", "text", "json"]
BODIES: dict[str, tuple[str, dict[str, Any], Path]] = {
    "chat": ("chat", CHAT, chat_create),
    "chat stream": ("chat", CHAT_STREAM, chat_create_stream),
    "responses": ("responses", RESPONSES, responses_create),
    "responses stream": ("responses", {**RESPONSES, "stream": True}, responses_create),
}


def _resource(c: Any, operation: str) -> Any:
    return c.chat.completions if operation == "chat" else c.responses


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", READS)
@pytest.mark.parametrize("body", list(BODIES))
async def test_streaming_response_is_recorded_however_the_body_is_read(
    body: str, how: str, is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """parse(), iter_lines(), iter_bytes(), iter_text(), read(), text(), json(): the same record."""
    operation, kwargs, reference = BODIES[body]
    stream = bool(kwargs.get("stream"))
    if stream and how == "json":
        how = "text"  # an event stream is not one JSON document
    target = aclient if is_async else client
    manager = _resource(target, operation).with_streaming_response.create(**kwargs)
    response = await _enter(manager)
    await _read(response, how, stream)
    await _exit(manager)
    await reference(target)
    got, expected = records.calls
    assert _essentials(got) == _essentials(expected)
    assert got["status"] == "ok" and got["usage"]["total_tokens"]


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("body", list(BODIES))
async def test_streaming_response_body_that_breaks_is_an_error(
    body: str, is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A body reset mid-way raises to the caller as without the ledger, and is recorded as an error."""
    operation, kwargs, _ = BODIES[body]
    target = aclient if is_async else client
    manager = _resource(target, operation).with_streaming_response.create(
        **kwargs, extra_headers={"x-fake-fault": "reset", "x-fake-chunks": "12"}
    )
    response = await _enter(manager)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever the SDK or httpx2 raises, unchanged
        await _read(response, "parse", bool(kwargs.get("stream")))
    await _exit(manager)
    [record] = records.calls
    assert record["status"] == "error"
    assert record["error"]["type"] in (type(raised.value).__name__, type(raised.value.__cause__).__name__)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("body", ["chat stream", "responses stream"])
async def test_streaming_response_closed_early_is_interrupted(
    body: str, is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Leaving the block after the first line of a streamed body records the call as interrupted."""
    operation, kwargs, _ = BODIES[body]
    target = aclient if is_async else client
    manager = _resource(target, operation).with_streaming_response.create(
        **kwargs, extra_headers={"x-fake-chunks": "12", "x-fake-fault": "slow", "x-fake-delay-ms": "1"}
    )
    response = await _enter(manager)
    lines = response.iter_lines()
    await (lines.__anext__() if is_async else _maybe(next(lines)))
    await _exit(manager)
    [record] = records.calls
    assert record["status"] == "interrupted"
    assert record["usage"]["total_tokens"] is None


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_streaming_response_stream_is_sent_unchanged(
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """A stream whose bytes the caller reads is not asked for usage on its behalf: its record has none."""
    target = aclient if is_async else client
    manager = target.chat.completions.with_streaming_response.create(**CHAT, stream=True)
    response = await _enter(manager)
    await _read(response, "iter_lines", True)
    await _exit(manager)
    assert "stream_options" not in (fake_openai.requests[-1].json or {})
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] is None


def _answered_by(handler: Any, is_async: bool) -> Any:
    """A real SDK client whose requests ``handler`` answers in memory (the HTTP library's mock transport)."""
    transport = sdk_http.MockTransport(handler)
    if is_async:
        http: Any = sdk_http.AsyncClient(transport=transport)
        return openai.AsyncOpenAI(api_key=FAKE_KEY, max_retries=0, http_client=http)
    return openai.OpenAI(api_key=FAKE_KEY, max_retries=0, http_client=sdk_http.Client(transport=transport))


def _in_memory_client(body: bytes, content_type: str, is_async: bool) -> Any:
    """A real SDK client answered from memory, as a mock transport (respx) or a replayed cassette
    answers: the body read already when the SDK gets the response."""

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, headers={"content-type": content_type}, content=body)

    return _answered_by(handler, is_async)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", ["chat with_raw_response stream", "chat with_streaming_response stream"])
async def test_a_body_read_already_is_recorded_as_create_records_it(
    path: str, is_async: bool, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A streamed body a mock transport or a replayed cassette hands over read already is recorded
    as create() records it, through with_raw_response or with_streaming_response."""
    with client.chat.completions.with_streaming_response.create(**CHAT_STREAM) as answered:
        body, content_type = answered.read(), answered.headers["content-type"]
    target = monitor.instrument(_in_memory_client(body, content_type, is_async))
    try:
        await PATHS[path][0](target)
        await chat_create_stream(target)
    finally:
        await _maybe(target.close())
    _, got, expected = records.calls
    assert _essentials(got) == _essentials(expected)
    assert got["status"] == "ok" and got["usage"]["total_tokens"]


def _malformed_stream_client(is_async: bool) -> Any:
    """A real SDK client whose chat stream sends one event, then one whose data is not JSON."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}  # fmt: skip
    body = f"data: {json.dumps(chunk)}\n\n".encode() + b"data: {not json\n\n" + b"data: [DONE]\n\n"

    class Body(sdk_http.SyncByteStream, sdk_http.AsyncByteStream):  # read from the network, as a stream
        def __iter__(self) -> Any:
            yield body

        async def __aiter__(self) -> Any:
            yield body

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    return _answered_by(handler, is_async)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["parse", "iter_lines"])
async def test_streaming_response_with_an_event_that_is_not_json_is_an_error(
    how: str, is_async: bool, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An event stream with an event that is not JSON: create() raises the SDK's JSONDecodeError and
    records an error; a with_streaming_response body is recorded the same, however it is read."""
    client = monitor.instrument(_malformed_stream_client(is_async))
    with pytest.raises(json.JSONDecodeError):
        await _drain(await _maybe(client.chat.completions.create(**CHAT_STREAM)))
    manager = client.chat.completions.with_streaming_response.create(**CHAT_STREAM)
    response = await _enter(manager)
    try:
        await _read(response, how, stream=True)
    except json.JSONDecodeError:
        assert how == "parse"  # the SDK's chunks fail as create()'s did; the lines are handed over
    await _exit(manager)
    await _maybe(client.close())
    expected, got = records.calls
    assert expected["status"] == "error" and expected["error"]["type"] == "JSONDecodeError"
    assert _essentials(got) == _essentials(expected)


async def _raised(reading: Awaitable[Any]) -> tuple[Any, ...] | None:
    """What ``reading`` raises, as a caller can tell it apart: the type, message and body."""
    try:
        await reading
    except Exception as exc:  # compared, whatever it is
        return type(exc), str(exc), getattr(exc, "body", None)
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["parse", "iter_lines"])
@pytest.mark.parametrize(
    ("body", "fault"), [("chat stream", "stream-error"), ("responses stream", "stream-error-object")]
)
async def test_streaming_response_with_an_error_object_is_recorded_as_create_records_it(
    body: str,
    fault: str,
    how: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """An event holding a top-level ``error`` object mid-stream, chat's or Responses', which the SDK
    raises as APIError: a with_streaming_response body is recorded as create(stream=True) records it,
    however it is read, and the caller sees what the bare SDK gives on both paths."""
    operation, kwargs, _ = BODIES[body]
    kwargs = {**kwargs, "extra_headers": {"x-fake-fault": fault}}
    bare: Any = (openai.AsyncOpenAI if is_async else openai.OpenAI)(
        api_key="sk-bare", base_url=fake_openai.base_url, max_retries=0
    )
    seen = []
    try:
        for target in (bare, aclient if is_async else client):
            created = await _raised(_drain(await _maybe(_resource(target, operation).create(**kwargs))))
            manager = _resource(target, operation).with_streaming_response.create(**kwargs)
            response = await _enter(manager)
            read = await _raised(_read(response, how, stream=True))
            await _exit(manager)
            seen.append((created, read))
    finally:
        await _maybe(bare.close())
    assert seen[0] == seen[1]  # the caller sees what the bare SDK gives
    assert seen[0][0] is not None and seen[0][0][0] is openai.APIError
    assert seen[0][1] == (seen[0][0] if how == "parse" else None)  # the lines are handed over
    expected, got = records.calls
    assert expected["status"] == "error" and expected["error"]["type"] == "APIError"
    assert _essentials(got) == _essentials(expected)


# -- with_raw_response: the body the SDK read, read as create() reads it -------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raw_response_that_is_not_json_is_an_error(
    is_async: bool, client: openai.OpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """A 2xx body that is not JSON: the caller's parse() raises, and the call is recorded as create()'s."""
    target = aclient if is_async else client
    headers = {"x-fake-fault": "not-json"}
    raw = await _maybe(target.chat.completions.with_raw_response.create(**CHAT, extra_headers=headers))
    with pytest.raises(ValueError) as raised:  # noqa: PT011 - the SDK's own JSONDecodeError
        await _maybe(raw.parse())
    with pytest.raises(ValueError):  # noqa: PT011
        await _maybe(target.chat.completions.create(**CHAT, extra_headers=headers))
    got, expected = records.calls
    assert got["status"] == "error" and got["error"]["type"] == type(raised.value).__name__
    assert _essentials(got) == _essentials(expected)


# -- a fault inside the ledger never reaches the caller ------------------------------------------------


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("body", list(BODIES))
async def test_a_fault_reading_a_tapped_body_leaves_the_caller_alone(
    body: str,
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """The ledger failing to read a body it taps is reported; the caller reads it all; one record."""
    operation, kwargs, _ = BODIES[body]
    target = aclient if is_async else client
    manager = _resource(target, operation).with_streaming_response.create(**kwargs)
    response = await _enter(manager)
    monkeypatch.setattr(orjson, "loads", _boom)  # the ledger parses bodies with orjson; the SDK does not
    text = await _maybe(response.text())
    await _exit(manager)
    monkeypatch.undo()
    if kwargs.get("stream"):
        assert text.rstrip().endswith("[DONE]" if operation == "chat" else "}")
    else:
        assert json.loads(text)["usage"]  # the whole body, unchanged
    assert any("injected fault" in r.getMessage() for r in internal_log.records)
    [record] = records.calls
    assert record["request"]["model"] == kwargs["model"]


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_fault_watching_chunks_hands_every_chunk_over(
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Chunks the ledger fails to read reach the caller as the bare SDK's, and no more (not the
    usage chunk it asked for on the caller's behalf); the call is still recorded."""

    def open_stream(c: Any) -> Any:
        return c.chat.completions.create(**CHAT, stream=True)

    bare = await bare_stream_chunks(open_stream, fake_openai, is_async)
    monkeypatch.setattr(llm_ledger._streams._StreamState, "chat", _boom)
    watched = await stream_chunks(open_stream, aclient if is_async else client, is_async)
    assert watched == bare and len(bare) > 3
    assert any("watching a stream" in r.getMessage() for r in internal_log.records)
    [record] = records.calls
    assert record["request"]["stream"] is True
