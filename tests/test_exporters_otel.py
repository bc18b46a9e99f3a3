"""OTelSink: GenAI spans and metrics from the records, checked against the records attribute by
attribute: in memory for every operation, and over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import openai
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger import ConfigError
from llm_ledger.exporters import OTelSink, PrometheusSink, _otel, _setup
from llm_ledger.exporters._otel import MAX_COUNTER_SETS, TOKEN_BUCKETS
from llm_ledger.exporters._prometheus import DURATION_BUCKETS
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests import warm_python
from tests.conftest import FAKE_KEY, Sdk
from tests.exporter_helpers import (
    AWAIT_FORKED_CHILD,
    Receiver,
    attribute_value,
    by_labels,
    hold_then_fork,
    metric_points,
    samples,
    workload,
)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
# the conventions' gen_ai.output.type of the record's output_type, where they differ
JSON_OUTPUTS = {"json_object": "json", "json_schema": "json"}


class Telemetry:
    """An OTelSink on its own providers, with in-memory exporters; and a monitor feeding it."""

    def __init__(self, sdk: Sdk, *, capture_content: bool = False) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.sink = OTelSink(self.tracer_provider, self.meter_provider)
        self.monitor = llm_ledger.LLMCallMonitor(
            logger=None, sinks=[self.sink], capture_content=capture_content
        )
        self.client = sdk(self.monitor)  # closed when the test ends

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        """metric name -> its data points."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "llm_ledger"
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def otel(sdk: Sdk) -> Telemetry:
    return Telemetry(sdk)


def expected_call_attributes(call: dict[str, Any]) -> dict[str, Any]:
    """What the conventions (and llm_ledger.*) put on a call's span, from its record."""
    request, response, usage, server = call["request"], call["response"], call["usage"], call["server"]
    want: dict[str, Any] = {
        "gen_ai.operation.name": "embeddings" if call["operation"] == "embeddings" else "chat",
        # the conventions' name where it differs from genai-prices' provider id
        "gen_ai.provider.name": {"azure": "azure.ai.openai"}.get(server["provider"], server["provider"]),
        "gen_ai.request.model": request["model"],
        "gen_ai.request.temperature": request["temperature"],
        "gen_ai.request.max_tokens": request["max_tokens"],
        "gen_ai.request.stream": True if request["stream"] else None,
        "gen_ai.request.top_p": request["top_p"],
        "gen_ai.request.frequency_penalty": request["frequency_penalty"],
        "gen_ai.request.presence_penalty": request["presence_penalty"],
        "gen_ai.request.seed": request["seed"],
        "gen_ai.request.choice.count": None if request["n"] == 1 else request["n"],
        "gen_ai.request.reasoning.level": request["reasoning_effort"],
        "gen_ai.output.type": JSON_OUTPUTS.get(request["output_type"], request["output_type"]),
        "gen_ai.request.encoding_formats": (
            (request["encoding_format"],) if request["encoding_format"] else None
        ),
        "gen_ai.embeddings.dimension.count": request["dimensions"],
        "gen_ai.request.stop_sequences": (
            tuple(request["stop_sequences"]) if request.get("stop_sequences") else None
        ),
        "openai.api.type": {"chat": "chat_completions", "responses": "responses"}.get(call["operation"]),
        "gen_ai.response.model": response["model"],
        "gen_ai.response.id": response["id"],
        "gen_ai.response.finish_reasons": (response["finish_reason"],) if response["finish_reason"] else None,
        "gen_ai.response.time_to_first_chunk": (
            call["timing"]["time_to_first_token_ms"] / 1000
            if call["timing"]["time_to_first_token_ms"]
            else None
        ),
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.usage.cache_read.input_tokens": usage["cached_tokens"],
        "gen_ai.usage.cache_creation.input_tokens": usage["cache_write_tokens"],
        "gen_ai.usage.audio.input_tokens": usage["prompt_audio_tokens"] or None,
        "gen_ai.usage.audio.output_tokens": usage["completion_audio_tokens"] or None,
        "gen_ai.usage.reasoning.output_tokens": usage["reasoning_tokens"],
        "openai.request.service_tier": call["request"]["service_tier"],
        "openai.response.service_tier": response["service_tier"],
        "gen_ai.usage.cost": call["cost"]["total_cost_usd"],
        # a stream the caller stopped did not complete, though it raised nothing
        "error.type": (call["error"] or {}).get(
            "type", "interrupted" if call["status"] == "interrupted" else None
        ),
        "server.address": server["address"],
        "server.port": server["port"],
        "llm_ledger.call_id": call["call_id"],
        "llm_ledger.status": call["status"],
        "llm_ledger.request_id": response["request_id"],
        "llm_ledger.retries": call["retries"],
    }
    for key, value in call["context"].items():
        want[f"llm_ledger.{key}"] = value
    return {k: v for k, v in want.items() if v is not None}


def _ns(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000) * 1_000_000


def check_call_span(span: ReadableSpan, call: dict[str, Any]) -> None:
    assert span.kind is trace.SpanKind.CLIENT
    model = call["request"]["model"]
    assert span.name == f"{expected_call_attributes(call)['gen_ai.operation.name']} {model}"
    assert dict(span.attributes or {}) == expected_call_attributes(call)
    assert span.start_time == _ns(call["timing"]["start_time"])
    assert span.end_time == span.start_time + int(call["timing"]["duration_ms"] * 1_000_000)
    assert span.status.is_ok is (call["status"] == "ok")


def test_every_operation_becomes_a_client_span_with_the_records_values(otel: Telemetry) -> None:
    """chat, a streamed chat, responses, embeddings and a failed call: one CLIENT span each, named
    ``{operation} {model}``, attributes and times equal to its record."""
    with capture(otel.monitor) as records:
        otel.client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, temperature=0.3, max_tokens=50,
            extra_headers={"x-fake-cached-tokens": "3"},
        )  # fmt: skip
        for _ in otel.client.chat.completions.create(model="gpt-4o", messages=HI, stream=True):
            pass
        otel.client.responses.create(
            model="o3-mini", input="think", extra_headers={"x-fake-reasoning-tokens": "5"}
        )
        otel.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        with pytest.raises(openai.RateLimitError):
            otel.client.chat.completions.create(
                model="gpt-4o", messages=HI, extra_headers={"x-fake-status": "429"}
            )
    spans = otel.spans()
    assert [s.name for s in spans] == [
        "chat gpt-4o-mini", "chat gpt-4o", "chat o3-mini", "embeddings text-embedding-3-small", "chat gpt-4o",
    ]  # fmt: skip
    assert len(records.calls) == 5
    for span, call in zip(spans, records.calls, strict=True):
        check_call_span(span, call)
    assert spans[0].attributes and spans[0].attributes["gen_ai.usage.cache_read.input_tokens"] == 3
    assert spans[2].attributes and spans[2].attributes["gen_ai.usage.reasoning.output_tokens"] == 5
    assert spans[1].attributes and float(spans[1].attributes["gen_ai.response.time_to_first_chunk"]) > 0  # type: ignore[arg-type]
    assert spans[4].attributes and spans[4].attributes["error.type"] == "RateLimitError"
    assert spans[4].status.description == records.calls[4]["error"]["message"]
    assert str(spans[4].status.description).startswith("HTTP 429")
    assert not any("gen_ai.input.messages" in (s.attributes or {}) for s in spans)  # capture is off


