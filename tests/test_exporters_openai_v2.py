"""OTelSink beside the OTel openai-v2 instrumentation: one span per call, no GenAI metric twice.

openai-v2 patches the SDK's classes for the whole process: every test instruments it on its own
providers and uninstruments it before it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler

import llm_ledger
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY

V2 = "opentelemetry.instrumentation.openai_v2"
HI: Any = [{"role": "user", "content": "hello there"}]


class Both:
    """openai-v2 and an OTelSink on the same in-memory providers, and a monitor feeding the sink."""

    def __init__(self, server: FakeOpenAI, sampler: Sampler | None = None) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.monitor = llm_ledger.LLMCallMonitor(
            logger=None, sinks=[OTelSink(self.tracer_provider, self.meter_provider)]
        )
        raw = openai.OpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0)
        self.client = self.monitor.instrument(raw)

    def spans(self, scope: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans_out.get_finished_spans()
            if s.instrumentation_scope is not None and s.instrumentation_scope.name == scope
        ]

    def metrics(self) -> dict[tuple[str, str], list[Any]]:
        """(scope, metric name) -> its data points."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            (scope.scope.name, metric.name): list(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def workload(self) -> None:
        """A chat, a stream and embeddings inside a lens; a Responses call and a chat outside it."""
        with self.monitor.lens("summary", source_id="src-1"):
            self.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            stream = self.client.chat.completions.create(
                model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            for _ in stream:
                pass
            self.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        self.client.responses.create(model="o3-mini", input="think")
        self.client.chat.completions.create(model="gpt-4o-mini", messages=HI)


@pytest.fixture(autouse=True)
def semconv_mode_read_afresh() -> Iterator[None]:
    """openai-v2 reads OTEL_SEMCONV_STABILITY_OPT_IN once per process and keeps it: each test has it
    read again (at instrument()), and leaves it to be read again after."""
    stability = _OpenTelemetrySemanticConventionStability
    stability._initialized = False
    yield
    stability._initialized = False


@pytest.fixture
def both(fake_openai: FakeOpenAI) -> Iterator[Both]:
    setup = Both(fake_openai)
    OpenAIInstrumentor().instrument(
        tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider
    )
    try:
        yield setup
    finally:
        OpenAIInstrumentor().uninstrument()
        setup.client.close()


def test_one_client_span_per_call_with_the_cost_on_openai_v2s(both: Both) -> None:
    """openai-v2 makes the spans of what it wraps (chat completions, embeddings); llm-ledger makes
    only the rest (Responses) and the lens span. Each non-streamed call's openai-v2 span carries the
    record's cost and ids; the lens span links to them and sums every call."""
    with capture(both.monitor) as records:
        both.workload()
    chat, stream, embedding, responses, outside = records.calls
    theirs = both.spans(V2)
    ours = both.spans("llm_ledger")
    assert sorted(s.name for s in theirs) == [
        "chat gpt-4o", "chat gpt-4o-mini", "chat gpt-4o-mini", "embeddings text-embedding-3-small",
    ]  # fmt: skip
    assert sorted(s.name for s in ours) == ["chat o3-mini", "lens summary"]
    client_spans = [s for s in theirs + ours if s.kind is trace.SpanKind.CLIENT]
    assert len(client_spans) == len(records.calls)  # one per call, no duplicate
    annotated = {(s.attributes or {}).get("llm_ledger.call_id"): s for s in theirs}
    for call in (chat, embedding, outside):
        attributes = annotated[call["call_id"]].attributes or {}
        assert attributes["gen_ai.usage.cost"] == call["cost"]["total_cost_usd"]
        assert attributes["gen_ai.usage.input_tokens"] == call["usage"]["prompt_tokens"]  # openai-v2's own
        for key, value in call["context"].items():
            assert attributes.get(f"llm_ledger.{key}") == value
    # a stream's openai-v2 span is not current when the stream ends: it keeps openai-v2's attributes only
    (stream_span,) = [s for s in theirs if s.name == "chat gpt-4o"]
    assert "gen_ai.usage.cost" not in (stream_span.attributes or {})
    (lens,) = [s for s in ours if s.name == "lens summary"]
    linked = {link.context.span_id for link in lens.links}
    assert linked == {annotated[c["call_id"]].context.span_id for c in (chat, embedding)}
    (summary,) = records.lenses
    assert (lens.attributes or {})["gen_ai.usage.cost"] == summary["summary"]["total_cost_usd"]
    assert (lens.attributes or {})["llm_ledger.lens.calls"] == 3
    (responses_span,) = [s for s in ours if s.name == "chat o3-mini"]
    assert (responses_span.attributes or {})["llm_ledger.call_id"] == responses["call_id"]
    assert stream["request"]["stream"] is True


def test_latest_experimental_openai_v2_gets_the_same_treatment(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under gen_ai_latest_experimental openai-v2 makes its spans through opentelemetry-util-genai: still
    one CLIENT span per call, and a non-streamed call's span carries the record's cost."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    setup = Both(fake_openai)
    OpenAIInstrumentor().instrument(
        tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider
    )
    try:
        with capture(setup.monitor) as records:
            setup.workload()
        assert not trace.get_current_span().get_span_context().is_valid  # no span left current
    finally:
        OpenAIInstrumentor().uninstrument()
        setup.client.close()
    spans = setup.spans_out.get_finished_spans()
    client_spans = [s for s in spans if s.kind is trace.SpanKind.CLIENT]
    assert len(client_spans) == len(records.calls)
    chat = records.calls[0]
    (chat_span,) = [
        s for s in client_spans if (s.attributes or {}).get("llm_ledger.call_id") == chat["call_id"]
    ]
    assert chat_span.instrumentation_scope is not None
    assert chat_span.instrumentation_scope.name != "llm_ledger"
    assert (chat_span.attributes or {})["gen_ai.usage.cost"] == chat["cost"]["total_cost_usd"]


def test_genai_metrics_are_recorded_once(both: Both) -> None:
    """The duration of the calls openai-v2 wraps comes from openai-v2 alone, and their token usage too
    except a stream's (openai-v2 records its metrics before a stream's usage arrives): llm-ledger
    records those, its cost counter for every call, and every GenAI metric of the calls openai-v2
    does not wrap."""
    with capture(both.monitor) as records:
        both.workload()
    found = both.metrics()
    ours = found[("llm_ledger", "gen_ai.client.operation.duration")]
    assert [p.attributes["gen_ai.request.model"] for p in ours] == ["o3-mini"]
    assert sum(p.count for p in found[(V2, "gen_ai.client.operation.duration")]) == 4
    theirs_input = [p for p in found[(V2, "gen_ai.client.token.usage")]
                    if p.attributes["gen_ai.token.type"] == "input"]  # fmt: skip
    chat, stream, embedding, responses, outside = records.calls
    assert sum(p.sum for p in theirs_input) == sum(
        c["usage"]["prompt_tokens"] for c in (chat, embedding, outside)
    )
    ours_input = [p for p in found[("llm_ledger", "gen_ai.client.token.usage")]
                  if p.attributes["gen_ai.token.type"] == "input"]  # fmt: skip
    assert {p.attributes["gen_ai.request.model"]: p.sum for p in ours_input} == {
        "gpt-4o": stream["usage"]["prompt_tokens"],
        "o3-mini": responses["usage"]["prompt_tokens"],
    }
    assert sum(p.value for p in found[("llm_ledger", "llm_ledger.cost")]) == pytest.approx(
        sum(c["cost"]["total_cost_usd"] for c in records.calls)
    )


def test_genai_metrics_are_recorded_once_when_the_spans_are_sampled_out(fake_openai: FakeOpenAI) -> None:
    """A sampler that records no span (a production trace ratio's unsampled calls): openai-v2 still
    records the token usage of the non-streamed calls it wraps, so llm-ledger records only the
    stream's and the Responses call's, as when the spans are recorded."""
    setup = Both(fake_openai, ALWAYS_OFF)
    OpenAIInstrumentor().instrument(
        tracer_provider=setup.tracer_provider, meter_provider=setup.meter_provider
    )
    try:
        with capture(setup.monitor) as records:
            setup.workload()
    finally:
        OpenAIInstrumentor().uninstrument()
        setup.client.close()
    assert setup.spans_out.get_finished_spans() == ()
    found = setup.metrics()
    chat, stream, embedding, responses, outside = records.calls
    for scope, calls in (
        (V2, (chat, embedding, outside)),
        ("llm_ledger", (stream, responses)),
    ):
        inputs = [p for p in found[(scope, "gen_ai.client.token.usage")]
                  if p.attributes["gen_ai.token.type"] == "input"]  # fmt: skip
        assert sum(p.count for p in inputs) == len(calls), scope
        assert sum(p.sum for p in inputs) == sum(c["usage"]["prompt_tokens"] for c in calls), scope
    ours = found[("llm_ledger", "gen_ai.client.operation.duration")]
    assert [p.attributes["gen_ai.request.model"] for p in ours] == ["o3-mini"]


def test_without_openai_v2_the_sink_makes_every_span_again(both: Both) -> None:
    """The sink asks at each call: once openai-v2 is uninstrumented, its spans are llm-ledger's again."""
    OpenAIInstrumentor().uninstrument()
    with capture(both.monitor) as records:
        both.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert both.spans(V2) == []
    (span,) = both.spans("llm_ledger")
    assert (span.attributes or {})["llm_ledger.call_id"] == records.calls[0]["call_id"]
    OpenAIInstrumentor().instrument(tracer_provider=both.tracer_provider, meter_provider=both.meter_provider)
