"""Section ``exporters``: what each exporter adds to a call, beside the OTel openai-v2 instrumentation.

Three worker processes, each timing its variants interleaved call by call on the calling thread
(as ``calls.per_call`` does), on the in-process transport. Each exporter has a process of its own:
interleaved with the OTel sink's heavy calls, the Prometheus sink's calls ran on caches the OTel
calls had just displaced; openai-v2 patches the SDK's classes for the whole process, and the OTel
sink steps aside for an active openai-v2.

* ``prometheus``: ``bare`` SDK; ``ledger, no exporter`` (a monitor with no file and a sink that
  drops each record: building the records); ``+ PrometheusSink`` (its own registry).
* ``otel``: the same two, and ``+ OTelSink`` (SDK ``TracerProvider`` with a ``BatchSpanProcessor``
  into an exporter that drops spans, SDK ``MeterProvider`` with an ``InMemoryMetricReader``).
  Calls are made outside any lens, so each call's span is made when the call ends.
* ``openai-v2``: ``bare`` (the SDK's own, unpatched ``create``) and ``openai-v2`` on the same
  kind of providers.

An exporter's cost is its variant's median minus ``ledger, no exporter``'s (the records are built
either way); openai-v2's is its median minus ``bare``'s. The CPU time of the span processor's
thread is added to the variant that feeds it.

Worker: ``python -m bench.exporters prometheus|otel|openai-v2 ... --calls N`` prints a ``RESULT name {json}``
line for each worker named, in turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ._server import REPO, child_env
from ._table import Table, verdict

TARGET_PROMETHEUS_US = 10.0
WORKERS = ("prometheus", "otel", "openai-v2")


def _providers() -> tuple[Any, Any]:
    """An SDK tracer provider whose batch processor drops every span, and a meter provider read in memory."""
    from opentelemetry.sdk.metrics import MeterProvider  # type: ignore[import-not-found,unused-ignore]
    from opentelemetry.sdk.metrics.export import (  # type: ignore[import-not-found,unused-ignore]
        InMemoryMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found,unused-ignore]
    from opentelemetry.sdk.trace.export import (  # type: ignore[import-not-found,unused-ignore]
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):  # type: ignore[misc,unused-ignore]
        def export(self, spans: Sequence[Any]) -> Any:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def _other_threads_cpu_ns() -> int:
    """CPU time used so far by every thread of this process but the caller's."""
    total = 0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.ident is not None:
            try:
                total += time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # the thread ended meanwhile
                pass
    return total


def _variants(worker: str) -> tuple[dict[str, Callable[..., Any]], str, dict[str, list[int]]]:
    """The creates to time, the variant the background threads' CPU is charged to, and the time each
    ledger variant's sink took, call by call (the no-exporter variant's sink does nothing: its time
    is the clock's own)."""
    import llm_ledger

    from . import _payloads
    from .calls import client

    transport = _payloads.mock_transport()
    if worker in ("prometheus", "otel"):
        from prometheus_client import CollectorRegistry

        from llm_ledger.exporters import OTelSink, PrometheusSink

        in_sink: dict[str, list[int]] = {}

        def ledgered(name: str, sink: Callable[[Any], None]) -> Any:
            spent = in_sink.setdefault(name, [])
            clock = time.thread_time_ns

            def timed(record: Any) -> None:
                started = clock()
                sink(record)
                spent.append(clock() - started)

            monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[timed])
            return monitor.instrument(client(transport)).chat.completions.create

        sink = PrometheusSink(CollectorRegistry()) if worker == "prometheus" else OTelSink(*_providers())
        variant = f"+ {type(sink).__name__}"
        creates = {
            "bare": client(transport).chat.completions.create,
            "ledger, no exporter": ledgered("ledger, no exporter", lambda record: None),
            variant: ledgered(variant, sink),
        }
        return creates, variant, in_sink
    from opentelemetry.instrumentation.openai_v2 import (  # type: ignore[import-not-found,unused-ignore]
        OpenAIInstrumentor,
    )

    from .peers import Setup, _bare_create

    tracer_provider, meter_provider = _providers()
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrumented = client(transport)
    return (
        {
            "bare": _bare_create(Setup(instrumented, lambda: None)),
            "openai-v2": instrumented.chat.completions.create,
        },
        "openai-v2",
        {},
    )


def worker(name: str, calls: int) -> dict[str, Any]:
    from . import _payloads

    creates, background, in_sink = _variants(name)
    kwargs = _payloads.chat_kwargs()
    for create in creates.values():
        for _ in range(min(50, calls)):  # never more warm-up than measured calls (--quick's few)
            create(**kwargs)
    for spent in in_sink.values():
        spent.clear()
    samples: dict[str, list[int]] = {variant: [] for variant in creates}
    items = list(creates.items())
    clock = time.thread_time_ns
    others = _other_threads_cpu_ns()
    for index in range(calls):
        for variant, create in items if index % 2 == 0 else items[::-1]:
            started = clock()
            create(**kwargs)
            samples[variant].append(clock() - started)
    others = _other_threads_cpu_ns() - others
    out: dict[str, Any] = {"calls": calls, "background_us": others / calls / 1000}
    for variant, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4)
        extra = others if variant == background else 0
        out[variant] = {"median_us": (median + extra / calls) / 1000, "q1_us": q1 / 1000, "q3_us": q3 / 1000}
        if variant in in_sink:
            spent, idle = in_sink[variant], in_sink["ledger, no exporter"]
            out[variant]["in_sink_median_us"] = (statistics.median(spent) - statistics.median(idle)) / 1000
            out[variant]["in_sink_mean_us"] = (
                statistics.fmean(spent) - statistics.fmean(idle) + extra / calls
            ) / 1000
    return out