def test_an_azure_call_is_named_by_the_conventions_provider_name(fake_openai: FakeOpenAI, sdk: Sdk) -> None:
    """The record says ``azure`` (genai-prices' id, which chose the price); the span and the metrics
    say ``azure.ai.openai``, the GenAI conventions' name."""
    telemetry = Telemetry(sdk)
    azure = openai.AzureOpenAI(
        api_key=FAKE_KEY,
        azure_endpoint=fake_openai.base_url.removesuffix("/v1"),
        api_version="2024-10-21",
        max_retries=0,
    )
    with azure, capture(telemetry.monitor) as records:
        telemetry.monitor.instrument(azure).chat.completions.create(model="prod-gpt4o", messages=HI)
    (call,) = records.calls
    assert call["server"]["provider"] == "azure"
    (span,) = telemetry.spans()
    check_call_span(span, call)
    assert dict(span.attributes or {})["gen_ai.provider.name"] == "azure.ai.openai"
    points = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert {p.attributes["gen_ai.provider.name"] for p in points} == {"azure.ai.openai"}


def test_a_lens_is_the_parent_of_its_calls_inside_the_applications_trace(otel: Telemetry) -> None:
    """``lens {key}`` (INTERNAL) spans the lens's block, carries its summary, is a child of the span
    current when the lens ended and the parent of its calls; calls outside a lens join the current trace."""
    app = otel.tracer_provider.get_tracer("app")
    with capture(otel.monitor) as records, app.start_as_current_span("request") as request_span:
        with otel.monitor.lens("summary", source_id="src-9"):
            otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            for _ in otel.client.chat.completions.create(model="gpt-4o", messages=HI, stream=True):
                pass
            assert not otel.spans()  # the calls wait for their lens
        otel.client.embeddings.create(model="text-embedding-3-small", input="outside")
    spans = {s.name: s for s in otel.spans()}
    lens = spans["lens summary"]
    (summary,) = records.lenses
    trace_id = request_span.get_span_context().trace_id
    assert lens.kind is trace.SpanKind.INTERNAL
    assert lens.context is not None and lens.context.trace_id == trace_id
    assert lens.parent is not None and lens.parent.span_id == request_span.get_span_context().span_id
    assert dict(lens.attributes or {}) == {
        "llm_ledger.lens.input_tokens": summary["summary"]["prompt_tokens"],
        "llm_ledger.lens.output_tokens": summary["summary"]["completion_tokens"],
        "llm_ledger.lens.cache_read.input_tokens": 0,
        "llm_ledger.lens.reasoning.output_tokens": 0,
        "llm_ledger.lens.cache_creation.input_tokens": 0,
        "gen_ai.usage.cost": summary["summary"]["total_cost_usd"],
        "llm_ledger.lens.calls": 2,
        "llm_ledger.lens.errors": 0,
        "llm_ledger.lens.models": ("gpt-4o", "gpt-4o-mini"),
        "llm_ledger.lens.cost_complete": True,
        "llm_ledger.lens.pending_calls": 0,
        "llm_ledger.lens_key": "summary",
        "llm_ledger.lens_run_id": summary["context"]["lens_run_id"],
        "llm_ledger.source_id": "src-9",
    }
    assert lens.end_time == _ns(summary["timestamp"])
    call_starts = [_ns(c["timing"]["start_time"]) for c in records.calls if c["context"].get("lens_key")]
    # the records' milliseconds: the lens starts at its end less its duration, or at its first call
    assert lens.start_time == min(
        lens.end_time - int(summary["summary"]["duration_ms"] * 1_000_000), *call_starts
    )
    for name in ("chat gpt-4o-mini", "chat gpt-4o"):
        call = spans[name]
        assert call.parent is not None and call.parent.span_id == lens.context.span_id
        assert call.context is not None and call.context.trace_id == trace_id
        assert (
            lens.start_time is not None and call.start_time is not None and lens.start_time <= call.start_time
        )
    outside = spans["embeddings text-embedding-3-small"]
    assert outside.parent is not None and outside.parent.span_id == request_span.get_span_context().span_id
    by_id = {(s.attributes or {}).get("llm_ledger.call_id"): s for s in otel.spans()}
    for record in records.calls:
        check_call_span(by_id[record["call_id"]], record)


@pytest.mark.asyncio
async def test_a_lens_whose_stream_is_read_in_another_span_stays_in_the_trace_it_ended_in(
    fake_openai: FakeOpenAI, otel: Telemetry
) -> None:
    """A handler's lens ends with its stream open, and a task with a span of its own (a worker, a
    relay) reads the stream: the lens's record comes when the stream ends, yet its span is a child of
    the request span its block ended in, in the request's trace, with the stream's call under it."""
    app = otel.tracer_provider.get_tracer("app")
    streams: asyncio.Queue[Any] = asyncio.Queue()

    async def worker() -> None:
        with app.start_as_current_span("worker"):
            async for _ in await streams.get():
                pass

    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = otel.monitor.instrument(raw)
        task = asyncio.create_task(worker())  # made outside the request's span
        with app.start_as_current_span("request") as request_span:
            with otel.monitor.lens("relay") as run:
                stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
            await streams.put(stream)
        await asyncio.wait_for(task, 10)
    assert run.summary is not None and run.summary["total_api_calls"] == 1 and run.summary["open_calls"] == 0
    spans = {s.name: s for s in otel.spans()}
    lens, call, request = spans["lens relay"], spans["chat gpt-4o-mini"], request_span.get_span_context()
    assert lens.parent is not None and lens.parent.span_id == request.span_id
    assert lens.context is not None and lens.context.trace_id == request.trace_id
    assert call.parent is not None and call.parent.span_id == lens.context.span_id


class _Tier(enum.Enum):
    GOLD = "gold"


def test_context_values_of_other_types_are_span_attributes_as_the_file_writes_them(
    otel: Telemetry, tmp_path: Path
) -> None:
    """A UUID ``source_id`` (a database key), an Enum or a mapping in the context: each span carries it
    as the JSONL file writes it (text, the Enum's value, JSON text); they used to be left off the
    spans, so a trace could not be found by the source_id the log line shows."""
    handler = llm_ledger.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    otel.monitor.add_sink(handler.write_record)
    source = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with otel.monitor.lens("summary", source_id=source, tier=_Tier.GOLD, tags={"team": "search"}):
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    handler.close()
    lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert [line["context"]["source_id"] for line in lines] == [str(source)] * 2
    for span in otel.spans():
        attributes = dict(span.attributes or {})
        assert attributes["llm_ledger.source_id"] == str(source), span.name
        assert attributes["llm_ledger.tier"] == "gold"
        assert json.loads(str(attributes["llm_ledger.tags"])) == {"team": "search"}


