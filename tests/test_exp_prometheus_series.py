"""PrometheusSink's series as an operator reads them: latency by status, unpriced calls with the cost
counter's labels, and token-type series only where a call counted some."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger.exporters import PrometheusSink
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import UNPRICED_MODEL, Samples, by_labels, label_names, metric_points, samples

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
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "500"}
            )
    client.close()
    found = _exposed(registry)
    assert label_names(found, "llm_ledger_call_duration_seconds_count") == {
        frozenset({"lens", "model", "operation", "status"})
    }
    seconds = {c["status"]: c["timing"]["duration_ms"] / 1000 for c in records.calls}
    assert by_labels(found, "llm_ledger_call_duration_seconds_count", "status") == {("ok",): 1, ("error",): 1}
    sums = by_labels(found, "llm_ledger_call_duration_seconds_sum", "status")
    assert sums == {(s,): pytest.approx(v) for s, v in seconds.items()}


def test_unpriced_calls_are_counted_with_the_cost_counters_labels_by_both_sinks(
    fake_openai: FakeOpenAI,
) -> None:
    """A call billed without a price is counted under the lens, model, provider and service tier its
    cost would have had, so that the lens whose spend is short can be told; the OTel sink counts the
    same calls under llm_ledger.cost's attributes."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from llm_ledger.exporters import OTelSink
    from tests.exporter_helpers import workload

    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    otel = OTelSink(meter_provider=MeterProvider(metric_readers=[reader]))
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry), otel])
    with capture(monitor) as records:
        workload(monitor, fake_openai)
    found = _exposed(registry)
    assert label_names(found, "llm_ledger_unpriced_calls_total") == label_names(
        found, "llm_ledger_cost_usd_total"
    )
    unpriced = [c for c in records.calls if c["cost"]["total_cost_usd"] is None and c["status"] == "ok"]
    assert [c["request"]["model"] for c in unpriced] == [UNPRICED_MODEL]
    counted = by_labels(found, "llm_ledger_unpriced_calls_total", "lens", "model", "provider", "service_tier")
    assert {k: v for k, v in counted.items() if v} == {("research", UNPRICED_MODEL, "openai", "default"): 1.0}

    points = metric_points(reader)
    (point,) = points["llm_ledger.unpriced_calls"]
    assert point.value == 1
    assert point.attributes["llm_ledger.lens"] == "research"
    assert point.attributes["gen_ai.request.model"] == UNPRICED_MODEL
    cost_keys = {frozenset(p.attributes) for p in points["llm_ledger.cost"]}
    assert frozenset(point.attributes) in cost_keys  # the attributes a priced call's cost has


def test_a_token_type_or_unpriced_series_exists_only_once_a_call_counted_some(
    fake_openai: FakeOpenAI,
) -> None:
    """Every llm_ledger_tokens_total and llm_ledger_unpriced_calls_total series has counted something:
    no series of zeros for an embedding's output, a text model's audio or a priced model's unpriced
    calls. A token type a label set counts for the first time is scraped at 0 before its value, as
    any new series is, so that increase() counts it."""
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry)])
    from tests.exporter_helpers import workload

    with capture(monitor) as records:
        workload(monitor, fake_openai)
    found = _exposed(registry)
    tokens = {ls: v for (n, ls), v in found.items() if n == "llm_ledger_tokens_total"}
    assert tokens and all(tokens.values()), {dict(ls)["token_type"]: v for ls, v in tokens.items() if not v}
    kinds = {dict(ls)["token_type"] for ls in tokens}
    assert kinds == {"input", "output", "cached", "reasoning"}  # the workload has no cache writes or audio
    embeddings = {dict(ls)["token_type"] for ls in tokens if dict(ls)["operation"] == "embeddings"}
    assert embeddings == {"input"}
    unpriced = {ls: v for (n, ls), v in found.items() if n == "llm_ledger_unpriced_calls_total"}
    assert [dict(ls)["model"] for ls in unpriced] == [UNPRICED_MODEL]
    assert sum(c["usage"]["prompt_tokens"] or 0 for c in records.calls) == sum(
        v for ls, v in tokens.items() if dict(ls)["token_type"] == "input"
    )

    client = _client(monitor, fake_openai)
    with monitor.lens("summary"):  # a label set the workload made: its first cache writes
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-cache-write-tokens": "5"}
        )
    client.close()
    cache_write = ("llm_ledger_tokens_total", "cache_write")
    first = samples(generate_latest(registry).decode())
    second = samples(generate_latest(registry).decode())
    for scrape, want in ((first, 0.0), (second, 5.0)):
        values = [v for (n, ls), v in scrape.items() if (n, dict(ls).get("token_type")) == cache_write]
        assert values == [want]


