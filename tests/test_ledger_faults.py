"""Never break the caller: failures injected inside the ledger never change what the SDK gives."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
import llm_ledger._instrument
import llm_ledger._monitor as monitor_module
import llm_ledger.testing
from llm_ledger import _jsonl
from llm_ledger._pricing import Route
from llm_ledger.testing import Captured, FakeOpenAI
from tests.sdk import sdk_http

HI: Any = [{"role": "user", "content": "hi"}]


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


def test_a_sink_that_raises_is_reported_and_the_call_returns(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A failing sink does not stop the call, the other sinks, or later calls."""
    monitor.add_sink(_boom)
    response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.choices[0].message.content
    assert len(records.calls) == 1
    assert any("injected fault" in r.getMessage() for r in internal_log.records)
    monitor.remove_sink(_boom)


def test_a_log_handler_that_raises_is_reported(
    fake_openai: FakeOpenAI, internal_log: pytest.LogCaptureFixture
) -> None:
    """A handler on the llm_monitor logger that raises never reaches the caller."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise OSError("handler down")

        def handleError(self, record: logging.LogRecord) -> None:
            raise OSError("handler down")

    logger = logging.getLogger("test_broken_handler")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(Broken())
    monitor = llm_ledger.LLMCallMonitor(logger="test_broken_handler")
    client = monitor.instrument(openai.OpenAI(api_key="sk-x-12345678", base_url=fake_openai.base_url))
    with client:
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HI).id
    assert any("a log handler" in r.getMessage() for r in internal_log.records)


def test_a_fault_reading_the_request_leaves_the_call_alone(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """If the ledger cannot read a request, the request is sent unchanged and its result returned."""
    monkeypatch.setattr(llm_ledger._instrument, "request_shape", _boom)
    response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.choices[0].message.content
    assert any("reading the request" in r.getMessage() for r in internal_log.records)


def test_a_fault_reading_usage_leaves_the_call_alone(
    client: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """If the ledger cannot read a response's usage, the caller still gets it and the call is recorded."""
    monkeypatch.setattr(monitor_module, "usage_of", _boom)
    response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.choices[0].message.content
    assert any("reading a call's result" in r.getMessage() for r in internal_log.records)
    [record] = records.calls  # nothing lost: recorded without what could not be read
    assert record["status"] == "ok" and record["usage"]["total_tokens"] is None