def test_a_traces_genai_token_usage_adds_up_to_its_calls_once(otel: Telemetry) -> None:
    """Backends (Langfuse, Phoenix, OpenLIT) total a trace's tokens by adding gen_ai.usage.* over its
    spans: the lens span keeps its token totals under llm_ledger.lens.*, so nested lenses and their
    calls are counted once. Its cost is gen_ai.usage.cost, as the exporter's contract names it: the
    calls' costs plus each lens's."""
    app = otel.tracer_provider.get_tracer("app")
    with capture(otel.monitor) as records, app.start_as_current_span("request"), otel.monitor.lens("outer"):
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with otel.monitor.lens("inner"):
            otel.client.chat.completions.create(model="gpt-4o", messages=HI)
    spans = otel.spans()

    def traced(key: str) -> float:  # what such a backend shows for the trace
        return sum(float(cast(float, (s.attributes or {}).get(key, 0))) for s in spans)

    for key, field in (
        ("gen_ai.usage.input_tokens", "prompt_tokens"),
        ("gen_ai.usage.output_tokens", "completion_tokens"),
    ):
        assert traced(key) == sum(c["usage"][field] for c in records.calls)
    traced_cost = traced("gen_ai.usage.cost")
    assert traced_cost == pytest.approx(
        sum(c["cost"]["total_cost_usd"] for c in records.calls)
        + sum(lens["summary"]["total_cost_usd"] for lens in records.lenses)
    )
    lenses = {s.name: dict(s.attributes or {}) for s in spans if s.name.startswith("lens ")}
    for summary in records.lenses:
        attributes = lenses[f"lens {summary['context']['lens_key']}"]
        assert attributes["llm_ledger.lens.input_tokens"] == summary["summary"]["prompt_tokens"]
        assert attributes["gen_ai.usage.cost"] == summary["summary"]["total_cost_usd"]


def test_a_lens_with_a_failed_call_has_status_error_as_its_run_counts_in_prometheus(otel: Telemetry) -> None:
    """A lens run one of whose calls failed is an ``error`` run (``llm_ledger_lens_runs_total``): its
    span's status is ERROR, saying how many calls failed; a run whose calls all succeeded stays unset."""
    with otel.monitor.lens("flaky"):
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.BadRequestError):
            otel.client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    with otel.monitor.lens("steady"):
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    spans = {s.name: s for s in otel.spans()}
    assert spans["lens flaky"].status.status_code is trace.StatusCode.ERROR
    assert spans["lens flaky"].status.description == "1 of 2 call(s) failed"
    assert spans["lens steady"].status.status_code is trace.StatusCode.UNSET


def test_a_lens_that_begins_a_background_response_says_so_on_its_span(otel: Telemetry) -> None:
    """A lens run that begins a background response and ends before it (a web handler) carries, as its
    summary does, the response in ``llm_ledger.lens.pending_calls``, beside ``cost_complete`` false:
    a trace backend can tell a cost that is still to come from one that is unknown."""
    ask: Any = {"model": "gpt-4o-mini", "input": "Summarise the otters.", "background": True}
    with capture(otel.monitor) as records, otel.monitor.lens("start_job"):
        queued = otel.client.responses.create(**ask)
    assert queued.status == "queued"
    (lens,) = records.lenses
    attributes = dict({s.name: s for s in otel.spans()}["lens start_job"].attributes or {})
    assert lens["summary"]["pending_calls"] == attributes["llm_ledger.lens.pending_calls"] == 1
    assert attributes["llm_ledger.lens.cost_complete"] is False


def test_nested_lenses_are_nested_spans_even_when_the_inner_run_ends_last(otel: Telemetry) -> None:
    """A lens run inside another is a child span of it (its record names the enclosing run in
    ``parent_lens_run_id``), its calls under it; a nested run still open when its parent's record
    went out (work handed to a thread) joins the parent's span when it ends."""
    app = otel.tracer_provider.get_tracer("app")
    go_on, parent_ended = threading.Event(), threading.Event()

    def late() -> None:
        with otel.monitor.lens("late"):
            go_on.set()
            assert parent_ended.wait(10)
            otel.client.chat.completions.create(model="gpt-4o", messages=HI)

    with capture(otel.monitor) as records, app.start_as_current_span("request"):
        with otel.monitor.lens("outer") as outer:
            with otel.monitor.lens("inner") as inner:
                otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            worker = threading.Thread(target=llm_ledger.propagate(late))
            worker.start()
            assert go_on.wait(10)
        parent_ended.set()
        worker.join(10)
    spans = {s.name: s for s in otel.spans()}
    assert set(spans) == {
        "request",
        "lens outer",
        "lens inner",
        "lens late",
        "chat gpt-4o-mini",
        "chat gpt-4o",
    }

    def parent_of(name: str) -> int | None:
        parent = spans[name].parent
        return None if parent is None else parent.span_id

    def span_id(name: str) -> int:
        context = spans[name].context
        assert context is not None
        return int(context.span_id)

    assert parent_of("lens inner") == span_id("lens outer") == parent_of("lens late")
    assert parent_of("chat gpt-4o-mini") == span_id("lens inner")
    assert parent_of("chat gpt-4o") == span_id("lens late")
    contexts = {r["context"]["lens_key"]: r["context"] for r in records.lenses}
    assert contexts["inner"]["parent_lens_run_id"] == outer.run_id == contexts["late"]["parent_lens_run_id"]
    assert "parent_lens_run_id" not in contexts["outer"]
    call = next(r for r in records.calls if r["request"]["model"] == "gpt-4o-mini")
    assert call["context"]["lens_run_id"] == inner.run_id
    assert call["context"]["parent_lens_run_id"] == outer.run_id


def test_a_call_begun_after_its_lens_ended_is_exported_under_no_lens_span(otel: Telemetry) -> None:
    """A thread that outlives its lens's block and only then calls counts in no lens, and its record
    names no run: its span is exported at once, under no lens span, instead of waiting for good for a
    lens record that came before it, and a later lens's calls still wait for their lens."""
    go_on = threading.Event()

    def late() -> None:
        assert go_on.wait(10)
        otel.client.chat.completions.create(model="gpt-4o", messages=HI)

    with capture(otel.monitor) as records:
        with otel.monitor.lens("early"):
            worker = threading.Thread(target=llm_ledger.propagate(late))
            worker.start()
        go_on.set()
        worker.join(10)
        with otel.monitor.lens("next"):
            otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert records.lenses[0]["summary"]["total_api_calls"] == 0  # the call counts in no lens
    spans = {s.name: s for s in otel.spans()}
    assert set(spans) == {"lens early", "chat gpt-4o", "lens next", "chat gpt-4o-mini"}
    late_call = spans["chat gpt-4o"]
    assert late_call.parent is None
    attributes = late_call.attributes or {}
    assert attributes["llm_ledger.lens_key"] == "early" and "llm_ledger.lens_run_id" not in attributes
    next_call, next_lens = spans["chat gpt-4o-mini"], spans["lens next"]
    assert next_call.parent is not None and next_lens.context is not None
    assert next_call.parent.span_id == next_lens.context.span_id


