"""The served service tier and the cache-write and audio token counts in both exporters: OTelSink's
spans and metrics over OTLP/HTTP (both naming modes), PrometheusSink's series through a real
Prometheus, and a server answering with more tiers than the cap folding into ``other``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger.exporters import OTelSink, PrometheusSink, start_metrics_server
from llm_ledger.exporters._prometheus import MAX_TIERS
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import Receiver, SharedPrometheus, attribute_value, by_labels, samples, wait

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hello there"}]
TIER = "openai.response.service_tier"


def tiered_calls(monitor: llm_ledger.LLMCallMonitor, server: FakeOpenAI) -> None:
    """A call on each tier (none asked: the server answers ``default``), one writing to the prompt
    cache, an audio model's call with audio in and out, a Responses call, and embeddings (no tier)."""
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0))
    with monitor.lens("tiers"):
        client.chat.completions.create(model="gpt-5-mini", messages=HI)
        client.chat.completions.create(
            model="gpt-5-mini", messages=HI, service_tier="flex",
            extra_headers={"x-fake-cache-write-tokens": "5", "x-fake-cached-tokens": "2"},
        )  # fmt: skip
        client.chat.completions.create(
            model="gpt-audio", messages=HI, service_tier="priority",
            extra_headers={"x-fake-prompt-audio-tokens": "3", "x-fake-completion-audio-tokens": "9"},
        )  # fmt: skip
        client.responses.create(
            model="gpt-5-mini", input="think", service_tier="flex",
            extra_headers={"x-fake-cache-write-tokens": "3"},
        )  # fmt: skip
    client.embeddings.create(model="text-embedding-3-small", input=["a"])
    client.close()


class Exported:
    """What an OTelSink sent over OTLP/HTTP, decoded: call spans by call id, metric points by name."""

    def __init__(self) -> None:
        self.spans: dict[str, dict[str, Any]] = {}
        self.lenses: dict[str, dict[str, Any]] = {}  # lens spans by lens key
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = {}


