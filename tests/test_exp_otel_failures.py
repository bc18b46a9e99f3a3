"""OTelSink when the application's OpenTelemetry pipeline fails: a span processor that raises on one
span costs that span only (not its lens's other calls), the call is unaffected, and it is said once;
an OTLP endpoint that is down leaves the calls alone."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llm_ledger
from llm_ledger.exporters import OTelSink
from llm_ledger.testing import FakeOpenAI, capture
from tests import warm_python
from tests.conftest import FAKE_KEY
from tests.test_exp_docs_recipes import recipe

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


class RaisesOnLensStart(SpanProcessor):
    """An application's span processor with a bug on the lens spans: it raises as one starts (the SDK
    lets the exception out of ``start_span()``)."""

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        if span.name.startswith("lens "):
            raise RuntimeError("the application's span processor failed")


def test_a_span_processor_raising_on_a_lens_span_still_lets_its_calls_spans_out(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """The lens span cannot be made: its calls' spans, which waited for it, are exported under the
    span the lens ended in (the application's request span), not lost, and llm_ledger.internal says so."""
    spans_out = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RaisesOnLensStart())
    provider.add_span_processor(SimpleSpanProcessor(spans_out))
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(provider)])
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    with raw, caplog.at_level(logging.WARNING, "llm_ledger.internal"):
        client = monitor.instrument(raw)
        with provider.get_tracer("app").start_as_current_span("request") as request, monitor.lens("summary"):
            for model in ("gpt-4o-mini", "o3-mini"):
                client.chat.completions.create(model=model, messages=HI)
    spans = {span.name: span for span in spans_out.get_finished_spans()}
    assert set(spans) == {"request", "chat gpt-4o-mini", "chat o3-mini"}
    for name in ("chat gpt-4o-mini", "chat o3-mini"):
        parent = spans[name].parent
        assert parent is not None and parent.span_id == request.get_span_context().span_id
    said = [
        r.getMessage() for r in caplog.records if "the application's span processor failed" in r.getMessage()
    ]
    assert len(said) == 1, said


def test_the_otlp_recipe_with_the_endpoint_down_leaves_the_calls_alone(
    fake_openai: FakeOpenAI, tmp_path: Path, refused_port: int
) -> None:
    """The "Sending to an OTLP endpoint" block with nothing listening at OTEL_EXPORTER_OTLP_ENDPOINT
    (a Collector down): the application's calls in a lens return their answers, the process exits
    normally within OTEL_EXPORTER_OTLP_TIMEOUT per provider, and the failure is the SDK's to log,
    nothing of llm-ledger's."""
    app = recipe("**Sending to an OTLP endpoint**") + textwrap.dedent(
        f"""
        import openai
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-test", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        with llm_ledger.lens("checkout_summary"):
            for _ in range(3):
                answer = client.chat.completions.create(model="gpt-4o-mini", messages=hi)
                print(answer.choices[0].message.content is not None)
        """
    )
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{refused_port}",  # nothing listens there
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "LLM_LEDGER_LOG_DIR": "off",
    }
    started = time.monotonic()
    done = warm_python.run(
        [sys.executable, "-c", app], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 3
    assert time.monotonic() - started < 20, done.stderr  # two providers, at most a second each, and start-up
    # the SDK says so: "Failed to export" (newer SDKs), or a traceback "Exception while exporting" (1.38)
    assert "Failed to export" in done.stderr or "Exception while exporting" in done.stderr, done.stderr
    assert "llm-ledger" not in done.stderr and "llm_ledger" not in done.stderr, done.stderr