def test_calls_waiting_for_a_lens_record_that_never_comes_are_given_up_oldest_first(
    otel: Telemetry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client of one's own monitor called inside ``llm_ledger.lens()`` (the default monitor's) counts in
    that lens, whose record reaches only the default monitor's sinks: its span cannot wait for it for
    good. Past MAX_PENDING_CALLS waiting calls the run that waited longest is given up (its calls
    exported without a lens parent, said once on llm_ledger.internal), and a lens of the sink's own
    monitor still parents its calls."""
    # the cap lowered from 10,000 to 100: the same loop gives up the same run, and the OTel SDK's
    # metrics and spans for 10,000 records took 2 CPU-s
    cap = 100
    monkeypatch.setattr(_otel, "MAX_PENDING_CALLS", cap)
    with capture(otel.monitor) as records, llm_ledger.lens("of the default monitor"):
        otel.client.chat.completions.create(model="gpt-4o", messages=HI)
    (stranded,) = records.calls
    assert otel.spans() == []  # waiting for a lens record that goes to another monitor's sinks
    for index in range(cap - 1):  # the same call, as a busy service would make it
        otel.sink({**stranded, "call_id": f"stranded-{index}"})
    with caplog.at_level("WARNING", logger="llm_ledger.internal"), otel.monitor.lens("own") as own:
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    spans = otel.spans()
    given_up = [s for s in spans if s.name == "chat gpt-4o"]
    assert len(given_up) == cap and all(s.parent is None for s in given_up)
    (lens,) = [s for s in spans if s.name == "lens own"]
    (call,) = [s for s in spans if s.name == "chat gpt-4o-mini"]
    assert call.parent is not None and lens.context is not None
    assert call.parent.span_id == lens.context.span_id
    warnings = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(warnings) == 1 and stranded["context"]["lens_run_id"] in warnings[0], warnings
    assert own.run_id is not None and own.run_id not in warnings[0]


def test_metrics_follow_the_conventions_and_equal_the_records(
    otel: Telemetry, fake_openai: FakeOpenAI
) -> None:
    """token.usage (input and output), operation.duration (error.type on failures), time_to_first_chunk
    for streams, with the conventions' buckets; llm_ledger.cost sums the calls' costs."""
    with capture(otel.monitor) as records:
        workload(otel.monitor, fake_openai)
    calls = records.calls
    found = otel.metrics()
    assert set(found) == {
        "gen_ai.client.token.usage", "gen_ai.client.operation.duration",
        "gen_ai.client.operation.time_to_first_chunk", "llm_ledger.cost", "llm_ledger.unpriced_calls",
    }  # fmt: skip
    for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        points = [p for p in found["gen_ai.client.token.usage"] if p.attributes["gen_ai.token.type"] == kind]
        assert sum(p.sum for p in points) == sum(c["usage"][field] or 0 for c in calls), kind
        assert sum(p.count for p in points) == sum(c["usage"][field] is not None for c in calls), kind
        assert all(tuple(p.explicit_bounds) == TOKEN_BUCKETS for p in points)
    durations = found["gen_ai.client.operation.duration"]
    assert sum(p.count for p in durations) == len(calls)
    assert sum(p.sum for p in durations) == pytest.approx(
        sum(c["timing"]["duration_ms"] for c in calls) / 1000
    )
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in durations)
    failed = [p for p in durations if "error.type" in p.attributes]
    assert [(p.attributes["error.type"], p.count) for p in failed] == [("InternalServerError", 1)]
    (first,) = found["gen_ai.client.operation.time_to_first_chunk"]
    assert first.count == 1 and first.attributes["gen_ai.request.model"] == "gpt-4o"
    assert sum(p.value for p in found["llm_ledger.cost"]) == pytest.approx(
        sum(c["cost"]["total_cost_usd"] or 0 for c in calls)
    )
    for point in durations:
        assert {
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "server.address",
        } <= set(point.attributes)
        assert "llm_ledger.user_id" not in point.attributes and "llm_ledger.source_id" not in point.attributes


def test_a_stream_the_caller_stopped_is_not_a_success_in_duration_or_span(otel: Telemetry) -> None:
    """A stream the caller stopped before its end (``interrupted``, no exception: a ``break`` then
    ``close()``) did not complete: its duration and span carry ``error.type="interrupted"`` (and the
    span status ERROR), as a cancelled or Ctrl-C'd call carries its exception's type, so the latency
    of completed calls (the points without ``error.type``) leaves it out."""
    with capture(otel.monitor) as records:
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        stream = otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
        for _ in stream:
            break
        stream.close()
    assert [c["status"] for c in records.calls] == ["ok", "interrupted"]
    assert records.calls[1]["error"] is None
    durations = otel.metrics()["gen_ai.client.operation.duration"]
    assert sorted((p.attributes.get("error.type", ""), p.count) for p in durations) == [
        ("", 1),
        ("interrupted", 1),
    ]
    ok, stopped = sorted(otel.spans(), key=lambda span: span.start_time or 0)
    assert ok.status.is_ok and "error.type" not in (ok.attributes or {})
    assert (stopped.attributes or {})["error.type"] == "interrupted"
    assert stopped.status.status_code is trace.StatusCode.ERROR


PARAMETER_ATTRIBUTES = (
    "gen_ai.request.top_p", "gen_ai.request.frequency_penalty", "gen_ai.request.presence_penalty",
    "gen_ai.request.seed", "gen_ai.request.choice.count", "gen_ai.request.reasoning.level",
    "gen_ai.output.type", "gen_ai.request.encoding_formats", "gen_ai.embeddings.dimension.count",
    "gen_ai.request.stop_sequences",
)  # fmt: skip


@pytest.mark.parametrize("latest", [False, True], ids=["v1.41.1", "latest-experimental"])
def test_request_parameters_are_span_attributes(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch, latest: bool
) -> None:
    """A call's sampling parameters, seed, choice count (only when not 1), reasoning effort, output
    type (json_object and json_schema as ``json``), stop sequences (a string as a list of one) and an
    embedding's dimensions and encoding are the conventions' attributes on its span, under both
    namings; none is there when not given."""
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    otel = Telemetry(sdk)
    schema: Any = {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object"}}}
    with capture(otel.monitor) as records:
        otel.client.chat.completions.create(
            model="o4-mini", messages=HI, top_p=0.5, frequency_penalty=0.5, presence_penalty=0, seed=7, n=3,
            reasoning_effort="medium", response_format=schema,
        )  # fmt: skip
        stream = otel.client.chat.completions.create(
            model="gpt-4o", messages=HI, stream=True, n=1, response_format={"type": "text"}, stop="END"
        )
        for _ in stream:
            pass
        json_object: Any = {"format": {"type": "json_object"}}
        otel.client.responses.create(
            model="o4-mini", input="hi", reasoning={"effort": "high"}, text=json_object
        )
        otel.client.embeddings.create(
            model="text-embedding-3-small", input="a", dimensions=16, encoding_format="float"
        )
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    found = [
        {key: value for key, value in (span.attributes or {}).items() if key in PARAMETER_ATTRIBUTES}
        for span in otel.spans()
    ]
    assert found == [
        {
            "gen_ai.request.top_p": 0.5, "gen_ai.request.frequency_penalty": 0.5,
            "gen_ai.request.presence_penalty": 0.0, "gen_ai.request.seed": 7,
            "gen_ai.request.choice.count": 3, "gen_ai.request.reasoning.level": "medium",
            "gen_ai.output.type": "json",
        },
        {"gen_ai.output.type": "text", "gen_ai.request.stop_sequences": ("END",)},
        {"gen_ai.request.reasoning.level": "high", "gen_ai.output.type": "json"},
        {"gen_ai.request.encoding_formats": ("float",), "gen_ai.embeddings.dimension.count": 16},
        {},
    ]  # fmt: skip
    if not latest:  # every other attribute too, as the record says
        for span, call in zip(otel.spans(), records.calls, strict=True):
            check_call_span(span, call)


def test_latest_experimental_names_on_opt_in(
    fake_openai: FakeOpenAI, sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: token counters by modality (a failed
    call counts 0 of ``unknown``), per-call token histograms, inference and embeddings durations apart,
    and usage by modality on the call spans."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    otel = Telemetry(sdk)
    image: Any = [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]  # fmt: skip
    with capture(otel.monitor) as records:
        workload(otel.monitor, fake_openai)
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=image)
    found = otel.metrics()
    assert set(found) == {
        "gen_ai.client.inference.usage.input_tokens", "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "gen_ai.client.inference.usage.cache_write.input_tokens",
        "gen_ai.client.inference.usage.reasoning.output_tokens",
        "gen_ai.client.inference.operation.input_tokens", "gen_ai.client.inference.operation.output_tokens",
        "gen_ai.client.embeddings.operation.input_tokens",
        "gen_ai.client.inference.duration", "gen_ai.client.embeddings.duration",
        "gen_ai.client.inference.time_to_first_chunk", "llm_ledger.cost", "llm_ledger.unpriced_calls",
    }  # fmt: skip
    inference = [c for c in records.calls if c["operation"] != "embeddings"]
    (embedding,) = [c for c in records.calls if c["operation"] == "embeddings"]
    (failed,) = [c for c in records.calls if c["status"] == "error"]
    assert failed["usage"]["prompt_tokens"] is None

    def by_modality(metric: str) -> dict[str, float]:
        sums: dict[str, float] = {}
        for point in found[metric]:
            modality = point.attributes["gen_ai.token.modality"]
            sums[modality] = sums.get(modality, 0) + point.value
        return sums

    image_call = records.calls[-1]
    for metric, field, side in (
        ("input_tokens", "prompt_tokens", "input"), ("output_tokens", "completion_tokens", "output"),
        ("cache_read.input_tokens", "cached_tokens", "input"),
        ("cache_write.input_tokens", "cache_write_tokens", "input"),
        ("reasoning.output_tokens", "reasoning_tokens", "output"),
    ):  # fmt: skip
        want: dict[str, float] = {}
        for call in inference:
            n = call["usage"][field]
            if call is failed and metric in ("input_tokens", "output_tokens"):
                want["unknown"] = want.get("unknown", 0) + 0
            elif n is not None:
                modality = "unknown" if call is image_call and side == "input" else "text"
                want[modality] = want.get(modality, 0) + n
        assert by_modality(f"gen_ai.client.inference.usage.{metric}") == want, metric
    assert (
        by_modality("gen_ai.client.inference.usage.input_tokens")["unknown"]
        == image_call["usage"]["prompt_tokens"]
    )
    # the failed call: 0 tokens of unknown modality, on both counters
    zero = [p for p in found["gen_ai.client.inference.usage.output_tokens"]
            if p.attributes["gen_ai.token.modality"] == "unknown"]  # fmt: skip
    assert [p.value for p in zero] == [0] and zero[0].attributes["gen_ai.request.model"] == "gpt-4o"
    histogram = found["gen_ai.client.inference.operation.input_tokens"]
    assert sum(p.count for p in histogram) == sum(c["usage"]["prompt_tokens"] is not None for c in inference)
    assert all(tuple(p.explicit_bounds) == TOKEN_BUCKETS and "gen_ai.token.modality" not in p.attributes
               for p in histogram)  # fmt: skip
    (embedded,) = found["gen_ai.client.embeddings.operation.input_tokens"]
    assert (embedded.count, embedded.sum) == (1, embedding["usage"]["prompt_tokens"])
    assert sum(p.count for p in found["gen_ai.client.embeddings.duration"]) == 1
    assert sum(p.count for p in found["gen_ai.client.inference.duration"]) == len(inference)
    spans = {(s.attributes or {}).get("llm_ledger.call_id"): s.attributes or {} for s in otel.spans()}
    text_call = spans[inference[0]["call_id"]]
    assert text_call["gen_ai.usage.text.input_tokens"] == inference[0]["usage"]["prompt_tokens"]
    assert text_call["gen_ai.usage.text.output_tokens"] == inference[0]["usage"]["completion_tokens"]
    assert "gen_ai.usage.text.input_tokens" not in spans[image_call["call_id"]]
    image_span = spans[image_call["call_id"]]
    assert image_span["gen_ai.usage.text.output_tokens"] == image_call["usage"]["completion_tokens"]


def test_counters_kept_by_the_sink_are_bounded(otel: Telemetry) -> None:
    """llm_ledger.cost sums in the sink and reports at collection; past MAX_COUNTER_SETS attribute
    sets, later ones are summed under the SDK's overflow set: nothing is lost, memory stays bounded."""
    with capture(otel.monitor) as records:
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    (call,) = records.calls
    extra = 5
    for index in range(MAX_COUNTER_SETS - 1 + extra):
        otel.sink({**call, "request": {**call["request"], "model": f"model-{index}"}})
    points = otel.metrics()["llm_ledger.cost"]
    assert len(points) == MAX_COUNTER_SETS + 1
    (overflow,) = [p for p in points if p.attributes.get("otel.metric.overflow")]
    usd = call["cost"]["total_cost_usd"]
    assert overflow.value == pytest.approx(extra * usd)
    assert sum(p.value for p in points) == pytest.approx((MAX_COUNTER_SETS + extra) * usd)


