"""Faults: the caller sees what it would see without the ledger; the ledger records what happened."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import _jsonl
from llm_ledger._fake_server import error_body
from llm_ledger.testing import FakeOpenAI, capture
from tests.reliability_helpers import FAKE_KEY, chat_body, mock_client, read_lines, record_figures
from tests.sdk import STREAM_BREAKS, sdk_http

pytestmark = pytest.mark.reliability

MESSAGES: Any = [{"role": "user", "content": "one two three four five six seven eight nine"}]
Scenario = Callable[[openai.OpenAI], Any]


def _strip_ids(value: Any) -> Any:
    """A dumped SDK object without the per-request ids the fake server numbers."""
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k not in ("id", "item_id")}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, (openai.Stream, Iterator)):
        return [_strip_ids(chunk.model_dump()) for chunk in value]
    return _strip_ids(value.model_dump())


def _outcome(scenario: Scenario, client: openai.OpenAI) -> tuple[Any, ...]:
    """What the caller observes: the value (chunks for a stream), or the exception's type and message.

    Chunks read before a stream fails are part of the outcome.
    """
    seen: list[Any] = []
    try:
        result = scenario(client)
        if isinstance(result, openai.Stream):
            for chunk in result:
                seen.append(_strip_ids(chunk.model_dump()))
            return ("returned", seen)
        return ("returned", _dump(result))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc), seen)


def _chat(stream: bool = False, headers: dict[str, str] | None = None) -> Scenario:
    def run(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=stream, extra_headers=headers or {}
        )

    return run


def _cut_chat(headers: dict[str, str]) -> Scenario:
    """A stream the fake server cuts half-way through its events.

    The caller asks for usage itself: otherwise the ledger's request (which adds it) would make the
    server send one more event, and so cut at a different chunk than for the bare client.
    """

    def run(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-chunks": "12", **headers},
        )

    return run


def _responses_stream(headers: dict[str, str]) -> Scenario:
    def run(client: openai.OpenAI) -> Any:
        return client.responses.create(
            model="gpt-4o-mini", input="hello there", stream=True, extra_headers=headers
        )

    return run


# scenario id -> (scenario, fail_next (status, times) or None, max_retries, expected status, retries)
FAULTS: dict[str, tuple[Scenario, tuple[int, int] | None, int, str, int | None]] = {
    "no-usage": (_chat(headers={"x-fake-fault": "no-usage"}), None, 0, "ok", 0),
    "no-usage stream": (_chat(True, headers={"x-fake-fault": "no-usage"}), None, 0, "ok", 0),
    "not-json": (_chat(headers={"x-fake-fault": "not-json"}), None, 0, "error", 0),
    "body cut": (_chat(headers={"x-fake-fault": "cut-stream"}), None, 0, "error", 0),
    "reset": (_chat(headers={"x-fake-fault": "reset"}), None, 0, "error", 0),
    "stream cut (chunked)": (
        _cut_chat(headers={"x-fake-fault": "cut-stream"}),
        None,
        0,
        "error",
        0,
    ),
    "stream cut (close-delimited)": (
        _cut_chat(headers={"x-fake-fault": "cut-stream", "x-fake-transfer": "close"}),
        None,
        0,
        "interrupted",
        0,
    ),
    "stream reset": (_cut_chat(headers={"x-fake-fault": "reset"}), None, 0, "error", 0),
    "responses stream cut": (_responses_stream(headers={"x-fake-fault": "cut-stream"}), None, 0, "error", 0),
    "error mid-stream": (_cut_chat(headers={"x-fake-fault": "stream-error"}), None, 0, "error", 0),
    # the SDK hands these events on (no exception): the answer failed all the same
    "responses error event": (_responses_stream({"x-fake-fault": "stream-error"}), None, 0, "error", 0),
    "responses failed": (_responses_stream({"x-fake-fault": "response-failed"}), None, 0, "error", 0),
    "5xx then retry": (_chat(), (500, 1), 2, "ok", 1),
    "5xx stream then retry": (_chat(True), (502, 2), 2, "ok", 2),
    "5xx retries exhausted": (_chat(), (503, 3), 2, "error", 2),
    "429 then retry": (_chat(), (429, 1), 1, "ok", 1),
    "4xx": (_chat(headers={"x-fake-status": "422"}), None, 0, "error", 0),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_caller_sees_the_same_outcome_and_the_ledger_records_the_fault(
    name: str, fake_openai: FakeOpenAI, internal_log: pytest.LogCaptureFixture
) -> None:
    """Each fault reaches the caller unchanged (value, chunks, exception) and is recorded with its status."""
    scenario, fail, retries, status, expected_retries = FAULTS[name]
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    outcomes = []
    for instrumented in (False, True):
        fake_openai.reset()
        if fail is not None:
            fake_openai.fail_next(*fail)
        with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=retries) as client:
            if instrumented:
                monitor.instrument(client)
            with capture(monitor) as records, monitor.lens("faults"):
                outcomes.append(_outcome(scenario, client))
    plain, watched = outcomes
    assert watched == plain
    (record,) = records.calls
    assert record["status"] == status
    assert record["retries"] == expected_retries
    if status == "error":
        assert record["error"]["type"] == (plain[1] if plain[0] == "raised" else "ResponseError")
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 1
    assert lens["summary"]["errors"] == (status == "error")
    assert not [r for r in internal_log.records if r.name == "llm_ledger.internal"], (
        "the ledger itself failed"
    )
    record_figures(
        f"fault: {name}", caller_outcome=plain[0], recorded_status=status, retries=expected_retries
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["cut-stream", "reset"])
async def test_async_stream_fault_reaches_the_caller_unchanged(fake_openai: FakeOpenAI, fault: str) -> None:
    """An async stream that breaks mid-way gives the same chunks and exception with and without the ledger."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    outcomes: list[tuple[Any, ...]] = []
    for instrumented in (False, True):
        seen: list[Any] = []
        async with openai.AsyncOpenAI(
            api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0
        ) as client:
            if instrumented:
                monitor.instrument(client)
            with capture(monitor) as records:
                try:
                    stream = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=MESSAGES,
                        stream=True,
                        stream_options={"include_usage": True},  # the same request either way
                        extra_headers={"x-fake-fault": fault, "x-fake-chunks": "12"},
                    )
                    async for chunk in stream:
                        seen.append(_strip_ids(chunk.model_dump()))
                    outcomes.append(("returned", seen))
                except STREAM_BREAKS as exc:
                    outcomes.append(("raised", type(exc).__name__, str(exc), seen))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == "raised"
    assert len(outcomes[0][-1]) > 0, "the fault should come after some chunks"
    assert [r["status"] for r in records.calls] == ["error"]