def test_anomaly_series_exist_only_for_the_metrics_a_monitor_judges(fake_openai: FakeOpenAI) -> None:
    """With anomaly detection off (the default) a lens has no llm_ledger_lens_anomalies_total series
    (three per lens that would stay at 0); once its monitor judges lens runs, the lens has a series at
    0 for each metric judged, before any anomaly, so that increase() counts the first one."""
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry)])
    client = _client(monitor, fake_openai)
    for lens in ("digest", "summary"):
        with monitor.lens(lens):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert by_labels(_exposed(registry), "llm_ledger_lens_runs_total", "lens") == {
        ("digest",): 1,
        ("summary",): 1,
    }
    assert by_labels(_exposed(registry), "llm_ledger_lens_anomalies_total", "lens", "metric") == {}
    monitor.anomalies = llm_ledger.AnomalyDetector(
        llm_ledger.AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens", "duration_ms"))
    )
    with monitor.lens("digest"):  # a lens the sink has seen before detection was on
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.close()
    assert by_labels(_exposed(registry), "llm_ledger_lens_anomalies_total", "lens", "metric") == {
        ("digest", "total_tokens"): 0,
        ("digest", "duration_ms"): 0,
    }


def test_anomaly_series_follow_the_lens_record_to_a_sink_on_another_thread(fake_openai: FakeOpenAI) -> None:
    """A lens record judged for anomalies says which metrics were judged (``anomaly_metrics``), so a
    PrometheusSink fed by a sink that hands records to a worker thread (or reads them back from the
    file) still makes the lens's anomaly series at 0; a record of a monitor judging none says nothing."""
    registry = CollectorRegistry()
    prometheus = PrometheusSink(registry)
    handed: list[Any] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handed.append])
    monitor.anomalies = llm_ledger.AnomalyDetector(llm_ledger.AnomalyConfig(metrics=("total_tokens",)))
    client = _client(monitor, fake_openai)
    with monitor.lens("digest"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    monitor.anomalies = None
    with monitor.lens("summary"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.close()
    lenses = [r for r in handed if r["event"] == "lens_summary"]
    assert [r.get("anomaly_metrics") for r in lenses] == [["total_tokens"], None]
    worker = threading.Thread(target=lambda: list(map(prometheus, handed)))
    worker.start()
    worker.join()
    assert by_labels(_exposed(registry), "llm_ledger_lens_anomalies_total", "lens", "metric") == {
        ("digest", "total_tokens"): 0
    }


def test_an_anomalous_first_judged_run_is_exported_at_0_first_by_both_sinks(fake_openai: FakeOpenAI) -> None:
    """A process whose baselines were rebuilt from the log (a restart, a new pod) and whose first run of
    a lens is anomalous: its anomaly series is scraped at 0 first and at 1 from the next scrape (and
    its OpenTelemetry point collected at 0, then 1), so that the documented alert on increase() fires
    on it, not only from the lens's second anomaly on."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from llm_ledger import AnomalyConfig, AnomalyDetector
    from llm_ledger.exporters import OTelSink

    detector = AnomalyDetector(AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",)))

    def run(monitor: llm_ledger.LLMCallMonitor, words: int) -> None:
        monitor.anomalies = detector
        with _client(monitor, fake_openai) as client, monitor.lens("digest"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-completion-words": str(words)}
            )

    before = llm_ledger.LLMCallMonitor(logger=None)  # the process before the restart: its runs in the log
    for _ in range(5):
        run(before, 5)
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    otel = OTelSink(meter_provider=MeterProvider(metric_readers=[reader]))
    run(llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry), otel]), 400)

    def otel_points() -> list[Any]:
        return [point.value for point in metric_points(reader).get("llm_ledger.lens_anomalies", [])]

    scrapes = [samples(generate_latest(registry).decode()) for _ in range(2)]
    series = [by_labels(found, "llm_ledger_lens_anomalies_total", "lens", "metric") for found in scrapes]
    assert series == [{("digest", "total_tokens"): 0.0}, {("digest", "total_tokens"): 1.0}]
    assert [otel_points(), otel_points()] == [[0], [1]]