def test_lens_keys_beyond_the_cap_are_other_in_metrics_and_their_own_on_spans(sdk: Sdk) -> None:
    """A bug that puts ids in lens keys costs one more attribute set per instrument, not one per id
    (which would fill the SDK's limit and push every later model's spend into its overflow set): past
    max_lenses distinct keys, metrics carry llm_ledger.lens="other", as the Prometheus sink's lens
    label; the spend still adds up, and each call's span keeps its own key."""
    telemetry = Telemetry(sdk)
    telemetry.reader = InMemoryMetricReader()  # a sink of its own: its instruments, its provider
    telemetry.sink = OTelSink(
        telemetry.tracer_provider, MeterProvider(metric_readers=[telemetry.reader]), max_lenses=3
    )
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[telemetry.sink])
    with capture(monitor) as records:
        sdk(monitor).chat.completions.create(model="gpt-4o-mini", messages=HI)
    (call,) = records.calls
    keys = [f"doc-{index}" for index in range(6)]  # an id where a lens key belongs
    for key in keys:
        telemetry.sink({**call, "context": {**call["context"], "lens_key": key}})
    points = telemetry.metrics()["llm_ledger.cost"]
    by_lens = {p.attributes["llm_ledger.lens"]: p.value for p in points if "llm_ledger.lens" in p.attributes}
    usd = call["cost"]["total_cost_usd"]
    assert by_lens == pytest.approx({"doc-0": usd, "doc-1": usd, "doc-2": usd, "other": 3 * usd})
    durations = telemetry.metrics()["gen_ai.client.operation.duration"]
    lenses = {p.attributes.get("llm_ledger.lens") for p in durations}
    assert lenses == {None, "doc-0", "doc-1", "doc-2", "other"}  # None: the first call, in no lens
    spans = [s.attributes or {} for s in telemetry.spans()]
    assert sorted(str(s.get("llm_ledger.lens_key")) for s in spans) == ["None", *keys]
    with pytest.raises(ConfigError, match="max_lenses must be a whole number >= 1"):
        OTelSink(telemetry.tracer_provider, MeterProvider(), max_lenses=0)


