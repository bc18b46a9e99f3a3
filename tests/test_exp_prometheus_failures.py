"""PrometheusSink when a series cannot be updated: logged once per distinct error, counted in
``llm_ledger_dropped_records_total``, every other series still counted."""

from __future__ import annotations

import errno
import logging
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger.exporters import PrometheusSink
from llm_ledger.testing import FakeOpenAI
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import by_labels, samples, total

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hi"}]


def _failing_for(sink: PrometheusSink, lens: str, exc: BaseException) -> None:
    """Make every update of ``lens``'s call series raise ``exc`` (a full disk under a multiprocess
    directory, a bug in a newer prometheus-client), as the metrics would."""
    move = sink._move

    def failing(children: tuple[Any, ...], sums: list[Any]) -> None:
        if any(children is sink._children.get(k) for k in sink._children if k[0] == lens):
            raise exc
        move(children, sums)

    sink._move = failing  # type: ignore[method-assign]


def test_a_failing_series_is_logged_once_counted_as_dropped_and_the_others_keep_counting(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten flushes of a series whose update raises give one error on llm_ledger.internal naming the
    series and where the losses are counted; its calls are counted as dropped; other series count."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
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
    }
    logged = [r for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert logged[0].exc_info is not None and "No space left on device" in message
    assert "lens='broken'" in message and "model='gpt-4o-mini'" in message, message
    assert "llm_ledger_dropped_records_total" in message and "not logged again" in message, message


def test_each_distinct_error_is_logged_once(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A second kind of failure is news, and is logged too (once)."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
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
