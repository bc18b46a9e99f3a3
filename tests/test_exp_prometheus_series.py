"""PrometheusSink's series as an operator reads them: latency by status, unpriced calls with the cost
counter's labels, and token-type series only where a call counted some."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger.exporters import PrometheusSink
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import UNPRICED_MODEL, Samples, by_labels, label_names, samples

pytestmark = pytest.mark.sdk_independent

HI: Any = [{"role": "user", "content": "hi"}]


def _exposed(registry: CollectorRegistry) -> Samples:
    generate_latest(registry)  # the scrape that shows new series at 0
    return samples(generate_latest(registry).decode())


def _client(monitor: llm_ledger.LLMCallMonitor, server: FakeOpenAI) -> openai.OpenAI:
    return monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0))


def test_call_duration_is_split_by_status_so_failures_stay_out_of_successful_latency(
    fake_openai: FakeOpenAI,
) -> None:
    """A failed call's duration is observed under status="error", an ok call's under status="ok": the
    latency of successful calls is the status="ok" series alone."""
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry)])
    client = _client(monitor, fake_openai)
    with capture(monitor) as records:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "500"})
    client.close()
    found = _exposed(registry)
    assert label_names(found, "llm_ledger_call_duration_seconds_count") == {
        frozenset({"lens", "model", "operation", "status"})
    }
    seconds = {c["status"]: c["timing"]["duration_ms"] / 1000 for c in records.calls}
    assert by_labels(found, "llm_ledger_call_duration_seconds_count", "status") == {("ok",): 1, ("error",): 1}
    sums = by_labels(found, "llm_ledger_call_duration_seconds_sum", "status")
    assert sums == {(s,): pytest.approx(v) for s, v in seconds.items()}