def _run_workers(names: Sequence[str], calls: int) -> dict[str, dict[str, Any] | str]:
    """Each worker's figures, or why it gave none, from one process running ``names`` in turn."""
    command = [sys.executable, "-m", "bench.exporters", *names, "--calls", str(calls)]
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=3600
        )
    except subprocess.TimeoutExpired:
        return dict.fromkeys(names, "timed out")
    results: dict[str, dict[str, Any] | str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            name, _, data = line[7:].partition(" ")
            results[name] = json.loads(data)
    reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {name: results.get(name, reason) for name in names}


def measure(calls: int, repeats: int, quick: bool = False) -> tuple[Table, dict[str, float]]:
    """Run each worker ``repeats`` times, alternately; report the median of their figures.

    ``quick`` runs the workers one after another in a single process (openai-v2, which patches the
    SDK, last): it proves they work and measures nothing, and interpreter start-up is most of its time.
    """
    table = Table(
        "Exporters: CPU µs added per non-streamed call (MockTransport, interleaved call by call)",
        [
            "variant",
            "calls",
            "median µs",
            "q1 µs",
            "q3 µs",
            "added µs",
            "added over",
            "runs (added µs)",
            "in the sink µs (median / mean)",
        ],
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKERS}
    failed: dict[str, str] = {}
    batches = [WORKERS] if quick else [(name,) for name in WORKERS]
    for _ in range(repeats):
        for batch in batches:
            for name, result in _run_workers(batch, calls).items():
                if isinstance(result, str):
                    failed[name] = result
                else:
                    runs[name].append(result)
    bases = {"ledger, no exporter": "bare", "+ PrometheusSink": "ledger, no exporter",
             "+ OTelSink": "ledger, no exporter", "openai-v2": "bare"}  # fmt: skip
    headline: dict[str, float] = {}
    for name in WORKERS:
        if name in failed or not runs[name]:
            table.add(name, "", "", "", "", "", "", f"failed: {failed.get(name, 'no run')}", "")
            continue
        results = runs[name]
        for variant in results[0]:
            if variant in ("calls", "background_us"):
                continue
            figure = {
                k: statistics.median(r[variant][k] for r in results) for k in ("median_us", "q1_us", "q3_us")
            }
            base = bases.get(variant)
            added = [r[variant]["median_us"] - r[base]["median_us"] for r in results] if base else []
            label = f"{variant} ({name} worker)" if variant in ("bare", "ledger, no exporter") else variant
            inside_cell = ""
            if "in_sink_median_us" in results[0][variant] and variant != "ledger, no exporter":
                inside_median = statistics.median(r[variant]["in_sink_median_us"] for r in results)
                inside_mean = statistics.median(r[variant]["in_sink_mean_us"] for r in results)
                inside_cell = f"{inside_median:.1f} / {inside_mean:.1f}"
                key = variant.strip("+ ").lower().replace(" ", "_")
                headline[f"exporter_in_sink_us_{key}"] = inside_median
            table.add(label, results[0]["calls"] * len(results), figure["median_us"], figure["q1_us"],
                      figure["q3_us"], statistics.median(added) if added else "", base or "",
                      ", ".join(f"{a:.1f}" for a in added), inside_cell)  # fmt: skip
            if added:
                key = variant.strip("+ ").lower().replace(" ", "_")
                headline[f"exporter_added_us_{key}"] = statistics.median(added)
    prometheus = headline.get("exporter_added_us_prometheussink")
    otel = headline.get("exporter_added_us_otelsink")
    v2 = headline.get("exporter_added_us_openai-v2")
    inside = headline.get("exporter_in_sink_us_prometheussink")
    if prometheus is not None and inside is not None:
        table.notes.append(
            f"target: PrometheusSink adds ≤ {TARGET_PROMETHEUS_US:.0f} µs per call: {prometheus:.1f} µs "
            f"call by call ({verdict(prometheus <= TARGET_PROMETHEUS_US)}), {inside:.1f} µs inside the sink "
            f"({verdict(inside <= TARGET_PROMETHEUS_US)})"
        )
    if otel is not None and v2 is not None:
        table.notes.append(
            f"target: OTelSink adds no more than openai-v2 itself: {otel:.1f} µs against {v2:.1f} µs, "
            f"{verdict(otel <= v2)}"
        )
    table.notes += [
        "median µs: CPU time of the calling thread per call (time.thread_time_ns), variants interleaved "
        "call by call (A B C, then C B A); the span processor thread's CPU time over the run is added "
        "to the exporter's variant of its worker (the span processor's, for OTelSink and openai-v2)",
        "in the sink: the time each record spent in the sink, timed around it in place (between real calls, "
        "so on the caches those calls leave), less the same timing around a sink that does nothing; the "
        "mean includes the span processor thread's time; the call-by-call figure also counts what the "
        "sink's work costs the SDK's own next steps (caches it displaced), and moves with the host's load",
        "each worker runs in its own process, alternately; figures are medians over the runs, and the last "
        "column gives every run's added µs (how much they move on this host)",
        "OTel providers: SDK TracerProvider with a BatchSpanProcessor into an exporter that drops the spans, "
        "SDK MeterProvider with an InMemoryMetricReader; calls outside any lens; no content capture",
    ]
    return table, headline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("worker", nargs="+", choices=WORKERS, help="run in turn (openai-v2 last: it patches)")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    for name in args.worker:
        try:
            result = worker(name, args.calls)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        print(f"RESULT {name} " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
