"""configure(), the JSONL file, environment variables and content capture."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pythonjsonlogger.json import JsonFormatter

import llm_ledger
import llm_ledger.testing
from llm_ledger import JsonlFileHandler, _config, _jsonl
from llm_ledger.loading import strict_loads
from llm_ledger.report import summarise
from llm_ledger.testing import FakeOpenAI
from llm_ledger.testing import capture as capture_records
from tests import warm_python
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "PRIVATE-USER-TEXT"}]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def default_client(fake_openai: FakeOpenAI, fresh_config: None) -> Iterator[openai.OpenAI]:
    """A client instrumented by the default monitor."""
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
        yield llm_ledger.instrument(client)


def test_records_are_written_as_json_lines(default_client: openai.OpenAI, tmp_path: Path) -> None:
    """configure(log_dir) writes each record as one JSON line, identical to the emitted dict."""
    llm_ledger.configure(log_dir=tmp_path)
    with llm_ledger.testing.capture() as captured, llm_ledger.lens("summary", source_id="s1"):
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    lines = _lines(tmp_path / "llm_calls.jsonl")
    assert lines == captured.records
    assert [line["event"] for line in lines] == ["llm_api_call", "lens_summary"]
    assert list(lines[0])[:6] == ["timestamp", "level", "logger", "event", "call_id", "status"]


def test_handlers_on_the_logger_get_log_records_like_logging_builds(
    default_client: openai.OpenAI,
) -> None:
    """An operator's own handler on ``llm_monitor`` gets the record as msg, with the usual attributes."""
    import os
    import threading
    import time

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    logger = logging.getLogger("llm_monitor")
    logger.addHandler(handler)
    try:
        before = time.time()
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        worker = threading.Thread(
            target=lambda: default_client.chat.completions.create(model="gpt-4o-mini", messages=HI),
            name="lens-worker",
        )
        worker.start()
        worker.join()
        after = time.time()
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 2
    expected = logging.LogRecord("llm_monitor", logging.INFO, "", 0, {}, None, None)
    for record, thread_name in zip(seen, ("MainThread", "lens-worker"), strict=True):
        assert set(vars(expected)) <= set(vars(record))  # formatters add "message"
        assert isinstance(record.msg, dict) and record.msg["event"] == "llm_api_call"
        assert (record.name, record.levelno, record.levelname) == ("llm_monitor", logging.INFO, "INFO")
        assert record.threadName == thread_name and record.process == os.getpid()
        assert before <= record.created <= after
        assert record.msecs == int((record.created % 1) * 1000)
        assert (
            abs(
                record.relativeCreated - expected.relativeCreated - (record.created - expected.created) * 1000
            )
            < 1
        )
    assert seen[0].thread != seen[1].thread
    line = logging.Formatter("%(levelname)s %(name)s %(threadName)s %(message)s").format(seen[1])
    assert line.startswith("INFO llm_monitor lens-worker {")


def test_the_file_writes_the_same_line_beside_the_applications_handlers_and_honours_its_formatter(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """The file writes the same line whether or not the application's own handler on ``llm_monitor``
    gets the record too (as a JSON-message ``LogRecord``), and a formatter set on the file applies."""
    llm_ledger.configure(log_dir=tmp_path)
    handler = _config._handler
    assert handler is not None
    path = tmp_path / "llm_calls.jsonl"
    logger = logging.getLogger("llm_monitor")

    def call() -> dict[str, Any]:
        before = path.read_text().count("\n")
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        llm_ledger.flush()
        lines = _lines(path)
        assert len(lines) == before + 1, "one call, one line"
        return lines[-1]

    def same(record: dict[str, Any]) -> dict[str, Any]:
        varying = ("timestamp", "call_id", "timing")
        return {k: v for k, v in record.items() if k not in varying} | {"response": {}}

    alone = call()
    heard: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record)

    other = Keep()
    logger.addHandler(other)
    try:
        shared = call()
    finally:
        logger.removeHandler(other)
    assert list(alone) == list(shared) and same(alone) == same(shared)
    (record,) = heard
    assert json.loads(record.getMessage())["call_id"] == shared["call_id"]

    handler.formatter = JsonFormatter("{levelname}", style="{")  # an operator's own fields
    try:
        formatted = call()
    finally:
        handler.setFormatter(llm_ledger.LedgerJsonFormatter())
    assert formatted["levelname"] == "INFO" and formatted["event"] == "llm_api_call"
    assert call()["event"] == "llm_api_call" and "levelname" not in _lines(path)[-1]