def test_timeout_reaches_the_caller_unchanged(fake_openai: FakeOpenAI) -> None:
    """A request that times out raises the same APITimeoutError and is recorded as an error."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    slow = _chat(headers={"x-fake-fault": "slow", "x-fake-delay-ms": "400"})
    outcomes = []
    for instrumented in (False, True):
        with openai.OpenAI(
            api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0, timeout=0.1
        ) as client:
            if instrumented:
                monitor.instrument(client)
            with capture(monitor) as records:
                outcomes.append(_outcome(slow, client))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == "APITimeoutError"
    (record,) = records.calls
    assert record["status"] == "error"
    assert record["error"] == {
        "type": "APITimeoutError",
        "status_code": None,
        "message": "Request timed out.",
    }


def test_caller_closing_a_stream_early_is_recorded_as_interrupted(fake_openai: FakeOpenAI) -> None:
    """A caller that stops reading and closes a stream gets its chunks; the call is recorded interrupted."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
        monitor.instrument(client)
        with capture(monitor) as records:
            stream = _chat(True, headers={"x-fake-chunks": "20"})(client)
            first = [next(iter(stream)) for _ in range(3)]
            stream.close()
    assert len(first) == 3
    (record,) = records.calls
    assert record["status"] == "interrupted"


class _Broken(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("handler exploded")


def test_a_log_handler_or_sink_that_raises_never_reaches_the_caller(
    fake_openai: FakeOpenAI, internal_log: pytest.LogCaptureFixture
) -> None:
    """A raising log handler or sink is reported on llm_ledger.internal; the call returns normally."""
    logger = logging.getLogger("llm_monitor.reliability.broken")
    logger.propagate = False
    broken = _Broken()
    logger.addHandler(broken)

    def bad_sink(record: Any) -> None:
        raise ValueError("sink exploded")

    try:
        monitor = llm_ledger.LLMCallMonitor(logger=logger.name, sinks=[bad_sink])
        outcomes = []
        for instrumented in (False, True):
            with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
                if instrumented:
                    monitor.instrument(client)
                with capture(monitor) as records, monitor.lens("broken"):
                    outcomes.append(_outcome(_chat(), client))
                    outcomes.append(_outcome(_chat(True), client))
    finally:
        logger.removeHandler(broken)
    assert outcomes[:2] == outcomes[2:]
    assert [r["event"] for r in records.records] == ["llm_api_call", "llm_api_call", "lens_summary"]
    reports = [r.getMessage() for r in internal_log.records if r.name == "llm_ledger.internal"]
    assert any("a log handler" in m and "handler exploded" in m for m in reports)
    assert any("sink" in m and "sink exploded" in m for m in reports)


def _usage_handler(usage: Any) -> Callable[[sdk_http.Request], sdk_http.Response]:
    def handler(request: sdk_http.Request) -> sdk_http.Response:
        body = chat_body("gpt-4o-mini", "fine", 5)
        body["usage"] = usage
        return sdk_http.Response(200, json=body)

    return handler


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "many", "completion_tokens": 1, "total_tokens": 2},
        {"prompt_tokens": 5, "completion_tokens": -3, "total_tokens": 2},
        {
            "prompt_tokens": 5,
            "completion_tokens": 1,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 9},
        },
        {"prompt_tokens": 1.5, "completion_tokens": None, "total_tokens": True},
        "not a usage object",
        [],
    ],
    ids=["string", "negative", "cached>prompt", "float/null/bool", "string usage", "list usage"],
)
def test_implausible_usage_is_recorded_not_dropped(usage: Any) -> None:
    """A response whose usage makes no sense returns unchanged and is still recorded, with null cost."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    with mock_client(_usage_handler(usage)) as plain:
        expected = _outcome(_chat(), plain)
    with mock_client(_usage_handler(usage)) as client:
        monitor.instrument(client)
        with capture(monitor) as records, monitor.lens("hostile usage"):
            assert _outcome(_chat(), client) == expected
    (record,) = records.calls
    assert record["status"] == "ok"
    assert record["cost"]["total_cost_usd"] is None
    assert all(v is None or (type(v) is int and v >= 0) for v in record["usage"].values())
    assert records.lenses[0]["summary"]["total_api_calls"] == 1


def _emit(handler: _jsonl.JsonlFileHandler, start: int, count: int) -> None:
    for number in range(start, start + count):
        handler.handle(logging.LogRecord("llm_monitor", logging.INFO, __file__, 0, {"n": number}, None, None))


def test_full_disk_keeps_records_for_retry_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """While writes fail with ENOSPC records are kept and reported; once space returns all are written."""
    failing = {"on": True}

    def write(fd: int, data: Any) -> int:
        if failing["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    fake_os = types.SimpleNamespace(
        **{name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    )
    fake_os.write = write
    monkeypatch.setattr(_jsonl, "os", fake_os)
    handler = _jsonl.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    try:
        _emit(handler, 0, 500)
        handler.flush()
        _emit(handler, 500, 500)
        handler.flush()
        assert (tmp_path / "llm_calls.jsonl").read_bytes() == b""
        failing["on"] = False
        handler.flush()
        _emit(handler, 1000, 1)  # wakes the writer, which retries the kept lines first
        handler.flush()
    finally:
        handler.close()
    numbers = [line["n"] for line in read_lines(tmp_path / "llm_calls.jsonl")]
    assert numbers == list(range(1001))
    reports = [r.getMessage() for r in internal_log.records if r.name == "llm_ledger.internal"]
    assert any("No space left on device" in m and "kept for retry" in m for m in reports)
    record_figures("fault: full disk (ENOSPC) then space again", records=1001, lines_lost=1001 - len(numbers))


def test_a_failing_disk_that_cannot_take_back_a_short_write_leaves_no_part_of_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing disk (EIO) cuts a batch's write short and then fails the truncation that would take
    the part back: the next write cuts it, and the whole batch is written once the disk answers."""
    failing = {"on": False}
    real_write = os.write
    short: list[int] = []

    def write(fd: int, data: Any) -> int:
        if not failing["on"]:
            return real_write(fd, data)
        if not short:  # the batch's first write: half of it, ending mid-line
            short.append(real_write(fd, data[: len(data) // 2 + 3]))
            return short[0]
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def ftruncate(fd: int, length: int) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, length)

    fake_os = types.SimpleNamespace(
        **{name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    )
    fake_os.write, fake_os.ftruncate = write, ftruncate
    monkeypatch.setattr(_jsonl, "os", fake_os)
    handler = _jsonl.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    try:
        _emit(handler, 0, 10)
        handler.flush()
        failing["on"] = True
        _emit(handler, 10, 10)
        handler.flush()
        failing["on"] = False
        handler.flush()
        _emit(handler, 20, 1)  # wakes the writer, which retries the kept lines first
        handler.flush()
    finally:
        handler.close()
    assert short  # the write was cut short
    numbers = [line["n"] for line in read_lines(tmp_path / "llm_calls.jsonl")]
    assert numbers == list(range(21))


def test_log_directory_removed_while_running_is_recreated(tmp_path: Path) -> None:
    """A log directory removed under a running writer is recreated and every later line lands in it."""
    log_dir = tmp_path / "logs"
    handler = _jsonl.JsonlFileHandler(log_dir / "llm_calls.jsonl")
    try:
        _emit(handler, 0, 100)
        handler.flush()
        shutil.rmtree(log_dir)
        _emit(handler, 100, 100)
        handler.flush()
    finally:
        handler.close()
    assert [line["n"] for line in read_lines(log_dir / "llm_calls.jsonl")] == list(range(100, 200))


def test_error_message_with_the_key_is_never_recorded(fake_openai: FakeOpenAI) -> None:
    """An error body quoting the API key reaches the caller as is; the record never holds the key."""
    for capture_content in (False, True):
        monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=capture_content)
        fake_openai.fail_next(401, body=error_body(401, f"Incorrect API key provided: {FAKE_KEY}"))
        with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
            monitor.instrument(client)
            with capture(monitor) as records, pytest.raises(openai.AuthenticationError, match=FAKE_KEY):
                _chat()(client)
        (record,) = records.calls
        assert FAKE_KEY not in repr(record)
        assert record["error"]["status_code"] == 401


@pytest.mark.parametrize(
    ("kind", "fault"),
    [("chat", "stream-error"), ("responses", "stream-error"), ("responses", "response-failed")],
)
def test_an_error_inside_a_stream_read_as_bytes_is_recorded_as_create_records_it(
    kind: str, fault: str, fake_openai: FakeOpenAI
) -> None:
    """``with_streaming_response``: the server's error inside the stream (chat: an error object, which
    the SDK raises as APIError; responses: an ``error`` or ``response.failed`` event) is an ``error``
    record with the same error type as ``create(stream=True)`` gives, not an interrupted or ok call."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    headers = {"x-fake-fault": fault, "x-fake-chunks": "6"}
    request: Any = {"model": "gpt-4o-mini", "stream": True, "extra_headers": headers}
    if kind == "chat":
        request["messages"] = MESSAGES
        endpoint: Any = client.chat.completions
    else:
        request["input"] = "hello there"
        endpoint = client.responses
    with client, capture(monitor) as records:
        try:
            for _ in endpoint.create(**request):
                pass
        except openai.APIError:
            pass
        with endpoint.with_streaming_response.create(**request) as response:
            lines = list(response.iter_lines())
    assert any("error" in line for line in lines)
    created, streamed = records.calls
    assert created["status"] == streamed["status"] == "error"
    assert streamed["error"] == created["error"]
    assert streamed["error"]["type"] == ("APIError" if kind == "chat" else "ResponseError")