def test_a_lens_or_tier_named_other_is_said_once_as_the_prometheus_sink_says_it(
    otel: Telemetry, internal_log: pytest.LogCaptureFixture
) -> None:
    """A lens keyed "other" or a service tier named "other" shares its metrics' attribute sets with the
    lens keys or tiers past the cap, as the Prometheus sink's label value does: the sink says so once per
    attribute on llm_ledger.internal, naming the fix, where nothing told the operator before."""
    for lens in ("other", "digest", "other"):
        with otel.monitor.lens(lens):
            otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    with capture(otel.monitor) as records:
        otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    (call,) = records.calls
    for tier in ("other", "flex", "other"):  # no server answers a tier "other": the record says one did
        otel.sink({**call, "response": {**call["response"], "service_tier": tier}})
    costs = otel.metrics()["llm_ledger.cost"]
    assert sorted(p.attributes.get("llm_ledger.lens", "-") for p in costs) == [
        "-",
        "-",
        "-",
        "digest",
        "other",
    ]
    said = [r.getMessage() for r in internal_log.records if "reserved" in r.getMessage()]
    assert len(said) == 2
    assert "lens key 'other'" in said[0] and "llm_ledger.lens" in said[0] and "past the cap" in said[0]
    assert "another key" in said[0]
    assert "service tier 'other'" in said[1] and "openai.response.service_tier" in said[1]


def test_budget_breaches_and_anomalies_are_counted_as_their_records_and_the_prometheus_sink_say(
    sdk: Sdk,
) -> None:
    """An operator on an OpenTelemetry backend can alert on production budgets (warn mode: the calls go
    on) and lens anomalies: llm_ledger.budget_exceeded counts each budget_exceeded record under its lens
    and limit, llm_ledger.lens_anomalies each lens_anomaly record under its lens and metric, lens keys
    past max_lenses as other, the same counts as the Prometheus sink's for the same calls."""
    reader = InMemoryMetricReader()
    sink = OTelSink(TracerProvider(), MeterProvider(metric_readers=[reader]), max_lenses=1)
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink, PrometheusSink(registry, max_lenses=1)])
    monitor.budgets = llm_ledger.BudgetGuard(
        {"lenses": {"digest": {"max_api_calls": 1, "max_total_tokens": 200}, "summary": {"max_api_calls": 1}}}
    )
    monitor.anomalies = llm_ledger.AnomalyDetector(
        llm_ledger.AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",))
    )
    client = sdk(monitor)
    with capture(monitor) as records:
        for lens, words in [("digest", 5)] * 5 + [("digest", 400), ("summary", 5)]:
            with monitor.lens(lens):
                for _ in range(2):
                    client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=HI,
                        extra_headers={"x-fake-completion-words": str(words)},
                    )
    assert len(records.calls) == 14  # warn mode: every call made

    def counted(name: str, attribute: str) -> dict[tuple[str, str], float]:
        points = metric_points(reader).get(name, [])
        return {(p.attributes["llm_ledger.lens"], p.attributes[attribute]): p.value for p in points}

    breaches = [
        (r["context"]["lens_key"], r["budget"]["limit"]) for r in records if r["event"] == "budget_exceeded"
    ]
    anomalies = [
        (r["context"]["lens_key"], r["anomaly"]["metric"]) for r in records if r["event"] == "lens_anomaly"
    ]
    assert sorted(set(breaches)) == [
        ("digest", "max_api_calls"), ("digest", "max_total_tokens"), ("summary", "max_api_calls")
    ]  # fmt: skip
    assert anomalies == [("digest", "total_tokens")]
    capped = {"digest": "digest", "summary": "other"}  # max_lenses=1
    want_breaches = {
        (capped[lens], limit): float(breaches.count((lens, limit))) for lens, limit in set(breaches)
    }
    # an anomaly's attribute set at 0 from a lens's first judged run (summary's, under other, stays
    # there); a breach's at 0 in the first collection after it, at its count from the next one: a rule
    # on increase() after OTLP reaches Prometheus counts a lens's first anomaly and first breach
    want_anomalies = {("digest", "total_tokens"): 1.0, ("other", "total_tokens"): 0.0}
    assert counted("llm_ledger.budget_exceeded", "llm_ledger.budget.limit") == dict.fromkeys(
        want_breaches, 0.0
    )
    assert counted("llm_ledger.lens_anomalies", "llm_ledger.anomaly.metric") == want_anomalies
    assert counted("llm_ledger.budget_exceeded", "llm_ledger.budget.limit") == want_breaches
    assert counted("llm_ledger.lens_anomalies", "llm_ledger.anomaly.metric") == want_anomalies
    first = samples(generate_latest(registry).decode())  # the scrape that shows new series at 0
    assert by_labels(first, "llm_ledger_budget_exceeded_total", "lens", "limit") == dict.fromkeys(
        want_breaches, 0.0
    )
    scraped = samples(generate_latest(registry).decode())
    assert by_labels(scraped, "llm_ledger_budget_exceeded_total", "lens", "limit") == want_breaches
    assert by_labels(scraped, "llm_ledger_lens_anomalies_total", "lens", "metric") == want_anomalies


BREACH_THEN_EXIT = """
import sys, openai, llm_ledger
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI

reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=sys.argv[1]), 600_000)
meter_provider = MeterProvider(metric_readers=[reader])
monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(TracerProvider(), meter_provider)])
one_call = {"max_api_calls": 1}
monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"nightly": one_call, "digest": one_call}})
HI = [{"role": "user", "content": "hi"}]
with FakeOpenAI() as server, openai.OpenAI(api_key="sk-test", base_url=server.base_url) as raw:
    client = monitor.instrument(raw)

    def run(lens):
        with monitor.lens(lens):
            for _ in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    run("nightly")
    meter_provider.force_flush()  # an export, as the periodic reader's: the new breach at 0
    run("nightly")
    run("digest")
# the exit: the meter provider's last export, every breach at its count
"""


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OTLP/HTTP metrics endpoint on loopback, and once the block is left, each export's
    llm_ledger.budget_exceeded points it received, lens -> value."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    exports: list[dict[str, Any]] = []
    try:
        yield f"http://127.0.0.1:{receiver.server_port}/v1/metrics", exports
    finally:
        receiver.shutdown()
        receiver.server_close()
    for body in receiver.bodies["/v1/metrics"]:
        request = ExportMetricsServiceRequest.FromString(body)
        exports.append(
            {
                {a.key: attribute_value(a.value) for a in point.attributes}["llm_ledger.lens"]: getattr(
                    point, point.WhichOneof("value")
                )
                for resource in request.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == "llm_ledger.budget_exceeded"
                for point in metric.sum.data_points
            }
        )