def test_context_values_json_cannot_hold_directly_are_still_written(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """Integer dict keys, integers beyond 64 bits and objects such as UUIDs reach the file as JSON; a
    value JSON cannot hold at all (a dict keyed by tuples, a list holding itself) as its text, and
    the record's other fields as they are: no record is lost for a context value."""
    import uuid

    llm_ledger.configure(log_dir=tmp_path)
    source = uuid.UUID(int=7)
    looped: list[Any] = []
    looped.append(looped)
    contexts: list[dict[str, Any]] = [
        {"source_id": source},
        {"source_id": "s", "pages": {1: "intro", 2: "body"}},
        {"source_id": 2**70},
        {"source_id": "t", "by_pair": {("a", 1): 2}, "big": 2**70},
        {"source_id": "l", "looped": looped},
    ]
    for context in contexts:
        with llm_ledger.track_llm_call(**context):
            default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    lines = _lines(tmp_path / "llm_calls.jsonl")
    written = [line["context"] for line in lines]
    assert [c["source_id"] for c in written] == [str(source), "s", 2**70, "t", "l"]
    assert written[1]["pages"] == {"1": "intro", "2": "body"}
    assert (written[3]["by_pair"], written[3]["big"]) == ("{('a', 1): 2}", 2**70)
    assert written[4]["looped"] == "[[...]]"
    assert all(line["usage"]["total_tokens"] for line in lines)


def test_a_record_json_cannot_hold_directly_is_still_standard_json(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """Next to an integer beyond 64 bits (which orjson refuses, so the json module writes the line), a
    NaN or an infinity is written as null, as orjson writes it: never a bare NaN that makes readers
    reject the line and lose the call from every report."""
    llm_ledger.configure(log_dir=tmp_path)
    with llm_ledger.track_llm_call(source_id=2**70, score=float("nan"), limit=float("inf")):
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    (line,) = (tmp_path / "llm_calls.jsonl").read_text().splitlines()
    context = strict_loads(line)["context"]
    assert (context["source_id"], context["score"], context["limit"]) == (2**70, None, None)
    report = summarise([tmp_path])
    assert (report.malformed, report.total.calls) == (0, 1)


def test_a_text_log_handler_shows_a_record_json_cannot_hold_directly_as_standard_json(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """A handler of the llm_monitor logger that formats records as text (a root StreamHandler) shows
    each record as standard JSON, also when orjson cannot write it (an integer beyond 64 bits): a NaN
    is null there too, never a bare NaN its readers reject."""
    heard: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record)

    keep = Keep()
    logging.getLogger("llm_monitor").addHandler(keep)
    try:
        with llm_ledger.track_llm_call(source_id=2**70, score=float("nan")):
            default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    finally:
        logging.getLogger("llm_monitor").removeHandler(keep)
    (record,) = heard
    context = strict_loads(record.getMessage())["context"]
    assert (context["source_id"], context["score"]) == (2**70, None)


def test_a_level_the_application_gave_the_logger_is_kept_by_configure(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """An application whose logging setup (run before configure()) ships only failed calls from
    ``llm_monitor`` to a handler of its own (level WARNING) keeps that level: configure() does not
    raise it back to INFO, and the file still gets every record."""
    heard: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record)

    logger = logging.getLogger("llm_monitor")
    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.WARNING)
    try:
        llm_ledger.configure(log_dir=tmp_path)
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.BadRequestError):
            default_client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    finally:
        logger.removeHandler(keep)
    llm_ledger.flush()
    assert [record.msg["status"] for record in heard] == ["error"]  # type: ignore[index]
    assert [line["status"] for line in _lines(tmp_path / "llm_calls.jsonl")] == ["ok", "error"]


@pytest.fixture
def at_root() -> Iterator[list[dict[str, Any]]]:
    """The ledger's records (their ``msg``) the root logger's handlers get during the test."""
    heard: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, dict):
                heard.append(record.msg)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        yield heard
    finally:
        logging.getLogger().removeHandler(keep)


def test_the_applications_root_logging_gets_the_records_while_no_file_is_written(
    default_client: openai.OpenAI, tmp_path: Path, at_root: list[dict[str, Any]]
) -> None:
    """A service that logs to stdout through the root logger and turns the file off
    (LLM_LEDGER_LOG_DIR=off, its log stack reading stdout) gets every record there, as before
    configure(); while the file is written its root handlers are spared a second copy. It lost every
    record: configure() cut llm_monitor off from the root logger whether or not it wrote a file."""
    llm_ledger.configure(log_dir=None)
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [record["event"] for record in at_root] == ["llm_api_call"]
    llm_ledger.configure(log_dir=tmp_path)
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [record["event"] for record in at_root] == ["llm_api_call"]
    llm_ledger.configure(log_dir=None)
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [record["event"] for record in at_root] == ["llm_api_call", "llm_api_call"]
    assert len(_lines(tmp_path / "llm_calls.jsonl")) == 1


def test_the_root_logging_is_spared_the_records_after_a_capture_block_ends(
    default_client: openai.OpenAI, tmp_path: Path, at_root: list[dict[str, Any]]
) -> None:
    """While configure() writes the file, a testing.capture() block (its sink added, then removed)
    leaves the root handlers spared the default monitor's records. They got every record after it:
    removing any sink let the records propagate again, as if the file were gone."""
    llm_ledger.configure(log_dir=tmp_path)
    with capture_records() as captured:
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [record["event"] for record in captured.records] == ["llm_api_call"]
    assert at_root == []
    llm_ledger.flush()
    assert len(_lines(tmp_path / "llm_calls.jsonl")) == 2


def test_an_own_monitors_records_reach_the_root_logging_while_configure_writes_the_file(
    default_client: openai.OpenAI, fake_openai: FakeOpenAI, tmp_path: Path, at_root: list[dict[str, Any]]
) -> None:
    """A monitor of the application's own (``LLMCallMonitor()``, no sinks: its records go to
    ``llm_monitor``) keeps reaching the root handlers after configure() starts writing the file,
    which spares them only the default monitor's copies. It lost every record: configure() stopped
    llm_monitor propagating."""
    monitor = llm_ledger.LLMCallMonitor()
    own = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    with own, monitor.track_llm_call(service="own"):
        own.chat.completions.create(model="gpt-4o-mini", messages=HI)
        llm_ledger.configure(log_dir=tmp_path)
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        own.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    assert [record["context"]["service"] for record in at_root] == ["own", "own"]
    assert len(_lines(tmp_path / "llm_calls.jsonl")) == 1