@pytest.fixture
def otlp() -> Iterator[Any]:
    """``otlp(feed)``: an OTelSink exporting over OTLP/HTTP to a receiver on loopback; ``feed(sink)``
    runs what it should see; the decoded spans and metric points come back."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{receiver.server_port}"

    def export(feed: Any) -> Exported:
        receiver.bodies.clear()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        )
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), 60_000)
        meter_provider = MeterProvider(metric_readers=[reader])
        try:
            feed(OTelSink(tracer_provider, meter_provider))
            tracer_provider.force_flush()
            meter_provider.force_flush()
        finally:
            tracer_provider.shutdown()
            meter_provider.shutdown()
        out = Exported()
        for body in receiver.bodies.get("/v1/traces", []):
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: attribute_value(a.value) for a in span.attributes}
                        if "llm_ledger.call_id" in attributes:
                            out.spans[attributes["llm_ledger.call_id"]] = attributes
                        elif "llm_ledger.lens.calls" in attributes:
                            out.lenses[attributes["llm_ledger.lens_key"]] = attributes
        # each export holds the cumulative sums (force_flush, then shutdown): the last one has them all
        for body in receiver.bodies.get("/v1/metrics", [])[-1:]:
            for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attributes = {a.key: attribute_value(a.value) for a in point.attributes}
                            out.points.setdefault(metric.name, []).append((attributes, point))
        return out

    yield export
    receiver.shutdown()
    receiver.server_close()


def _recorded(fake_openai: FakeOpenAI, otlp: Any) -> tuple[Captured, Exported]:
    records: list[Captured] = []

    def feed(sink: OTelSink) -> None:
        monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
        with capture(monitor) as captured:
            tiered_calls(monitor, fake_openai)
        records.append(captured)

    exported = otlp(feed)
    return records[0], exported


def test_spans_carry_the_served_tier_and_the_cache_write_and_audio_counts(
    fake_openai: FakeOpenAI, otlp: Any
) -> None:
    """Each call span has openai.response.service_tier as the answer named it (none on embeddings),
    gen_ai.usage.cache_creation.input_tokens (v1.41.1's name) and the audio counts where there are
    some, equal to its record."""
    records, exported = _recorded(fake_openai, otlp)
    calls = records.calls
    assert [c["response"]["service_tier"] for c in calls] == ["default", "flex", "priority", "flex", None]
    for call in calls:
        span = exported.spans[call["call_id"]]
        assert span.get(TIER) == call["response"]["service_tier"]
        assert span["gen_ai.usage.cache_creation.input_tokens"] == call["usage"]["cache_write_tokens"]
        assert "gen_ai.usage.cache_write.input_tokens" not in span  # the newest name: only on opt-in
    flex, audio, responses = (exported.spans[c["call_id"]] for c in calls[1:4])
    assert flex["gen_ai.usage.cache_creation.input_tokens"] == 5
    assert flex["gen_ai.usage.cache_read.input_tokens"] == 2
    assert responses["gen_ai.usage.cache_creation.input_tokens"] == 3
    assert (audio["gen_ai.usage.audio.input_tokens"], audio["gen_ai.usage.audio.output_tokens"]) == (3, 9)
    assert audio["gen_ai.usage.input_tokens"] == calls[2]["usage"]["prompt_tokens"] > 3  # audio and text
    assert not any("gen_ai.usage.audio.input_tokens" in exported.spans[c["call_id"]] for c in calls[:2])


@pytest.mark.parametrize("latest", [False, True], ids=["v1.41.1", "latest_experimental"])
def test_spans_carry_the_requested_tier_and_lens_spans_the_cache_write_and_audio_totals(
    fake_openai: FakeOpenAI, otlp: Any, monkeypatch: pytest.MonkeyPatch, latest: bool
) -> None:
    """A call span has openai.request.service_tier, the tier asked for (absent when none was), beside
    the tier that served it; the lens span totals its calls' cache writes (under the mode's name, as
    its calls' spans) and audio tokens, as it totals their other tokens."""
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    records, exported = _recorded(fake_openai, otlp)
    calls = records.calls
    assert [c["request"]["service_tier"] for c in calls] == [None, "flex", "priority", "flex", None]
    for call in calls:
        span = exported.spans[call["call_id"]]
        assert span.get("openai.request.service_tier") == call["request"]["service_tier"]
    (summary,) = (r["summary"] for r in records.lenses)
    in_lens = [c for c in calls if c["context"].get("lens_key") == "tiers"]
    for field in ("cache_write_tokens", "prompt_audio_tokens", "completion_audio_tokens"):
        assert summary[field] == sum(c["usage"][field] for c in in_lens), field
    assert [summary[k] for k in ("cache_write_tokens", "prompt_audio_tokens", "completion_audio_tokens")] == [
        8,
        3,
        9,
    ]
    lens = exported.lenses["tiers"]
    written = f"llm_ledger.lens.{'cache_write' if latest else 'cache_creation'}.input_tokens"
    assert lens[written] == 8
    assert (lens["llm_ledger.lens.audio.input_tokens"], lens["llm_ledger.lens.audio.output_tokens"]) == (3, 9)
    call_written = f"gen_ai.usage.{'cache_write' if latest else 'cache_creation'}.input_tokens"
    assert lens[written] == sum(exported.spans[c["call_id"]][call_written] for c in in_lens)


def test_metrics_carry_the_tier_so_spend_splits_by_tier(fake_openai: FakeOpenAI, otlp: Any) -> None:
    """openai.response.service_tier is an attribute of token.usage, operation.duration and
    llm_ledger.cost (the conventions recommend it on the first two): the cost by tier equals the
    records'; embeddings, whose answer names no tier, have no such attribute."""
    records, exported = _recorded(fake_openai, otlp)
    calls = records.calls
    cost: dict[Any, float] = {}
    for attributes, point in exported.points["llm_ledger.cost"]:
        cost[attributes.get(TIER)] = cost.get(attributes.get(TIER), 0) + point.as_double
    want: dict[Any, float] = {}
    for call in calls:
        tier = call["response"]["service_tier"]
        want[tier] = want.get(tier, 0) + (call["cost"]["total_cost_usd"] or 0)
    assert cost.keys() == {"default", "flex", "priority", None}
    assert cost == pytest.approx(want)
    assert want["flex"] > 0 and want["default"] > 0
    durations = Counter(
        a.get(TIER) for a, p in exported.points["gen_ai.client.operation.duration"] for _ in range(p.count)
    )
    assert durations == Counter(c["response"]["service_tier"] for c in calls)
    inputs = {
        a.get(TIER): p.sum
        for a, p in exported.points["gen_ai.client.token.usage"]
        if a["gen_ai.token.type"] == "input" and a["gen_ai.request.model"] == "gpt-audio"
    }
    assert inputs == {"priority": calls[2]["usage"]["prompt_tokens"]}
    # v1.41.1 has two token types (input, output): the detail counts stay on the spans
    assert {a["gen_ai.token.type"] for a, _ in exported.points["gen_ai.client.token.usage"]} == {
        "input",
        "output",
    }


def test_latest_experimental_counts_cache_writes_and_audio_by_modality(
    fake_openai: FakeOpenAI, otlp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gen_ai_latest_experimental: a cache_write.input_tokens counter; the audio tokens of the input
    and output counters under modality ``audio`` and the rest ``text``, so each counter still sums to
    the records' totals; spans name the writes cache_write and split text from audio."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    records, exported = _recorded(fake_openai, otlp)
    inference = [c for c in records.calls if c["operation"] != "embeddings"]
    audio_call = inference[2]

    def by_modality(kind: str, *, model: str | None = None) -> dict[str, int]:
        sums: dict[str, int] = {}
        for attributes, point in exported.points[f"gen_ai.client.inference.usage.{kind}"]:
            if model is None or attributes["gen_ai.request.model"] == model:
                modality = attributes["gen_ai.token.modality"]
                sums[modality] = sums.get(modality, 0) + point.as_int
        return sums

    written = by_modality("cache_write.input_tokens")
    assert {modality: n for modality, n in written.items() if n} == {"text": 8}
    prompt, completion = audio_call["usage"]["prompt_tokens"], audio_call["usage"]["completion_tokens"]
    assert by_modality("input_tokens", model="gpt-audio") == {"audio": 3, "text": prompt - 3}
    assert by_modality("output_tokens", model="gpt-audio") == {"audio": 9, "text": completion - 9}
    for kind, field in (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens")):
        assert sum(by_modality(kind).values()) == sum(c["usage"][field] for c in inference), kind
    tiers = {a.get(TIER) for a, _ in exported.points["gen_ai.client.inference.usage.input_tokens"]}
    assert tiers == {"default", "flex", "priority"}
    flex_span = exported.spans[inference[1]["call_id"]]
    assert flex_span["gen_ai.usage.cache_write.input_tokens"] == 5
    assert "gen_ai.usage.cache_creation.input_tokens" not in flex_span
    audio_span = exported.spans[audio_call["call_id"]]
    assert audio_span["gen_ai.usage.audio.input_tokens"] == 3
    assert audio_span["gen_ai.usage.text.input_tokens"] == prompt - 3
    assert audio_span["gen_ai.usage.text.output_tokens"] == completion - 9


def _tiers_beyond_the_cap(fake_openai: FakeOpenAI) -> list[dict[str, Any]]:
    """A real call's record, answered by a server with MAX_TIERS + 3 tiers of its own."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    with capture(monitor) as records:
        client.chat.completions.create(model="gpt-5-mini", messages=HI)
    client.close()
    (call,) = records.calls
    return [
        {
            **call,
            "call_id": f"{call['call_id']}-{i}",
            "response": {**call["response"], "service_tier": f"tier-{i}"},
        }
        for i in range(MAX_TIERS + 3)
    ]


def test_a_server_answering_with_many_tiers_costs_bounded_metric_attributes(
    fake_openai: FakeOpenAI, otlp: Any
) -> None:
    """Past MAX_TIERS distinct tiers, metrics count later ones under ``other`` (nothing lost); the spans
    keep each call's own tier."""
    calls = _tiers_beyond_the_cap(fake_openai)

    def feed(sink: OTelSink) -> None:
        for call in calls:
            sink(call)

    exported = otlp(feed)
    points = exported.points["gen_ai.client.operation.duration"]
    counted = Counter(a[TIER] for a, p in points for _ in range(p.count))
    assert counted == Counter({**{f"tier-{i}": 1 for i in range(MAX_TIERS)}, "other": 3})
    assert {exported.spans[c["call_id"]][TIER] for c in calls} == {f"tier-{i}" for i in range(MAX_TIERS + 3)}


def test_prometheus_counts_beyond_the_tier_cap_under_other(fake_openai: FakeOpenAI) -> None:
    """PrometheusSink: the first MAX_TIERS tiers keep their names, later ones share ``other``."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    calls = _tiers_beyond_the_cap(fake_openai)
    for call in calls:
        sink(call)
    generate_latest(registry)  # a new series shows 0 first
    found = samples(generate_latest(registry).decode())
    assert by_labels(found, "llm_ledger_calls_total", "service_tier") == {
        **{(f"tier-{i}",): 1.0 for i in range(MAX_TIERS)},
        ("other",): 3.0,
    }
    assert sum(by_labels(found, "llm_ledger_cost_usd_total", "service_tier").values()) == pytest.approx(
        sum(c["cost"]["total_cost_usd"] for c in calls)
    )


@pytest.mark.prometheus
def test_prometheus_spend_by_tier_and_detail_tokens_through_a_real_prometheus(
    prometheus: SharedPrometheus, fake_openai: FakeOpenAI
) -> None:
    """Scraped by a real Prometheus: spend and calls by service_tier equal the records' (``none`` for
    embeddings); cache_write, input_audio and output_audio tokens equal the records' and have series
    only where a call reported some."""
    job = "service_tiers"
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry)])
    server = start_metrics_server(prometheus.port(job), "127.0.0.1", registry=registry)
    try:
        wait("the first scrape", lambda: bool(prometheus.server.query(f'up{{job="{job}"}} == 1')))
        with capture(monitor) as records:
            tiered_calls(monitor, fake_openai)
        calls = records.calls

        def by(expr: str, label: str) -> dict[str, float]:
            return {s["metric"].get(label, ""): float(s["value"][1]) for s in prometheus.server.query(expr)}

        of_job = f'{{job="{job}"}}'
        wait(
            "a scrape of every call",
            lambda: (
                sum(by(f"sum by (service_tier) (llm_ledger_calls_total{of_job})", "service_tier").values())
                == len(calls)
            ),
        )
        calls_by_tier = by(f"sum by (service_tier) (llm_ledger_calls_total{of_job})", "service_tier")
        spend = by(f"sum by (service_tier) (llm_ledger_cost_usd_total{of_job})", "service_tier")
        increase = by(f"sum by (service_tier) (increase(llm_ledger_calls_total{of_job}[5m]))", "service_tier")
        detail = f'llm_ledger_tokens_total{{job="{job}", token_type=~"cache_write|.*_audio"}}'
        tokens = by(f"sum by (token_type) ({detail})", "token_type")
        audio_series = prometheus.server.query(
            f'llm_ledger_tokens_total{{job="{job}", token_type="input_audio"}}'
        )
        assert not prometheus.server.errors()
    finally:
        server.shutdown()  # at once, as configure() stops its server
        server.server_close()
    tiers = Counter(c["response"]["service_tier"] or "none" for c in calls)
    assert calls_by_tier == {"default": 1, "flex": 2, "priority": 1, "none": 1} == tiers
    want_spend: dict[str, float] = {}
    for call in calls:
        tier = call["response"]["service_tier"] or "none"
        want_spend[tier] = want_spend.get(tier, 0) + (call["cost"]["total_cost_usd"] or 0)
    assert spend == pytest.approx(want_spend)
    assert set(increase) == set(tiers) and all(increase[t] >= n for t, n in tiers.items()), increase
    assert tokens == {
        "cache_write": sum(c["usage"]["cache_write_tokens"] for c in calls),
        "input_audio": 3,
        "output_audio": 9,
    }
    assert tokens["cache_write"] == 8
    # the series of input audio tokens: those of the calls that reported some (not the cache writes')
    assert {(s["metric"]["model"], s["metric"]["service_tier"]) for s in audio_series} == {
        ("gpt-audio", "priority")
    }