def breaches_exported(script: str, *args: str) -> list[dict[str, Any]]:
    """Run ``script`` in a process of its own, its first argument an OTLP/HTTP metrics endpoint on
    loopback, then ``args``; each export's llm_ledger.budget_exceeded points, lens -> value."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "OTEL_"))}
    with otlp_receiver() as (endpoint, exports):
        app = warm_python.run(
            [sys.executable, "-c", script, endpoint, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert app.returncode == 0, app.stderr
    return exports


def test_a_breach_is_exported_at_0_first_and_every_count_at_exit() -> None:
    """Over OTLP/HTTP from a process of its own: a lens's first breach goes out at 0 in the export after
    it and at its count from the next (a Prometheus fed by OTLP sees the rise increase() counts), and the
    export the meter provider makes at exit carries every breach at its count (a batch job's breaches
    are not lost as zeros), after one more export carrying a breach no export carried yet at 0 (one in
    a job's last minute is a rise too, not a lone first point that increase() leaves out)."""
    exports = breaches_exported(BREACH_THEN_EXIT)
    assert exports == [{"nightly": 0}, {"nightly": 2, "digest": 0}, {"nightly": 2, "digest": 1}]


BREACH_THEN_PROVIDER = """
import sys, openai, llm_ledger
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI

monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(TracerProvider())])  # the global meters
one_call = {"max_api_calls": 1}
monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"nightly": one_call, "digest": one_call}})
HI = [{"role": "user", "content": "hi"}]
with FakeOpenAI() as server, openai.OpenAI(api_key="sk-test", base_url=server.base_url) as raw:
    client = monitor.instrument(raw)

    def run(lens):
        with monitor.lens(lens):
            for _ in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    run("nightly")  # before the application sets its meter provider up
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=sys.argv[1]), 600_000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))  # its exit hook after ours
    for lens in sys.argv[2:]:
        run(lens)
# the exit: the meter provider's last export
"""


@pytest.mark.parametrize(
    ("after", "want"),
    [
        ((), [{"nightly": 1}]),
        (("digest",), [{"nightly": 0, "digest": 0}, {"nightly": 1, "digest": 1}]),
    ],
)
def test_a_breach_counted_before_the_meter_provider_was_set_is_exported_at_its_count(
    after: tuple[str, ...], want: list[dict[str, Any]]
) -> None:
    """An application that sets its global meter provider up after a lens run broke its budget (the
    sink counts it at once; the SDK reads it later) gets the breach at its count in the export the
    provider makes at exit, not at 0 as the first point of a new attribute set: that export is its
    last. A breach after the provider was set gets both of them the export at 0 before, as above."""
    assert breaches_exported(BREACH_THEN_PROVIDER, *after) == want


def test_a_breach_is_exported_at_its_count_by_a_meter_provider_the_application_shuts_down(
    sdk: Sdk,
) -> None:
    """An application that shuts its meter provider down itself (a server's lifespan handler, as
    docs/exporters.md advises under uvicorn) gets a breach no export carried yet at its count in that
    last export, not at 0 with its count never sent."""
    with otlp_receiver() as (endpoint, exports):
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint), 600_000)
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(TracerProvider(), provider)])
        monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"nightly": {"max_api_calls": 1}}})
        client = sdk(monitor)
        with monitor.lens("nightly"):
            for _ in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        provider.shutdown()
    assert exports == [{"nightly": 1}]


CALL_THEN_PROVIDER = """
import json, openai, llm_ledger
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI

costs = []
sinks = [OTelSink(TracerProvider()), lambda record: costs.append(record["cost"]["total_cost_usd"])]
monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=sinks)  # the global meters
HI = [{"role": "user", "content": "hi"}]
with FakeOpenAI() as server, openai.OpenAI(api_key="sk-test", base_url=server.base_url) as raw:
    client = monitor.instrument(raw)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # before the meter provider
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
found = {}
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            points = metric.data.data_points
            found[metric.name] = sum(getattr(p, "count", None) or getattr(p, "value", 0) for p in points)
print(json.dumps([found, costs]))
"""


def test_a_meter_provider_set_after_the_first_call_gets_every_total_and_later_histogram_points() -> None:
    """What docs/exporters.md and the sink's warning say of a meter provider set up after the first
    call: the totals (the spend in llm_ledger.cost) count that call too, the histograms only the calls
    made once it was set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "OTEL_"))}
    app = warm_python.run(
        [sys.executable, "-c", CALL_THEN_PROVIDER], env=env, capture_output=True, text=True, timeout=60
    )
    assert app.returncode == 0, app.stderr
    found, costs = json.loads(app.stdout)
    assert len(costs) == 2 and costs[0] > 0
    assert found["llm_ledger.cost"] == pytest.approx(sum(costs)), found  # the first call's too
    assert found["gen_ai.client.operation.duration"] == 1, found  # the second call's point only
    assert found["gen_ai.client.token.usage"] == 2, found  # its input and output points


def test_content_only_with_capture_on(sdk: Sdk) -> None:
    """With capture_content the span carries the conventions' message attributes as JSON strings."""
    otel = Telemetry(sdk, capture_content=True)
    otel.client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    (span,) = otel.spans()
    attributes = span.attributes or {}
    assert json.loads(str(attributes["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}
    ]
    assert json.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hello there"}]}
    ]
    [output] = json.loads(str(attributes["gen_ai.output.messages"]))
    assert output["role"] == "assistant" and output["finish_reason"] == "stop"
    assert output["parts"][0]["content"].startswith("Summary:")


def test_content_of_responses_calls_and_image_messages_as_the_conventions_parts(sdk: Sdk) -> None:
    """Responses ``instructions`` are system instructions and a string ``input`` the user's message; a
    chat message of parts keeps its text, and an image is a part without the image itself."""
    otel = Telemetry(sdk, capture_content=True)
    otel.client.responses.create(model="gpt-4o-mini", instructions="be brief", input="hello there")
    image = "data:image/png;base64,iVBORw0KGgo="
    otel.client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "be kind"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            },
        ],
    )
    responses, chat = (span.attributes or {} for span in otel.spans())
    assert json.loads(str(responses["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}
    ]
    assert json.loads(str(responses["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hello there"}]}
    ]
    assert json.loads(str(chat["gen_ai.system_instructions"])) == [{"type": "text", "content": "be kind"}]
    assert json.loads(str(chat["gen_ai.input.messages"])) == [
        {
            "role": "user",
            "parts": [{"type": "text", "content": "what is this?"}, {"type": "uri", "modality": "image"}],
        }
    ]
    assert image not in str(chat)


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api installed, building the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigError, match=r"pip install 'llm-ledger\[otel\]'"):
        OTelSink()


@pytest.mark.usefixtures("fresh_config")
def test_configure_puts_the_sink_on_the_default_monitor() -> None:
    """configure(exporters=["otel"]) adds one OTelSink (global providers) to the default monitor."""
    try:
        llm_ledger.configure(log_dir=None, exporters=["otel"])
        assert [type(s) for s in _setup._installed] == [OTelSink]
        assert _setup._installed[0] in llm_ledger.get_monitor()._sinks
    finally:
        _setup.prepare(()).commit(llm_ledger.get_monitor())
    assert not llm_ledger.get_monitor()._sinks


NO_SDK_APP = """
import sys, openai, llm_ledger
from llm_ledger.testing import FakeOpenAI

llm_ledger.configure(log_dir=None)  # LLM_LEDGER_EXPORTERS=otel
if sys.argv[1] != "none":  # the application sets OpenTelemetry up after configure(), as many do
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
if sys.argv[1] == "sdk":  # tracing and metrics; "traces": tracing only, as many setups begin
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    metrics.set_meter_provider(MeterProvider())
with FakeOpenAI() as server:
    client = llm_ledger.instrument(openai.OpenAI(api_key="sk-test", base_url=server.base_url))
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
"""


