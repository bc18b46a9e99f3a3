"""OTelSink when the application's OpenTelemetry pipeline fails: a span processor that raises on one
span costs that span only (not its lens's other calls), the call is unaffected, and it is said once."""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llm_ledger
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hello"}]


class RaisesOnGpt4o(SpanProcessor):
    """An application's span processor with a bug: it raises on the spans of one model (the SDK runs
    the processors in turn and lets the exception out of ``span.end()``)."""

    def on_end(self, span: ReadableSpan) -> None:
        if (span.attributes or {}).get("gen_ai.request.model") == "gpt-4o":
            raise RuntimeError("the application's span processor failed")

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        pass


def test_a_span_processor_raising_on_one_call_costs_that_span_only(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Two lens runs of three calls each, the middle one's span made to raise by the application's
    span processor: every call returns its answer, every other span (the lens's, its other calls')
    is exported under its lens, and llm_ledger.internal says so once."""
    spans_out = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RaisesOnGpt4o())  # first: the later processors never see that span
    provider.add_span_processor(SimpleSpanProcessor(spans_out))
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(provider)])
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    with raw, capture(monitor) as records, caplog.at_level(logging.WARNING, "llm_ledger.internal"):
        client = monitor.instrument(raw)
        for run in ("first", "second"):
            with monitor.lens(run):
                for model in ("gpt-4o-mini", "gpt-4o", "o3-mini"):
                    answer = client.chat.completions.create(model=model, messages=HI)
                    assert answer.choices[0].message.content
    assert [call["status"] for call in records.calls] == ["ok"] * 6
    spans = spans_out.get_finished_spans()
    lenses = {span.name: span for span in spans if span.name.startswith("lens ")}
    assert set(lenses) == {"lens first", "lens second"}
    calls = [
        (span.parent.span_id if span.parent else None, span.name)
        for span in spans
        if span not in lenses.values()
    ]
    assert sorted(calls) == sorted(
        (lenses[f"lens {run}"].context.span_id, name)
        for run in ("first", "second")
        for name in ("chat gpt-4o-mini", "chat o3-mini")
    )
    said = [
        r.getMessage() for r in caplog.records if "the application's span processor failed" in r.getMessage()
    ]
    assert len(said) == 1 and "the monitored call is unaffected" in said[0], said