def test_a_refused_log_dir_leaves_nothing_behind_for_exit(tmp_path: Path) -> None:
    """configure() refusing a log path raises ConfigError and nothing else: the handler it began to
    build (alive while the error's traceback is, as when it goes unhandled) prints no traceback when
    logging shuts down at exit."""
    (tmp_path / "afile").write_text("")
    script = (
        "import llm_ledger\n"
        "try:\n"
        "    llm_ledger.configure(log_dir='afile')\n"
        "except llm_ledger.ConfigError as exc:\n"
        "    kept = exc\n"
        "    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "refused\n", "")


def test_context_values_json_cannot_hold_directly_reach_the_loggers_handlers_as_json(
    default_client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler formatting records as text (``%(message)s``) gets JSON for an integer beyond 64 bits
    (a UUID's int as source_id) too, and for a dict keyed by tuples (its text), with no
    "--- Logging error ---" on stderr."""
    monkeypatch.setattr(logging, "raiseExceptions", False)  # a logging error would only be printed
    seen: list[str] = []
    errors: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                seen.append(self.format(record))
            except Exception:
                errors.append(record)

    handler = Keep()
    logger = logging.getLogger("llm_monitor")
    logger.addHandler(handler)
    try:
        with llm_ledger.track_llm_call(source_id=2**70, pages={1: "intro"}):
            default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with llm_ledger.track_llm_call(source_id="t", by_pair={("a", 1): 2}):
            default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    finally:
        logger.removeHandler(handler)
    assert errors == []
    first, second = (json.loads(message)["context"] for message in seen)
    assert (first["source_id"], first["pages"]) == (2**70, {"1": "intro"})
    assert second["by_pair"] == "{('a', 1): 2}"


def test_a_caller_changing_its_request_after_the_call_does_not_change_the_record(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """A record reads the request as the SDK sent it, not the caller's lists as changed since (a chat
    loop appends to its messages; a batching loop clears its embeddings input)."""
    llm_ledger.configure(log_dir=tmp_path)
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    default_client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    messages[1]["content"] = "x" * 1000
    messages.append({"role": "assistant", "content": "hi"})
    inputs = ["first text", "second"]
    default_client.embeddings.create(model="text-embedding-3-small", input=inputs)
    inputs.clear()
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "four"}]}]
    default_client.responses.create(model="gpt-4o-mini", input=items)
    items[0]["content"][0]["text"] = "changed"
    items.append({"role": "user", "content": "more"})
    llm_ledger.flush()
    chat, embeddings, responses = (line["request"] for line in _lines(tmp_path / "llm_calls.jsonl"))
    assert (chat["messages_count"], chat["system_prompt_length"], chat["user_prompt_length"]) == (2, 8, 11)
    assert embeddings["user_prompt_length"] == len("first text") + len("second")
    assert (responses["messages_count"], responses["user_prompt_length"]) == (1, 4)


def test_lens_totals_are_the_same_with_or_without_a_sink(
    default_client: openai.OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lens sums its calls the same with only the file or with a sink attached; each call is
    priced once, for its lens and its record."""
    llm_ledger.configure(log_dir=tmp_path)
    pricings = 0
    price = llm_ledger.LLMCallMonitor._price

    def counted(*args: Any) -> Any:
        nonlocal pricings
        pricings += 1
        return price(*args)

    monkeypatch.setattr(llm_ledger.LLMCallMonitor, "_price", counted)

    def run() -> dict[str, Any]:
        with llm_ledger.lens("totals", source_id="s") as run:
            default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            llm_ledger.flush()
            default_client.chat.completions.create(model="my-private-model", messages=HI)
            with pytest.raises(openai.APIStatusError):
                default_client.chat.completions.create(
                    model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "500"}
                )
        assert run.summary is not None
        return {k: v for k, v in run.summary.items() if "duration" not in k}

    file_only = run()
    llm_ledger.flush()
    assert pricings == 3
    with llm_ledger.testing.capture():
        with_a_sink = run()
    assert file_only == with_a_sink
    assert file_only["total_api_calls"] == 3 and file_only["errors"] == 1
    assert file_only["total_cost_usd"] > 0 and file_only["cost_complete"] is False
    llm_ledger.flush()
    lines = _lines(tmp_path / "llm_calls.jsonl")
    assert [line["event"] for line in lines] == ["llm_api_call"] * 3 + ["lens_summary"] + (
        ["llm_api_call"] * 3 + ["lens_summary"]
    )
    written = sum(line["cost"]["total_cost_usd"] or 0 for line in lines[:3])
    assert written == pytest.approx(lines[3]["summary"]["total_cost_usd"])


def _calls_in_a_child(base_url: str, calls: int) -> None:
    with openai.OpenAI(api_key=FAKE_KEY, base_url=base_url, max_retries=0) as client:
        instrumented = llm_ledger.instrument(client)
        for _ in range(calls):
            instrumented.chat.completions.create(model="gpt-4o-mini", messages=HI)
    # no flush(): multiprocessing's children leave through os._exit(), past atexit


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+
def test_a_forked_child_writes_its_own_records_and_not_its_parents(
    fake_openai: FakeOpenAI, tmp_path: Path, fresh_config: None
) -> None:
    """A child forked with records still queued (e.g. a prefork server's worker, a multiprocessing
    pool) writes its own records, even leaving through os._exit(), and never its parent's again."""
    import multiprocessing

    llm_ledger.configure(log_dir=tmp_path)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
        llm_ledger.instrument(client).chat.completions.create(model="gpt-4o-mini", messages=HI)
        children = [
            multiprocessing.get_context("fork").Process(
                target=_calls_in_a_child, args=(fake_openai.base_url, 2)
            )
            for _ in range(2)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0, 0]
    llm_ledger.flush()
    lines = _lines(tmp_path / "llm_calls.jsonl")
    processes = Counter(line["call_id"][:20] for line in lines)  # a process's ids share a prefix
    assert len(lines) == 5 and sorted(processes.values()) == [1, 2, 2]


def test_configure_again_changes_nothing_and_a_new_dir_switches_file(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """The same arguments keep the same handler; a new log_dir moves writing to the new file."""
    first = tmp_path / "a"
    llm_ledger.configure(log_dir=first)
    handler = _config._handler
    llm_ledger.configure(log_dir=first)
    assert _config._handler is handler
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.configure(log_dir=tmp_path / "b")
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    assert len(_lines(first / "llm_calls.jsonl")) == 1
    assert len(_lines(tmp_path / "b" / "llm_calls.jsonl")) == 1
    sinks = llm_ledger.get_monitor()._sinks
    files = [s for s in sinks if isinstance(getattr(s, "__self__", None), JsonlFileHandler)]
    assert _config._handler is not None and files == [_config._handler.write_record]
    assert not logging.getLogger("llm_monitor").handlers


def test_a_relative_log_dir_stays_where_it_was_when_the_process_changes_directory(
    default_client: openai.OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default log_dir, "logs", is relative: a service that changes directory after configure()
    (a daemon's chdir("/"), a worker's --workdir) keeps writing the one file, not a second one."""
    (tmp_path / "start").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    llm_ledger.configure(log_dir="logs")
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    monkeypatch.chdir(tmp_path / "later")
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    assert len(_lines(tmp_path / "start" / "logs" / "llm_calls.jsonl")) == 2
    assert not (tmp_path / "later" / "logs").exists()


def test_configure_again_reads_an_edited_price_file_as_it_reads_an_edited_budgets_file(
    default_client: openai.OpenAI, tmp_path: Path
) -> None:
    """configure(price_file=...) again after the file was edited (new negotiated rates) prices the next
    calls at the new rates, as an edited budgets file is read again; unedited, nothing changes."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  gpt-4o-mini: {input: 1, output: 1}\n")
    with capture_records() as records:
        llm_ledger.configure(log_dir=None, price_file=prices)
        table = llm_ledger.get_monitor().prices
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        llm_ledger.configure(log_dir=None, price_file=prices)
        assert llm_ledger.get_monitor().prices is table  # the same file, unedited: nothing changes
        prices.write_text("version: 1\nmodels:\n  gpt-4o-mini: {input: 1000, output: 1000}\n")
        llm_ledger.configure(log_dir=None, price_file=prices)
        default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    first, second = (call["cost"]["total_cost_usd"] for call in records.calls)
    tokens = records.calls[0]["usage"]["total_tokens"]
    assert first == pytest.approx(tokens / 1e6) and second == pytest.approx(tokens * 1000 / 1e6)


def test_environment_variables_configure_without_code(
    default_client: openai.OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM_LEDGER_LOG_DIR, LLM_LEDGER_PRICE_FILE and LLM_LEDGER_CAPTURE_CONTENT apply when not passed."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  gpt-4o-mini:\n    input: 1000\n    output: 1000\n")
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", str(tmp_path / "env-logs"))
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", str(prices))
    monkeypatch.setenv("LLM_LEDGER_CAPTURE_CONTENT", "true")
    settings = llm_ledger.configure()
    assert settings.capture_content is True
    default_client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    [line] = _lines(tmp_path / "env-logs" / "llm_calls.jsonl")
    usage = line["usage"]
    assert line["cost"]["total_cost_usd"] == pytest.approx(usage["total_tokens"] * 1000 / 1e6)
    assert line["content"]["messages"][0]["content"] == "PRIVATE-USER-TEXT"


@pytest.mark.parametrize("word", ["off", "none", "false", "0", "No"])
def test_a_path_variable_set_to_an_off_word_turns_its_feature_off(
    word: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """LLM_LEDGER_LOG_DIR=0 writes no file, as =off does; it used to create a directory named "0".
    LLM_LEDGER_PRICE_FILE=off prices from genai-prices alone; it was read as a file named "off"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", word)
    monkeypatch.setenv("LLM_LEDGER_BUDGETS", word)
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", word)
    settings = llm_ledger.configure()
    assert (settings.log_dir, _config._handler, llm_ledger.get_monitor().budgets) == (None, None, None)
    assert settings.price_file is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variable", sorted(_config._VARIABLES))
def test_an_empty_variable_is_an_error_naming_it(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """Every LLM_LEDGER_* variable set empty or blank (LLM_LEDGER_BUDGETS=${BUDGETS} in a CI template
    with BUDGETS unset) is a ConfigError naming it, what it takes and how to turn it off; an empty
    LLM_LEDGER_BUDGETS read as unset turned production budgets off without a word (fail open)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, "  " if "_B" in variable else "")
    with pytest.raises(llm_ledger.ConfigError) as raised:
        llm_ledger.configure()
    takes, unset = _config._VARIABLES[variable]
    assert f"environment variable {variable}=" in str(raised.value)
    assert str(raised.value).endswith(
        f" is empty (an unset variable in a template?); set it to {takes}; or unset it ({unset})"
    )
    assert (_config._settings, list(tmp_path.iterdir())) == (None, [])


def test_off_turns_off_every_variable_that_names_a_file_or_a_feature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """The fix an empty variable's error gives works: off turns off the log file, the price file, the
    budgets, the anomaly detection and the exporters (LLM_LEDGER_EXPORTERS=off was an unknown exporter)."""
    monkeypatch.chdir(tmp_path)
    for suffix in ("LOG_DIR", "PRICE_FILE", "BUDGETS", "ANOMALIES", "EXPORTERS"):
        monkeypatch.setenv(f"LLM_LEDGER_{suffix}", "off")
    settings = llm_ledger.configure()
    assert (settings.log_dir, settings.price_file, settings.budgets, settings.anomalies) == (None,) * 4
    assert (settings.exporters, list(tmp_path.iterdir())) == ((), [])


def test_a_path_from_the_environment_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """~/logs in a unit file or a .env (no shell to expand it) is the home directory's logs."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", "~/ledger-logs")
    assert llm_ledger.configure().log_dir == tmp_path / "ledger-logs"
    assert (tmp_path / "ledger-logs" / "llm_calls.jsonl").is_file()


def test_spaces_around_a_path_from_the_environment_are_not_part_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """A .env line or compose value with a space after the path (LLM_LEDGER_LOG_DIR=/var/log/app )
    names the directory without it, as " off" and " true " read as their words: a directory named
    with a trailing space, or one under a directory named " ", is no one's intent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", f" {tmp_path / 'ledger-logs'} ")
    assert llm_ledger.configure().log_dir == tmp_path / "ledger-logs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger-logs"]


def test_handle_sigterm_false_gives_the_application_its_own_handler_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """A SIGTERM handler the application installed before configure() is wrapped (so that the lines
    are written first) and still runs; configure(handle_sigterm=False) puts it back as it was."""
    # the wrapper run here switches this process's writers to a line at a time: back to batches after
    monkeypatch.setattr(_jsonl._Sigterm, "passed_on", False)
    ran: list[int] = []

    def own(signum: int, frame: object) -> None:
        ran.append(signum)

    signal.signal(signal.SIGTERM, own)  # fresh_config restores the handler before the test
    llm_ledger.configure(log_dir=tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)
    assert ran == [signal.SIGTERM]
    llm_ledger.configure(log_dir=tmp_path, handle_sigterm=False)
    assert signal.getsignal(signal.SIGTERM) is own


def test_arguments_win_over_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_config: None
) -> None:
    """An explicit argument overrides its environment variable."""
    monkeypatch.setenv("LLM_LEDGER_CAPTURE_CONTENT", "1")
    assert llm_ledger.configure(log_dir=None, capture_content=False).capture_content is False


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"log_dir": 42}, {}, "log_dir must be a non-empty path"),
        ({"log_dir": ""}, {}, "log_dir must be a non-empty path"),
        ({"capture_content": "yes"}, {}, "capture_content must be True or False, got 'yes'"),
        ({"stream_usage": 1}, {}, "stream_usage must be True or False"),
        ({"handle_sigterm": "no"}, {}, "handle_sigterm must be True or False, got 'no'"),
        ({}, {"LLM_LEDGER_HANDLE_SIGTERM": "never"}, "LLM_LEDGER_HANDLE_SIGTERM='never' is not a boolean"),
        ({"redact": "nope"}, {}, "redact must be a callable"),
        ({}, {"LLM_LEDGER_CAPTURE_CONTENT": "maybe"}, "LLM_LEDGER_CAPTURE_CONTENT='maybe' is not a boolean"),
        (
            {"log_dir": None, "price_file": "/nonexistent/prices.yaml"},
            {},
            "/nonexistent/prices.yaml: price file not found; create it (version: 1, and models:",
        ),
        (
            {"log_dir": None},
            {"LLM_LEDGER_PRICE_FILE": "/nonexistent/prices.yaml"},
            "/nonexistent/prices.yaml: price file not found; create it",
        ),
        (
            {"log_dir": None},
            {"LLM_LEDGER_PRICE_FILE": "/nonexistent/p.yaml"},
            "or unset LLM_LEDGER_PRICE_FILE to",
        ),
        ({"log_dir": None, "price_file": "/nonexistent/p.yaml"}, {}, "or pass price_file=None to use"),
        ({}, {"LLM_LEDGER_LOG_DIR": "/proc/no-such-dir"}, "in LLM_LEDGER_LOG_DIR='/proc/no-such-dir': "),
        (
            {},
            {"LLM_LEDGER_LOG_DIR": " "},
            "LLM_LEDGER_LOG_DIR=' ' is empty",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(
    kwargs: dict[str, Any],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    fresh_config: None,
) -> None:
    """Each bad argument or variable raises a ConfigError naming it, and changes nothing."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(llm_ledger.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        llm_ledger.configure(**kwargs)
    assert _config._settings is None


def test_a_misspelt_variable_is_named_with_the_closest_one(
    tmp_path: Path,
    fresh_config: None,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """An LLM_LEDGER_* variable configure() does not read is a warning naming it and the closest one
    (it was ignored without a word: the records went to ./logs, the budgets went unenforced), once per
    process; not an error, since a deployment may use the prefix for variables of its own."""
    monkeypatch.setattr(_config, "_warned", set())
    monkeypatch.setenv("LLM_LEDGER_LOGDIR", "/var/log/app")
    monkeypatch.setenv("LLM_LEDGER_BUDGETMODE", "raise")
    monkeypatch.setenv("LLM_LEDGER_IMAGE_TAG", "1.2")
    llm_ledger.configure(log_dir=tmp_path)
    llm_ledger.configure(log_dir=tmp_path)
    warnings = [r.getMessage() for r in internal_log.records if r.levelno == logging.WARNING]
    known = ", ".join(_config._VARIABLES)
    assert warnings == [
        f"llm-ledger: environment variable LLM_LEDGER_BUDGETMODE is not one llm-ledger reads (did you mean "
        f"'LLM_LEDGER_BUDGET_MODE'?), so it changes nothing; it reads {known}",
        f"llm-ledger: environment variable LLM_LEDGER_IMAGE_TAG is not one llm-ledger reads, so it changes "
        f"nothing; it reads {known}",
        f"llm-ledger: environment variable LLM_LEDGER_LOGDIR is not one llm-ledger reads (did you mean "
        f"'LLM_LEDGER_LOG_DIR'?), so it changes nothing; it reads {known}",
    ]


def test_unwritable_log_dir_is_a_clear_error(tmp_path: Path, fresh_config: None) -> None:
    """A log_dir that cannot hold the file raises ConfigError at configure(), not at the first call."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(llm_ledger.ConfigError, match="cannot write the log file"):
        llm_ledger.configure(log_dir=blocker / "logs")


def test_every_variable_the_docs_name_is_one_configure_reads(
    fresh_config: None, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """The variables the README and docs tell operators to set are exactly those configure() reads, so
    none of them is ever named as misspelt, and none it reads goes undocumented."""
    root = Path(__file__).resolve().parent.parent
    documented = set()
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        documented |= set(re.findall(r"LLM_LEDGER_[A-Z_]+", doc.read_text()))
    assert documented == set(_config._VARIABLES)
    monkeypatch.setattr(_config, "_warned", set())
    for variable in documented:
        monkeypatch.setenv(variable, "off")
    _config._warn_unknown_variables()
    assert not [r for r in internal_log.records if "is not one llm-ledger reads" in r.getMessage()]


def test_the_default_log_dir_refused_is_named_as_the_default(
    tmp_path: Path, fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither log_dir= nor LLM_LEDGER_LOG_DIR, a ./logs that cannot be the log directory (a
    service started in / or in a read-only directory) is named as the default, in the directory it was
    looked for in, with both ways to choose another: the error named LLM_LEDGER_LOG_DIR='logs', a
    variable nobody had set."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").write_text("")
    with pytest.raises(llm_ledger.ConfigError) as raised:
        llm_ledger.configure()
    assert str(raised.value) == (
        f"cannot write the log file: the default log_dir 'logs' (in {str(tmp_path)!r}) is a file, not a "
        "directory; set log_dir= or LLM_LEDGER_LOG_DIR to the directory that holds llm_calls.jsonl"
    )
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the current directory deleted: ./logs cannot be made
    with pytest.raises(llm_ledger.ConfigError) as raised:
        llm_ledger.configure()
    assert str(raised.value) == (
        "cannot write the log file in the default log_dir 'logs': No such file or directory; choose a "
        "writable directory with log_dir= or LLM_LEDGER_LOG_DIR (or LLM_LEDGER_LOG_DIR=off to write no file)"
    )
    assert _config._settings is None


def test_a_log_dir_that_is_a_fifo_says_so_too(tmp_path: Path, fresh_config: None) -> None:
    """log_dir pointing at a FIFO (or a device) is named as no directory either, not "File exists"."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(llm_ledger.ConfigError, match=r"log_dir='.*pipe' is a file, not a directory; log_dir"):
        llm_ledger.configure(log_dir=fifo)
    assert _config._settings is None


def test_a_log_dir_that_is_a_file_says_so(
    tmp_path: Path, fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_dir pointing at a file (the log file itself, say) names it as a file, not "File exists"."""
    log_file = tmp_path / "llm_calls.jsonl"
    log_file.write_text("")
    with pytest.raises(
        llm_ledger.ConfigError,
        match=r"log_dir='.*llm_calls\.jsonl' is a file, not a directory; log_dir is the directory that holds",
    ):
        llm_ledger.configure(log_dir=log_file)
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", str(log_file))  # from the environment: named so
    with pytest.raises(llm_ledger.ConfigError, match=r"LLM_LEDGER_LOG_DIR='.*llm_calls\.jsonl' is a file"):
        llm_ledger.configure()
    assert _config._settings is None


def test_content_capture_records_text_with_redaction_and_never_the_key(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """capture_content=True records messages and output through the redact hook; the API key never."""
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, capture_content=True, redact=lambda text: text.replace("PRIVATE", "[P]")
    )
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    with llm_ledger.testing.capture(monitor) as captured, client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"PRIVATE text with key {FAKE_KEY}"}]
        )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    ok, failed = captured.calls
    assert ok["content"]["messages"][0]["content"] == "[P] text with key [REDACTED]"
    assert ok["content"]["output"].startswith("Summary:")
    assert failed["error"]["message"].startswith("Error code: 400")
    assert FAKE_KEY not in json.dumps(captured.records)