@pytest.mark.parametrize("setup", ["none", "traces", "sdk"])
def test_exporting_to_no_opentelemetry_sdk_says_so_once(setup: str) -> None:
    """LLM_LEDGER_EXPORTERS=otel in an application that never sets a tracer provider: spans go nowhere,
    and the first call says so on llm_ledger.internal (once); one that sets up tracing only is told
    that the metrics (the spend in llm_ledger.cost among them) go nowhere; with both set up, nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "OTEL_"))}
    app = warm_python.run(
        [sys.executable, "-c", NO_SDK_APP, setup],
        env=env | {"LLM_LEDGER_EXPORTERS": "otel"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert app.returncode == 0, app.stderr
    spans = [line for line in app.stderr.splitlines() if "no OpenTelemetry tracer provider" in line]
    metrics = [line for line in app.stderr.splitlines() if "no OpenTelemetry meter provider" in line]
    if setup == "none":
        assert len(spans) == 1, app.stderr
        assert "opentelemetry-instrument" in spans[0] and "set_tracer_provider" in spans[0]
    else:
        assert spans == [], app.stderr
    if setup == "sdk":
        assert metrics == [], app.stderr
    else:
        assert len(metrics) == 1, app.stderr
        assert "llm_ledger.cost" in metrics[0] and "set_meter_provider" in metrics[0]


# -- OTLP/HTTP to a receiver on loopback ----------------------------------------------------------


def test_otlp_http_carries_every_attribute_of_the_records(fake_openai: FakeOpenAI) -> None:
    """Spans and metrics exported over OTLP/HTTP, decoded with opentelemetry-proto: each call span's
    attributes equal its record's; the lens spans parent their calls; the metrics arrive."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{receiver.server_port}"
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), 60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(tracer_provider, meter_provider)])
    try:
        with capture(monitor) as records:
            workload(monitor, fake_openai)
        tracer_provider.force_flush()
        meter_provider.force_flush()
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        receiver.shutdown()
        receiver.server_close()
    spans = {}
    for body in receiver.bodies["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                assert scope.scope.name == "llm_ledger"
                for span in scope.spans:
                    attributes = {a.key: attribute_value(a.value) for a in span.attributes}
                    spans[attributes.get("llm_ledger.call_id") or span.name] = (span, attributes)
    calls: Captured = records
    assert len(spans) == len(calls.calls) + len(calls.lenses) == 9
    for call in calls.calls:
        span, attributes = spans[call["call_id"]]
        assert attributes == expected_call_attributes(call)
        assert span.kind == span.SPAN_KIND_CLIENT
        assert span.start_time_unix_nano == _ns(call["timing"]["start_time"])
        lens_key = call["context"]["lens_key"]
        if lens_key is not None:
            lens_span, _ = spans[f"lens {lens_key}"]
            assert span.parent_span_id == lens_span.span_id and span.trace_id == lens_span.trace_id
        else:
            assert span.parent_span_id == b""
    # the workload's request parameters: a string array and integers over the wire too
    embedding = next(a for _, a in spans.values() if a.get("gen_ai.operation.name") == "embeddings")
    assert embedding["gen_ai.request.encoding_formats"] == ("base64",)
    assert embedding["gen_ai.embeddings.dimension.count"] == 16
    assert {a.get("gen_ai.request.seed") for _, a in spans.values()} == {None, 7}
    assert {a.get("gen_ai.request.reasoning.level") for _, a in spans.values()} == {None, "low", "high"}
    for lens in calls.lenses:
        span, attributes = spans[f"lens {lens['context']['lens_key']}"]
        assert span.kind == span.SPAN_KIND_INTERNAL
        assert attributes["gen_ai.usage.cost"] == pytest.approx(lens["summary"]["total_cost_usd"])
        assert attributes["llm_ledger.lens.calls"] == lens["summary"]["total_api_calls"]
    names = set()
    for body in receiver.bodies["/v1/metrics"]:
        for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            for scope in resource.scope_metrics:
                names |= {m.name for m in scope.metrics}
                for metric in scope.metrics:
                    if metric.name == "gen_ai.client.operation.duration":
                        points = metric.histogram.data_points
                        assert sum(p.count for p in points) == len(calls.calls)
                        assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in points)
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "llm_ledger.cost"} <= names


# a multiprocessing pool forked inside a lens: the parent's call waits for the lens; the children's
# calls name the parent's lens run, whose record only the parent gets
FORKED_POOL = """
import multiprocessing, sys, openai, llm_ledger
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

endpoint, base_url = sys.argv[1:]
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
trace.set_tracer_provider(provider)
llm_ledger.configure(log_dir=None, exporters=["otel"])
HI = [{"role": "user", "content": "hi"}]

def new_client():  # each process its own (an HTTP connection pool is not shared across a fork)
    global client
    client = llm_ledger.instrument(openai.OpenAI(api_key="sk-fake", base_url=base_url, max_retries=0))

def work(i):
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return i

new_client()
with llm_ledger.lens("batch"):
    client.chat.completions.create(model="gpt-4o", messages=HI)
    with multiprocessing.get_context("fork").Pool(2, initializer=new_client) as pool:
        assert pool.map(work, range(4)) == [0, 1, 2, 3]
"""


def test_calls_of_processes_forked_inside_a_lens_are_exported_once(fake_openai: FakeOpenAI) -> None:
    """A pool forked inside a lens: each child's calls name the parent's lens run, whose record only the
    parent gets, so they are exported at once (not kept waiting for good); the parent exports its own
    call under the lens span, once (no child exports the parent's waiting spans again)."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        done = warm_python.run(
            [sys.executable, "-c", FORKED_POOL, f"http://127.0.0.1:{receiver.server_port}/v1/traces",
             fake_openai.base_url],
            capture_output=True, text=True, timeout=60, env={**os.environ, "LLM_LEDGER_LOG_DIR": "off"},
        )  # fmt: skip
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert done.returncode == 0, done.stderr
    spans = [
        span
        for body in receiver.bodies.get("/v1/traces", [])
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert sorted(span.name for span in spans) == ["chat gpt-4o", *["chat gpt-4o-mini"] * 4, "lens batch"]
    (lens,) = [s for s in spans if s.name == "lens batch"]
    (parents,) = [s for s in spans if s.name == "chat gpt-4o"]
    assert parents.parent_span_id == lens.span_id


# another thread is inside the sink's cost counter (holding its lock) at the moment the process forks
# (a pool started by a busy multithreaded service), after the parent spent on a call; the child then
# makes a call through the same sink and reads its own metrics
FORK_WHILE_COUNTING = (
    """
import os, sys, threading, time, openai, llm_ledger
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import capture

reader = InMemoryMetricReader()
sink = OTelSink(TracerProvider(), MeterProvider(metric_readers=[reader]))
monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
HI = [{"role": "user", "content": "hi"}]
with monitor.instrument(openai.OpenAI(api_key="sk-fake", base_url=sys.argv[1], max_retries=0)) as client:
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the parent's spend
"""
    + hold_then_fork("sink._cost._lock")
    + """
if pid == 0:
    client = monitor.instrument(openai.OpenAI(api_key="sk-fake", base_url=sys.argv[1], max_retries=0))
    with capture(monitor) as records:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    data = reader.get_metrics_data()
    cost = sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics if metric.name == "llm_ledger.cost"
        for point in metric.data.data_points
    )
    os.write(1, f"{cost!r} {records.calls[0]['cost']['total_cost_usd']!r}".encode())
    os._exit(0)
"""
    + AWAIT_FORKED_CHILD
)


def test_a_process_forked_while_another_thread_counts_spend_calls_and_reports_its_own_spend(
    fake_openai: FakeOpenAI,
) -> None:
    """A fork copies a lock another thread holds, held for good: the child's calls would hang in the
    sink. The child gets free locks, and its llm_ledger.cost is its own calls' spend: the parent's,
    copied at the fork, is the parent's to report (a child reporting it too counts it twice)."""
    done = warm_python.run(
        [sys.executable, "-c", FORK_WHILE_COUNTING, fake_openai.base_url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reported, own = (float(value) for value in done.stdout.split())
    assert own > 0 and reported == pytest.approx(own)
