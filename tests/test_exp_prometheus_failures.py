"""PrometheusSink when a series cannot be updated: logged once per distinct error, counted in
``llm_ledger_dropped_records_total``, every other series still counted."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger.exporters import PrometheusSink
from llm_ledger.testing import capture
from tests.conftest import Sdk
from tests.exporter_helpers import by_labels, samples, total

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hi"}]


def _failing_for(sink: PrometheusSink, lens: str, exc: BaseException) -> None:
    """Make every update of the call count of ``lens``'s calls raise ``exc`` (a full disk under a
    multiprocess directory, a bug in a newer prometheus-client), as prometheus-client's series would."""
    series = sink.calls.labels(lens, "gpt-4o-mini", "openai", "chat", "ok", "default")

    def failing(amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        raise exc

    series.inc = failing  # type: ignore[method-assign]  # this one series' method, replaced


def test_a_failing_series_is_logged_once_counted_as_dropped_and_the_others_keep_counting(
    sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten flushes of a series whose update raises give one error on llm_ledger.internal naming the
    series and where the losses are counted; its calls are counted as dropped; other series count."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = sdk(monitor)
    _failing_for(sink, "broken", OSError(errno.ENOSPC, "No space left on device"))
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for _ in range(10):
        for lens in ("fine", "broken"):
            with monitor.lens(lens):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        sink.flush()
    found = samples(generate_latest(registry).decode())
    assert total(found, "llm_ledger_calls_total", lens="fine") == 10
    assert total(found, "llm_ledger_calls_total", lens="broken") == 0
    assert by_labels(found, "llm_ledger_lens_runs_total", "lens") == {("fine",): 10.0, ("broken",): 10.0}
    assert by_labels(found, "llm_ledger_dropped_records_total", "event") == {
        ("llm_api_call",): 10.0,
        ("lens_summary",): 0.0,
        ("lens_anomaly",): 0.0,
        ("budget_exceeded",): 0.0,
    }
    logged = [r for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert logged[0].exc_info is not None and "No space left on device" in message
    assert "lens='broken'" in message and "model='gpt-4o-mini'" in message, message
    assert "llm_ledger_dropped_records_total" in message and "not logged again" in message, message


def test_each_distinct_error_is_logged_once(sdk: Sdk, caplog: pytest.LogCaptureFixture) -> None:
    """A second kind of failure is news, and is logged too (once)."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = sdk(monitor)
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for exc in (
        OSError(errno.ENOSPC, "No space left on device"),
        ValueError("bad value"),
        ValueError("bad value"),
    ):
        _failing_for(sink, "broken", exc)
        for _ in range(3):
            with monitor.lens("broken"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            sink.flush()
    logged = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(logged) == 2, logged
    assert "No space left on device" in logged[0] and "bad value" in logged[1]
    found = samples(generate_latest(registry).decode())
    assert total(found, "llm_ledger_dropped_records_total", event="llm_api_call") == 9


WORKER = textwrap.dedent(
    """
    import json, os, shutil, sys
    from llm_ledger.exporters import PrometheusSink
    sink = PrometheusSink()
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # a clean-up that took it from under the worker
    for line in open(sys.argv[1]):
        sink(json.loads(line))
    """
)


def test_a_multiprocess_directory_removed_under_a_worker_is_logged_once_not_at_every_call(
    sdk: Sdk, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR deleted after the sink started: each call's update fails (the files of
    its histograms cannot be made), and the worker says so once on stderr, not once per call."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = sdk(monitor)
    with capture(monitor) as records:
        for model in ("gpt-4o-mini", "gpt-4o"):
            for _ in range(10):
                client.chat.completions.create(model=model, messages=HI)
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "multiproc").mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(lines)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("PrometheusSink could not update") == 1, done.stderr
    assert "FileNotFoundError" in done.stderr and "llm_ledger_dropped_records_total" in done.stderr