def test_captured_text_of_a_str_subclass_is_redacted_too(fake_openai: FakeOpenAI) -> None:
    """Message text given as a str subclass (a str-Enum member, a template's string type) goes
    through the redact hook and loses the API key, as plain text does."""

    class Text(str):
        pass

    monitor = llm_ledger.LLMCallMonitor(
        logger=None, capture_content=True, redact=lambda text: text.replace("PRIVATE", "[P]")
    )
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    content = Text(f"PRIVATE text with key {FAKE_KEY}")
    with llm_ledger.testing.capture(monitor) as captured, client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
    [call] = captured.calls
    assert call["content"]["messages"][0]["content"] == "[P] text with key [REDACTED]"


def test_content_is_off_by_default_on_every_record_kind(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """With default settings no prompt or output text appears in any record."""
    with llm_ledger.testing.capture(monitor) as captured, monitor.lens("k"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
        client.embeddings.create(model="text-embedding-3-small", input="PRIVATE-USER-TEXT")
        client.responses.create(model="gpt-4o-mini", input="PRIVATE-USER-TEXT")
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    dumped = json.dumps(captured.records)
    assert "PRIVATE" not in dumped and "Summary:" not in dumped and FAKE_KEY not in dumped
    assert len(captured.calls) == 5 and len(captured.lenses) == 1


def test_records_are_written_at_interpreter_exit(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """A process that exits without flush() still leaves every record in the file."""
    script = textwrap.dedent(
        f"""
        import openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        with llm_ledger.lens("exit_test"):
            for _ in range(50):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        """
    )
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=60)
    lines = _lines(tmp_path / "llm_calls.jsonl")
    assert len(lines) == 51 and lines[-1]["summary"]["total_api_calls"] == 50


def test_public_api_is_complete_and_sorted() -> None:
    """__all__ lists every public name of the package, sorted."""
    public = {name for name in dir(llm_ledger) if not name.startswith("_")} - {
        "annotations",
        "exporters",
        "testing",
        "report",  # public submodules, set on the package once imported (llm_ledger.report)
        "analysis",
        "loading",
    }
    assert set(llm_ledger.__all__) == public
    assert list(llm_ledger.__all__) == sorted(llm_ledger.__all__)


HOST = llm_ledger.HostPrice("openrouter")


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("LLMCallMonitor", {"capture_content": "yes"}, "capture_content must be True or False, got 'yes'"),
        ("LLMCallMonitor", {"stream_usage": 1}, "stream_usage must be True or False, got 1"),
        ("LLMCallMonitor", {"redact": "[redacted]"}, "redact must be a callable taking and returning a str"),
        ("LLMCallMonitor", {"logger": logging.getLogger("x")}, "logger must be a logger name or None, got <"),
        ("LLMCallMonitor", {"prices": {"gpt-4o": 1}}, "prices must be a PriceTable or the path of a price"),
        (
            "AnomalyDetector",
            {"config": "k=5"},
            "takes an AnomalyConfig (or None for the defaults), got 'k=5'",
        ),
        (
            "AnomalyDetector",
            {"on_anomaly": "log"},
            "on_anomaly must be a callable taking a record, got 'log'",
        ),
        (
            "BudgetGuard",
            {"budgets": {}, "mode": "fail"},
            "budget_mode must be one of 'warn', 'raise', got 'fail'",
        ),
        (
            "BudgetGuard",
            {"budgets": {}, "on_exceeded": "email"},
            "on_budget_exceeded must be a callable taking",
        ),
        ("PriceTable", {"hosts": {11434: HOST}}, "price hosts: a host pattern must be a string, got 11434"),
        (
            "PriceTable",
            {"hosts": {"localhost": "openrouter"}},
            "hosts['localhost']: expected a HostPrice, got 'o",
        ),
        (
            "PriceTable",
            {"hosts": {" ": HOST}},
            "price hosts[' ']: an empty host pattern; expected a host name",
        ),
        ("HostPrice", {"rates": 0.5}, "HostPrice.rates: expected a Rates or None, got 0.5"),
        ("HostPrice", {"provider": " "}, "HostPrice.provider: expected a non-empty name or None, got ' '"),
    ],
)
def test_a_public_object_built_with_a_wrong_argument_says_which(
    kind: str, kwargs: dict[str, Any], message: str
) -> None:
    """The public classes built directly (not through ``configure`` or a file) refuse an argument of
    the wrong kind at once, naming it and the value given."""
    with pytest.raises(llm_ledger.ConfigError, match=re.escape(message)):
        getattr(llm_ledger, kind)(**kwargs)


