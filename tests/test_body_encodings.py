"""Bodies the caller reads itself (``with_streaming_response``), compressed or with CRLF or CR line
endings as a server may send them.

The fake server compresses its answer with ``x-fake-encoding`` when the SDK's Accept-Encoding offers
that encoding (the HTTP library offers ``br`` with brotli installed and ``zstd`` with its zstd module).
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from llm_ledger import LLMCallMonitor
from llm_ledger.testing import Captured, FakeOpenAI
from tests.test_ledger_paths import CHAT, CHAT_STREAM, RESPONSES, _drain, _enter, _essentials, _exit, _maybe
from tests.test_ledger_streams import _ANSWER, MESSAGES, _chunk, _scripted_client, _usage

BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("chat", CHAT),
    "chat stream": ("chat", CHAT_STREAM),
    "responses stream": ("responses", {**RESPONSES, "stream": True}),
}
ENCODINGS = ["gzip", "br", "zstd"]
# the ids that differ between two answers of the fake server
_IDS = re.compile(r"(chatcmpl-|resp_|msg_fake|call_fake)\d+")


def _resource(c: Any, operation: str) -> Any:
    return c.chat.completions if operation == "chat" else c.responses


async def _read(c: Any, body: str, how: str, headers: dict[str, str]) -> str:
    """What the caller gets from a with_streaming_response body read by ``how``, ids masked."""
    operation, kwargs = BODIES[body]
    manager = _resource(c, operation).with_streaming_response.create(**kwargs, extra_headers=headers)
    response = await _enter(manager)
    if "x-fake-encoding" in headers:
        assert response.headers["content-encoding"] == headers["x-fake-encoding"]  # compressed
    if how == "iter_bytes":
        pieces = response.iter_bytes()
        got = b"".join([p async for p in pieces] if hasattr(pieces, "__aiter__") else list(pieces)).decode()
    else:
        parsed = await _maybe(response.parse())
        if kwargs.get("stream"):
            items = [item async for item in parsed] if hasattr(parsed, "__aiter__") else list(parsed)
            got = json.dumps([item.to_dict() for item in items])
        else:
            got = json.dumps(parsed.to_dict())
    await _exit(manager)
    return _IDS.sub(r"\1N", got)


async def _create(c: Any, body: str, headers: dict[str, str]) -> None:
    operation, kwargs = BODIES[body]
    result = await _maybe(_resource(c, operation).create(**kwargs, extra_headers=headers))
    if kwargs.get("stream"):
        await _drain(result)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["parse", "iter_bytes"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("body", list(BODIES))
async def test_a_compressed_body_is_recorded_as_create_records_it(
    body: str,
    encoding: str,
    how: str,
    is_async: bool,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
) -> None:
    """A gzip, br or zstd body read through with_streaming_response has create()'s usage and cost,
    and the caller reads exactly what the bare SDK reads."""
    target = aclient if is_async else client
    headers = {"x-fake-encoding": encoding}
    got = await _read(target, body, how, headers)
    await _create(target, body, headers)
    bare: Any = (openai.AsyncOpenAI if is_async else openai.OpenAI)(
        api_key="sk-bare", base_url=fake_openai.base_url, max_retries=0
    )
    try:
        assert got == await _read(bare, body, how, headers)
    finally:
        await _maybe(bare.close())
    watched, expected = records.calls
    assert _essentials(watched) == _essentials(expected)
    assert (
        watched["status"] == "ok" and watched["usage"]["total_tokens"] and watched["cost"]["total_cost_usd"]
    )


async def _streamed(c: Any, body: str, how: str, headers: dict[str, str]) -> str:
    """What the caller gets from a stream: ``create()``'s events, or a with_streaming_response body read
    by ``how``; ids masked."""
    if how != "create":
        return await _read(c, body, how, headers)
    operation, kwargs = BODIES[body]
    events = _resource(c, operation).create(**kwargs, extra_headers=headers)
    return _IDS.sub(r"\1N", json.dumps([event.to_dict() for event in events]))


@pytest.mark.asyncio
@pytest.mark.parametrize("ending", ["crlf", "cr"])
@pytest.mark.parametrize("how", ["create", "parse", "iter_bytes"])
@pytest.mark.parametrize("body", ["chat stream", "responses stream"])
async def test_a_stream_with_crlf_or_cr_line_endings_is_recorded_as_with_lf(
    body: str, how: str, ending: str, fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """A stream whose lines end with CRLF or a bare CR (SSE allows both; some proxies and compatible
    servers send them), from create() or read through with_streaming_response, is recorded as the
    same stream with LF endings, and the caller gets exactly what the bare SDK gets."""
    headers = {"x-fake-line-ending": ending}
    got = await _streamed(client, body, how, headers)
    await _streamed(client, body, how, {})
    with openai.OpenAI(api_key="sk-bare", base_url=fake_openai.base_url, max_retries=0) as bare:
        assert got == await _streamed(bare, body, how, headers)
    # the bytes the caller read did end lines so
    assert ({"crlf": "\r\n", "cr": "\r"}[ending] in got) is (how == "iter_bytes")
    watched, expected = records.calls
    assert _essentials(watched) == _essentials(expected)
    assert watched["status"] == "ok" and watched["usage"]["total_tokens"] > 0


def test_a_crlf_split_between_two_reads_ends_one_line(monitor: LLMCallMonitor, records: Captured) -> None:
    """A CRLF whose CR and LF come in two network reads ends one line, not two: an event whose data
    spans two lines is read whole, and the stream read through with_streaming_response is recorded as
    the same stream with LF endings."""
    chunks = [*_ANSWER, _chunk([], _usage(8))]

    def body(end: bytes) -> bytes:  # each event's JSON split over two data lines
        events = [b"data: {" + end + b"data: " + json.dumps(c).encode()[1:] + end + end for c in chunks]
        return b"".join(events) + b"data: [DONE]" + end + end

    lines = body(b"\r\n").split(b"\n")  # every read but the first starts with the LF of a CRLF
    for reads in ([body(b"\n")], [lines[0], *(b"\n" + line for line in lines[1:])]):
        with monitor.instrument(_scripted_client(reads)) as client:
            request: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
            with client.chat.completions.with_streaming_response.create(**request) as response:
                assert [c.to_dict().get("usage") for c in response.parse()][-1] == _usage(8)
    lf, split = records.calls
    assert _essentials(split) == _essentials(lf)
    assert split["status"] == "ok" and split["usage"]["total_tokens"] == 18