@pytest.mark.parametrize("fault", [KeyError("rate"), AttributeError("tier"), RecursionError()])
def test_a_fault_pricing_a_call_keeps_its_record_with_a_null_cost(
    fault: Exception,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Whatever pricing raises, the call keeps its record and its lens count, with a null cost, and
    the fault is reported: a record lost here would pass any budget."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise fault

    monkeypatch.setattr(Route, "_costs", fail)
    with monitor.lens("priced") as run:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.choices[0].message.content
    [record] = records.calls
    assert record["usage"]["total_tokens"] and record["cost"]["total_cost_usd"] is None
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert run.summary["cost_complete"] is False
    assert any("pricing a call" in r.getMessage() for r in internal_log.records)


def test_a_usage_whose_counts_do_not_add_up_is_recorded_unpriced_and_said_to_be_the_servers(
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A server (a gateway) whose usage counts more cached tokens than prompt tokens: the call is
    recorded with a null cost and its lens incomplete, and the warning says the usage cannot be
    priced, with the counts, not that the ledger failed (with a traceback) as for a fault of its own."""
    answer = {
        "id": "chatcmpl-odd", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                  "prompt_tokens_details": {"cached_tokens": 50}},
    }  # fmt: skip
    fake_openai.fail_next(200, body=answer)
    with monitor.lens("odd") as run:
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HI).usage is not None
    [record] = records.calls
    assert record["usage"]["prompt_tokens"] == 10 and record["cost"]["total_cost_usd"] is None
    assert run.summary is not None and run.summary["cost_complete"] is False
    [said] = [r for r in internal_log.records if "gpt-4o-mini" in r.getMessage()]
    assert "cannot be priced" in said.getMessage() and "cached_tokens=50" in said.getMessage()
    assert "failed in" not in said.getMessage() and said.exc_info is None


def test_a_fault_scrubbing_captured_content_keeps_the_record_without_it(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Captured content the ledger cannot copy (e.g. nesting deeper than the stack allows where the
    call ends) is left out of the record, never the record itself; the fault is reported."""
    monitor.capture_content = True
    monkeypatch.setattr(monitor_module, "_secrets", _boom)  # read only once the call has ended
    with monitor.lens("captured") as run:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.choices[0].message.content
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"] and "content" not in record
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert any("capturing a call's content" in r.getMessage() for r in internal_log.records)


def test_a_fault_reading_a_bad_response_shape_is_contained(
    client: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A response the ledger does not understand is reported; the caller gets it; the call is recorded."""
    monkeypatch.setattr(llm_ledger._instrument, "response_shape", _boom)
    response = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert response.usage is not None
    assert any("recording a call" in r.getMessage() for r in internal_log.records)
    [record] = records.calls
    assert record["status"] == "ok" and record["response"]["content_length"] is None


def test_a_fault_while_watching_a_stream_does_not_change_the_chunks(
    client: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A failure recording a stream is reported; the caller still gets every chunk; the call is recorded."""
    monkeypatch.setattr(monitor_module, "usage_of", _boom)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert any("reading a call's result" in r.getMessage() for r in internal_log.records)
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"] is None


class _Unreadable(Exception):
    """An error whose status and text cannot be read (a custom transport's, raised mid-stream)."""

    @property
    def status_code(self) -> int:
        raise RuntimeError("no status")

    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("capture_content", [False, True])
def test_an_error_that_cannot_be_read_is_recorded_by_its_type(
    capture_content: bool, internal_log: pytest.LogCaptureFixture
) -> None:
    """A stream failing with an error whose status and message raise when read is recorded as an
    error of that type, the rest left out (its status is the one the server answered, 200, as for any
    stream that broke); the caller gets the error itself."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}  # fmt: skip

    class Body(sdk_http.SyncByteStream):
        def __iter__(self) -> Any:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            raise _Unreadable

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=capture_content)
    http = sdk_http.Client(transport=sdk_http.MockTransport(handler))
    client = monitor.instrument(openai.OpenAI(api_key="sk-x-12345678", max_retries=0, http_client=http))
    with client, llm_ledger.testing.capture(monitor) as records, pytest.raises(_Unreadable):
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True):
            pass
    [record] = records.calls
    assert record["status"] == "error"
    assert record["error"] == {"type": "_Unreadable", "status_code": 200, "message": None}
    assert any("reading a call's error" in r.getMessage() for r in internal_log.records)


def test_a_full_disk_keeps_records_for_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """ENOSPC is reported, the records are kept, and they are written once the disk has room."""
    handler = _jsonl.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    logger = logging.getLogger("test_full_disk")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    real_write = os.write
    full = True

    def write(fd: int, data: Any) -> int:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    try:
        for i in range(5):
            logger.info({"event": "llm_api_call", "n": i})
        handler.flush()
        assert (tmp_path / "llm_calls.jsonl").read_text() == ""
        assert any("No space left" in r.getMessage() for r in internal_log.records)
        full = False
        logger.info({"event": "llm_api_call", "n": 5})
        handler.flush()
        lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
        assert [line["n"] for line in lines] == [0, 1, 2, 3, 4, 5]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_write_failures_of_each_file_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """Reports are limited to one a minute per file: a failing file never hides another's failure."""

    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    handlers = [_jsonl.JsonlFileHandler(tmp_path / name / "llm_calls.jsonl") for name in ("a", "b")]
    monkeypatch.setattr(os, "write", write)
    try:
        for _ in range(2):
            for handler in handlers:
                handler.handle(logging.LogRecord("t", logging.INFO, "", 0, {"event": "x"}, None, None))
                handler.flush()
    finally:
        monkeypatch.undo()
        for handler in handlers:
            handler.close()
    reports = [r.getMessage() for r in internal_log.records if "No space left" in r.getMessage()]
    assert len(reports) == 2
    assert str(tmp_path / "a") in reports[0] and str(tmp_path / "b") in reports[1]


def test_a_removed_log_directory_is_recreated(tmp_path: Path) -> None:
    """Deleting the log directory while running loses nothing written afterwards."""
    import shutil

    log_dir = tmp_path / "logs"
    handler = _jsonl.JsonlFileHandler(log_dir / "llm_calls.jsonl")
    logger = logging.getLogger("test_removed_dir")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.info({"n": 1})
        handler.flush()
        shutil.rmtree(log_dir)
        logger.info({"n": 2})
        handler.flush()
        assert [json.loads(x)["n"] for x in (log_dir / "llm_calls.jsonl").read_text().splitlines()] == [2]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_response_without_usage_is_recorded_with_null_usage(
    client: openai.OpenAI, records: Captured
) -> None:
    """A server that omits usage gives null tokens and cost, not zeros, and the call returns."""
    response = client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-fault": "no-usage"}
    )
    assert response.usage is None
    [record] = records.calls
    assert record["status"] == "ok"
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None


def test_a_body_that_is_not_json_raises_what_the_sdk_raises(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """A 200 with a non-JSON body raises the same exception as the bare SDK, and an error record."""
    kwargs: Any = {"model": "gpt-4o-mini", "messages": HI, "extra_headers": {"x-fake-fault": "not-json"}}
    bare = openai.OpenAI(api_key="sk-x-12345678", base_url=fake_openai.base_url, max_retries=0)
    with bare, pytest.raises(Exception) as expected:  # noqa: PT011 - whatever the SDK raises
        bare.chat.completions.create(**kwargs)
    with pytest.raises(type(expected.value)) as got:
        client.chat.completions.create(**kwargs)
    assert str(got.value) == str(expected.value)
    assert records.calls[0]["status"] == "error"


def test_a_value_orjson_refuses_is_still_written(tmp_path: Path) -> None:
    """A context value orjson cannot encode (an int beyond 64 bits) falls back to the json module."""
    handler = _jsonl.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    logger = logging.getLogger("test_big_int")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.info({"event": "llm_api_call", "context": {"source_id": 2**70}})
        handler.flush()
        [line] = (tmp_path / "llm_calls.jsonl").read_text().splitlines()
        assert json.loads(line) == {"event": "llm_api_call", "context": {"source_id": 2**70}}
    finally:
        logger.removeHandler(handler)
        handler.close()