def test_a_sink_that_cannot_be_called_is_refused_when_added(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """A sink that is not callable (a handler instead of its write_record, a path), or one sink given
    as ``sinks=`` in place of a list of them, is a ConfigError when it is given, not a failure on
    every record; the monitor keeps its good sinks."""
    handler = llm_ledger.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    with pytest.raises(llm_ledger.ConfigError, match=r"sinks: .*JsonlFileHandler.* is not callable"):
        llm_ledger.LLMCallMonitor(logger=None, sinks=[handler])  # type: ignore[list-item]
    with pytest.raises(
        llm_ledger.ConfigError,
        match=r"sinks must be a list of functions .*, got <bound method .*; for one sink, pass sinks=\[",
    ):
        llm_ledger.LLMCallMonitor(logger=None, sinks=handler.write_record)  # type: ignore[arg-type]
    got: list[Any] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[got.append])
    with pytest.raises(llm_ledger.ConfigError, match=r"add_sink\(\): .*'logs/llm_calls.jsonl' is not"):
        monitor.add_sink("logs/llm_calls.jsonl")  # type: ignore[arg-type]
    with monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url)) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    handler.close()
    assert [record["event"] for record in got] == ["llm_api_call"]


def test_a_monitor_of_its_own_writes_a_file_through_the_handlers_sink(
    fake_openai: Any, tmp_path: Path
) -> None:
    """``LLMCallMonitor(sinks=[JsonlFileHandler(path).write_record])`` writes the same lines as
    ``configure()``'s file: one per call and per lens run."""
    handler = JsonlFileHandler(tmp_path / "own.jsonl")
    try:
        monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
        with openai.OpenAI(api_key="sk-test-own-monitor", base_url=fake_openai.base_url) as raw:
            client = monitor.instrument(raw)
            with monitor.lens("own"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        handler.flush()
        lines = _lines(tmp_path / "own.jsonl")
        assert [line["event"] for line in lines] == ["llm_api_call", "lens_summary"]
        assert lines[0]["usage"]["total_tokens"] and lines[1]["summary"]["total_api_calls"] == 1
    finally:
        handler.close()


# a fresh process, told which thread loads genai-prices' data (and how many times) by an import hook
_PRICE_LOADS = textwrap.dedent(
    """
    import importlib.abc, json, os, sys, threading
    loads = []
    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "genai_prices.data":
                loads.append(threading.current_thread().name)
    sys.meta_path.insert(0, Watch())
    import openai, llm_ledger
    from llm_ledger.testing import FakeOpenAI
    HI = [{"role": "user", "content": "hi"}]
    with FakeOpenAI() as fake:
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url=fake.base_url, max_retries=0))
        llm_ledger.configure(log_dir=None, exporters=None)
        nothing = list(loads)  # nothing records a cost yet: nothing is loaded
        llm_ledger.configure(log_dir=sys.argv[1])
        if sys.argv[2] == "fork":  # a worker forked while the data loads (gunicorn --preload)
            pid = os.fork()
            if pid == 0:
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
        if sys.argv[2] == "wait":
            for thread in threading.enumerate():
                if thread.name == "llm-ledger-prices":
                    thread.join()
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    llm_ledger.flush()
    print(json.dumps({"nothing": nothing, "loads": loads}))
    """
)


@pytest.mark.parametrize("when", ["wait", "call at once", "fork"])
def test_configure_loads_the_price_data_off_the_callers_thread_once(tmp_path: Path, when: str) -> None:
    """configure() with a log file loads genai-prices' data on a thread of its own, so that the first
    priced call does not wait for it; a call that comes first waits for the same load (the data is
    loaded once), a worker forked meanwhile prices its calls, and a configure() that records nothing
    loads nothing."""
    done = warm_python.run(
        [sys.executable, "-c", _PRICE_LOADS, str(tmp_path), when],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["nothing"] == []
    assert len(seen["loads"]) == 1, seen
    if when == "wait":
        assert seen["loads"] != ["MainThread"], seen
    calls = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and calls[0]["cost"]["total_cost_usd"] > 0


@pytest.mark.parametrize(
    "variable",
    ["EXPORTERS", "ANOMALIES", "BUDGET_MODE", "CAPTURE_CONTENT", "STREAM_USAGE", "HANDLE_SIGTERM",
     "LOG_DIR", "PRICE_FILE", "BUDGETS"],
)  # fmt: skip
def test_a_key_put_in_the_wrong_variable_is_never_printed(
    variable: str, tmp_path: Path, fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator who pastes the OpenAI key into an LLM_LEDGER_* variable gets an error naming the
    variable, not quoting the key (it goes to the service's logs), and no directory named after it: the
    error quoted the key whole, and LLM_LEDGER_LOG_DIR made ./sk-proj-.../ for the log file."""
    key = "sk-proj-" + "Ab3dEf5hIj7lMn9pQr" * 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"LLM_LEDGER_{variable}", key)
    with pytest.raises(llm_ledger.ConfigError) as raised:
        llm_ledger.configure()
    message = str(raised.value)
    assert f"LLM_LEDGER_{variable}" in message
    assert "<62 characters not shown: they look like a credential>" in message
    assert key[8:20].lower() not in message.lower()
    assert list(tmp_path.iterdir()) == []
    assert _config._settings is None


def test_a_long_bad_value_is_quoted_cut_short(fresh_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value that is no credential is quoted, cut to 40 characters: enough to recognise it."""
    monkeypatch.setenv("LLM_LEDGER_BUDGET_MODE", "warn-only-in-staging-and-raise-in-production-please")
    with pytest.raises(llm_ledger.ConfigError) as raised:
        llm_ledger.configure(log_dir=None)
    assert str(raised.value) == (
        "LLM_LEDGER_BUDGET_MODE must be one of 'warn', 'raise', got 'warn-only-in-staging-and-raise-in-prod…"
    )
