"""An operator's own handler on the ``llm_monitor`` logger: python-json-logger's ``JsonFormatter``
against ``LedgerJsonFormatter``, as docs/MONITORING.md compares them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from pythonjsonlogger.json import JsonFormatter

import llm_ledger
from llm_ledger.loading import strict_loads
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.sdk_independent

HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def default_client(fake_openai: FakeOpenAI, fresh_config: None) -> Iterator[openai.OpenAI]:
    """A client instrumented by the default monitor, whose records reach ``llm_monitor``."""
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
        yield llm_ledger.instrument(client)


def _one_line(client: openai.OpenAI, formatter: logging.Formatter) -> tuple[str, dict[str, Any], float]:
    """One real call with a NaN context value: the line ``formatter`` writes for it, the record the
    ledger emitted, and when its ``LogRecord`` was made."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    created: list[float] = []

    def note(record: logging.LogRecord) -> bool:
        created.append(record.created)
        return True

    handler.addFilter(note)
    logger = logging.getLogger("llm_monitor")
    logger.addHandler(handler)
    try:
        with capture() as captured, llm_ledger.track_llm_call(score=float("nan")):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    (record,) = captured.records
    (when,) = created
    return line, record, when


def test_plain_json_formatter_writes_a_bare_nan_and_a_message(default_client: openai.OpenAI) -> None:
    """python-json-logger's own ``JsonFormatter`` on ``llm_monitor`` writes a NaN context value as a
    bare ``NaN``, which ``llm-ledger report``'s reader rejects, and adds ``"message": ""``."""
    line, record, _ = _one_line(default_client, JsonFormatter())
    assert '"score": NaN' in line
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(line)
    loose = json.loads(line)
    assert loose.pop("message") == ""
    assert loose["call_id"] == record["call_id"] and loose["timestamp"] == record["timestamp"]


def test_json_formatter_with_timestamp_replaces_the_records_timestamp(
    default_client: openai.OpenAI,
) -> None:
    """With ``timestamp=True`` the line's ``timestamp`` is no longer the record's (the call's end, as
    the JSONL file has it) but the time the record reached logging, in another format."""
    line, record, created = _one_line(default_client, JsonFormatter(timestamp=True))
    written = json.loads(line)["timestamp"]
    assert written != record["timestamp"]
    assert written == datetime.fromtimestamp(created, tz=UTC).isoformat()


def test_ledger_json_formatter_writes_the_line_the_file_has(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """``LedgerJsonFormatter`` on an operator's handler writes each record exactly as the ledger's own
    JSONL file does: standard JSON (the NaN as null), the record's own timestamp, no added field."""
    llm_ledger.configure(log_dir=tmp_path)
    line, record, _ = _one_line(default_client, llm_ledger.LedgerJsonFormatter())
    llm_ledger.flush()
    (file_line,) = (tmp_path / "llm_calls.jsonl").read_text().splitlines()
    assert line == file_line
    written = strict_loads(line)
    assert written["context"]["score"] is None
    assert list(written) == list(record)
    assert written["timestamp"] == record["timestamp"] and "message" not in written


def test_jsonl_file_handler_on_an_applications_logger_writes_its_messages_as_python_json_logger(
    tmp_path: Path,
) -> None:
    """``JsonlFileHandler`` used as an ordinary logging handler: a string message is written in
    python-json-logger's shape (the message, then the ``extra`` fields), a dict message as the dict;
    the handler's filters apply."""
    path = tmp_path / "app.jsonl"
    handler = llm_ledger.JsonlFileHandler(path)
    handler.addFilter(lambda record: "noisy" not in record.getMessage())
    logger = logging.getLogger("tests.app_using_the_handler")
    logger.addHandler(handler)
    try:
        logger.warning("disk %s is full", "/var", extra={"host": "a1"})
        logger.warning("noisy retry")
        logger.warning({"event": "custom", "n": 1})
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = [strict_loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"message": "disk /var is full", "host": "a1"}, {"event": "custom", "n": 1}]
