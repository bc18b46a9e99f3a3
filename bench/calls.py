"""Sections 1 and 2: what the ledger adds to a non-streamed call and to each stream chunk.

Variants, interleaved in one process (A B C ..., then reversed, every round):

* ``bare``: the OpenAI SDK alone;
* ``ledger``: the same SDK client instrumented by the default monitor after
  ``llm_ledger.configure(log_dir=<tmp>)`` (JSONL on); every batch ends with ``llm_ledger.flush()``
  inside the timing, so the writer thread's formatting and writing are counted too;
* ``ledger, no file``: a monitor with no logger and a sink that drops each record (building the
  records on the caller's thread, as for any sink);
* ``ledger in a lens``: calls inside one open lens (the per-call roll-up);
* ``ledger, a lens per call``: a lens opened and closed around every call (worst case: one lens
  summary record per call as well).
"""

from __future__ import annotations

import contextvars
import functools
import gc
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai

import llm_ledger
from llm_ledger import _config, _jsonl

from . import _payloads
from ._server import LoopbackServer
from ._table import Table, verdict
from ._timing import Batch, Timings, interleave

API_KEY = "sk-bench-0123456789abcdef"
TARGET_CALL_US = 30.0
TARGET_LENS_US = 10.0
TARGET_CHUNK_US = 2.0


@dataclass
class Sizes:
    calls: int = 200  # calls per variant per round (in-process transport)
    loopback_calls: int = 100
    streams: int = 40  # streams per variant per round
    rounds: int = 15
    chunks: tuple[int, int] = (10, 200)  # two stream lengths: the slope is the cost per chunk


def _discard(record: Any) -> None:
    """A sink that keeps nothing (without any sink, a monitor with no logger builds no records)."""


def client(transport: httpx2.BaseTransport | None = None, base_url: str = "https://api.openai.com/v1") -> Any:
    http = httpx2.Client(transport=transport) if transport is not None else httpx2.Client()
    return openai.OpenAI(api_key=API_KEY, base_url=base_url, http_client=http, max_retries=0)


@contextmanager
def configured_ledger() -> Iterator[Path]:
    """The default monitor, configured as an application would: JSONL on, in a temporary directory."""
    log_dir = Path(tempfile.mkdtemp(prefix="llm-ledger-bench-"))
    try:
        llm_ledger.configure(log_dir=log_dir)
        yield log_dir
    finally:
        llm_ledger.flush()
        llm_ledger.configure(log_dir=None)
        shutil.rmtree(log_dir, ignore_errors=True)


def call_variants(make_client: Callable[[], Any]) -> dict[str, Batch]:
    """The five non-streamed variants, each on its own client built by ``make_client``."""
    bare = make_client()
    ledgered = llm_ledger.instrument(make_client())
    nofile = llm_ledger.LLMCallMonitor(logger=None, sinks=[_discard]).instrument(make_client())
    kwargs = _payloads.chat_kwargs()

    def run(sdk: Any) -> Batch:
        create = sdk.chat.completions.create

        def batch(n: int) -> None:
            for _ in range(n):
                create(**kwargs)

        return batch

    def flushed(inner: Batch) -> Batch:
        def batch(n: int) -> None:
            inner(n)
            llm_ledger.flush()

        return batch

    def in_lens(n: int) -> None:
        create = ledgered.chat.completions.create
        with llm_ledger.lens("bench", source_id=1, service="bench"):
            for _ in range(n):
                create(**kwargs)
        llm_ledger.flush()

    def lens_per_call(n: int) -> None:
        create = ledgered.chat.completions.create
        for i in range(n):
            with llm_ledger.lens("bench", source_id=i, service="bench"):
                create(**kwargs)
        llm_ledger.flush()

    return {
        "bare": run(bare),
        "ledger": flushed(run(ledgered)),
        "ledger, no file": run(nofile),
        "ledger in a lens": in_lens,
        "ledger, a lens per call": lens_per_call,
    }


def _call_rows(table: Table, where: str, t: Timings) -> None:
    for name in t.names:
        row = [where, name, t.median_us(name), t.spread_us(name)]
        if name == "bare":
            row += ["", "", "", t.median_us(name, "wall"), ""]
        else:
            row += [t.added_us(name, "bare"), t.added_min_us(name, "bare"), f"{t.ratio(name, 'bare'):.3f}",
                    t.median_us(name, "wall"), t.added_us(name, "bare", "wall")]  # fmt: skip
        table.add(*row)


def non_streamed(sizes: Sizes) -> tuple[Table, dict[str, float]]:
    """Section 1: non-streamed ``chat.completions.create``, in-process transport and loopback HTTP."""
    table = Table(
        "Non-streamed chat.completions.create: µs per call (median of rounds) and what the ledger adds",
        [
            "transport",
            "variant",
            "CPU µs/call",
            "± (IQR/2)",
            "added CPU µs",
            "added (min rounds)",
            "ratio to bare",
            "wall µs/call",
            "added wall µs",
        ],
    )
    headline: dict[str, float] = {}
    with configured_ledger():
        transport = _payloads.mock_transport()
        mock = interleave(call_variants(lambda: client(transport)), calls=sizes.calls, rounds=sizes.rounds)
        _call_rows(table, "MockTransport", mock)
        with LoopbackServer() as server:
            loop = interleave(
                call_variants(lambda: client(base_url=server.base_url)),
                calls=sizes.loopback_calls,
                rounds=sizes.rounds,
            )
        _call_rows(table, "loopback HTTP", loop)
    added = mock.added_us("ledger", "bare")
    lens = mock.added_us("ledger in a lens", "ledger")
    lens_per_call = mock.added_us("ledger, a lens per call", "ledger")
    headline.update(
        bare_us=mock.median_us("bare"),
        ledger_added_us=added,
        ledger_ratio=mock.ratio("ledger", "bare"),
        lens_added_us=lens,
        lens_per_call_added_us=lens_per_call,
        loopback_bare_us=loop.median_us("bare"),
        loopback_added_us=loop.added_us("ledger", "bare"),
        loopback_ratio=loop.ratio("ledger", "bare"),
    )
    table.notes += [
        f"target: the ledger adds ≤ {TARGET_CALL_US:.0f} µs per call (MockTransport, JSONL on, writer "
        f"thread's work included): {added:.1f} µs, {verdict(added <= TARGET_CALL_US)}",
        f"target: a lens adds ≤ {TARGET_LENS_US:.0f} µs: {lens:.1f} µs per call inside an open lens "
        f"({verdict(lens <= TARGET_LENS_US)}); {lens_per_call:.1f} µs for a lens opened and closed "
        f"around each call, its summary record included ({verdict(lens_per_call <= TARGET_LENS_US)})",
        "loopback HTTP: the server runs in its own process; its answers are the same bytes",
        "added CPU µs: median over rounds of the paired difference (variant - bare in the same round); "
        "added (min rounds): fastest round minus fastest round, steadier when other work shares the cores",
    ]
    return table, headline


def _writer_cpu_ns() -> int:
    """CPU time used so far by the JSONL writer threads of this process, in ns."""
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith("llm-ledger-writer") and thread.ident is not None:
            total += time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
    return total


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def per_call(sizes: Sizes) -> tuple[Table, dict[str, float]]:
    """Section 1, steadier: the variants interleaved call by call, CPU time of each call.

    Rounds of 200 calls move by ±10-20 µs a call on a shared VM (another guest's burst lands in
    one variant's round); timing each call on the calling thread and comparing medians over
    thousands of calls is not moved by such bursts. Nothing is flushed until the end, so lines are
    written as in production: by the call that fills a batch (its time for that is taken out of its
    sample and spread over all calls) and by the writer thread (its CPU time, spread likewise).
    A median leaves out the garbage collector's passes, which land on a few calls: their time over
    the run is added to the ledger's calls too (the bare SDK alone triggers about one in 5,000 calls).
    """
    table = Table(
        "Non-streamed chat.completions.create (MockTransport), interleaved call by call: CPU µs per call",
        [
            "variant",
            "calls",
            "median µs",
            "q1 µs",
            "q3 µs",
            "batches µs/call",
            "writer thread µs/call",
            "gc µs/call",
            "page faults/call",
            "added µs",
            "ratio",
            "added, trimmed mean µs",
        ],
    )
    with configured_ledger():
        handler = _config._handler
        assert handler is not None
        transport = _payloads.mock_transport()
        sdks = {
            "bare": client(transport),
            "ledger": llm_ledger.instrument(client(transport)),
            "ledger, no file": llm_ledger.LLMCallMonitor(logger=None, sinks=[_discard]).instrument(
                client(transport)
            ),
        }
        creates = {name: sdk.chat.completions.create for name, sdk in sdks.items()}
        # the same as "ledger, no file", each call run in a context where one lens stays open
        in_lens = llm_ledger.LLMCallMonitor(logger=None, sinks=[_discard])
        lens_context = contextvars.copy_context()
        lens = in_lens.lens("bench")
        lens_context.run(lens.__enter__)
        lens_create = in_lens.instrument(client(transport)).chat.completions.create
        creates["ledger in a lens, no file"] = functools.partial(lens_context.run, lens_create)
        kwargs = _payloads.chat_kwargs()
        for create in creates.values():
            for _ in range(20):
                create(**kwargs)
        llm_ledger.flush()
        samples: dict[str, list[int]] = {name: [] for name in creates}
        faults = dict.fromkeys(creates, 0)
        items = list(creates.items())
        n = sizes.calls * sizes.rounds
        clock = time.thread_time_ns
        caller = threading.current_thread()
        batches_ns = 0  # batches written on the calling thread
        drain = handler._drain

        def timed_drain(on_caller: bool = False) -> bool:
            nonlocal batches_ns
            if threading.current_thread() is not caller:
                return drain(on_caller)
            started = clock()
            done = drain(on_caller)
            batches_ns += clock() - started
            return done

        gc_ns = 0
        gc_started = 0

        def gc_timer(phase: str, info: dict[str, int]) -> None:
            nonlocal gc_ns, gc_started
            if phase == "start":
                gc_started = time.perf_counter_ns()
            else:
                gc_ns += time.perf_counter_ns() - gc_started

        handler._drain = timed_drain  # type: ignore[method-assign]
        gc.callbacks.append(gc_timer)
        writer_start = _writer_cpu_ns()
        try:
            for index in range(n):
                for name, create in items if index % 2 == 0 else items[::-1]:
                    faulted = _minor_faults()
                    before = batches_ns
                    started = clock()
                    create(**kwargs)
                    samples[name].append(clock() - started - (batches_ns - before))
                    faults[name] += _minor_faults() - faulted
            started = clock()
            llm_ledger.flush()
            batches_ns += clock() - started
            writer_ns = _writer_cpu_ns() - writer_start
        finally:
            gc.callbacks.remove(gc_timer)
            del handler._drain
            lens_context.run(lens.__exit__, None, None, None)
    medians = {name: statistics.median(values) / 1000 for name, values in samples.items()}
    collections = dict.fromkeys(samples, 0.0) | {"ledger": gc_ns / n / 1000}
    batches = dict.fromkeys(samples, 0.0) | {"ledger": batches_ns / n / 1000}
    writer = dict.fromkeys(samples, 0.0) | {"ledger": writer_ns / n / 1000}
    means = {name: _trimmed_mean(values) / 1000 for name, values in samples.items()}
    added = {
        name: medians[name] + batches[name] + writer[name] + collections[name] - medians["bare"]
        for name in samples
    }
    added_mean = {
        name: means[name] + batches[name] + writer[name] + collections[name] - means["bare"]
        for name in samples
    }
    lens_added = added["ledger in a lens, no file"] - added["ledger, no file"]
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        table.add(
            name, n, medians[name], q[0] / 1000, q[2] / 1000, batches[name], writer[name], collections[name],
            f"{faults[name] / n:.2f}", "" if name == "bare" else added[name],
            "" if name == "bare" else f"{1 + added[name] / medians['bare']:.3f}",
            "" if name == "bare" else added_mean[name],
        )  # fmt: skip
    table.notes += [
        f"target: the ledger adds ≤ {TARGET_CALL_US:.0f} µs per call (JSONL on, building and writing the "
        f"lines included): {added['ledger']:.1f} µs, {verdict(added['ledger'] <= TARGET_CALL_US)}",
        f"target: a lens adds ≤ {TARGET_LENS_US:.0f} µs per call inside it: {lens_added:.1f} µs (in a lens "
        f"less no file), {verdict(lens_added <= TARGET_LENS_US)}",
        "median µs: CPU time of the calling thread per call (time.thread_time_ns around each call, less any "
        "batch it wrote), variants interleaved call by call (A B C, then C B A); added = median - bare's "
        "median + batches + writer thread + gc",
        "batches: the batches of lines the calls wrote (one write each 512 lines or 1 MiB) and the final "
        "flush; writer thread: its CPU time; both over the ledger's calls",
        "page faults/call: minor page faults of the calling thread (getrusage), the memory a call had the "
        "kernel hand it (about a µs each, counted by no instruction count); they do not move with the host",
        "gc: the garbage collector's time over the run (all of it counted against the ledger, whose calls "
        "keep their records' inputs alive until their batch), over the ledger's calls",
        f"added, trimmed mean: the same with each variant's mean time, its fastest and slowest "
        f"{_TRIM:.0%} of calls left out (what a few calls pay more shows here, not in a median)",
    ]
    return table, {
        "per_call_bare_us": medians["bare"],
        "per_call_added_us": added["ledger"],
        "per_call_nofile_added_us": added["ledger, no file"],
        "per_call_in_lens_added_us": lens_added,
        "per_call_added_trimmed_mean_us": added_mean["ledger"],
        "per_call_page_faults": faults["ledger"] / n,
    }


def file_lines(sizes: Sizes) -> tuple[Table, dict[str, float]]:
    """The JSONL file alone: one call's record handed to it again and again (``write_record``), CPU
    µs per record on the calling thread (serialising, queueing, its share of the batches) and on the
    writer thread. Steadier than a whole call: no SDK around it. ``batches of 64 kB`` shows the trade:
    the memory of 512 separate lines freed together goes back to the system after each batch (glibc
    trims its heap beyond 128 kB) and is faulted in again, which smaller batches spare here; in whole
    calls they cost more than they save (each wakes the writer thread; bench/RESULTS.md)."""
    table = Table(
        "The JSONL file alone: µs per record of a non-streamed call (write_record in a loop)",
        ["batches", "line bytes", "caller µs/record", "writer thread µs/record", "page faults/record"],
    )
    figures: dict[str, float] = {}
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[])
    records: list[Any] = []
    monitor.add_sink(records.append)
    monitor.instrument(client(_payloads.mock_transport())).chat.completions.create(**_payloads.chat_kwargs())
    (record,) = records
    n = 200 * max(sizes.calls, 1) // 2
    for label, batch_bytes in (("as shipped (512 lines or 1 MiB)", None), ("64 kB", 64 * 1024)):
        with configured_ledger():
            handler = _config._handler
            assert handler is not None
            assert handler._thread.ident is not None
            saved = _jsonl._BATCH_BYTES
            if batch_bytes is not None:
                _jsonl._BATCH_BYTES = batch_bytes
            writer_clock = time.pthread_getcpuclockid(handler._thread.ident)
            try:
                best = (float("inf"), 0.0, 0.0)
                for _ in range(max(sizes.rounds // 3, 2)):
                    gc.collect()
                    writer, faulted = time.clock_gettime(writer_clock), _minor_faults()
                    started = time.thread_time()
                    for _ in range(n):
                        handler.write_record(record)
                    handler.flush()
                    caller = (time.thread_time() - started) / n * 1e6
                    faults = (_minor_faults() - faulted) / n
                    best = min(best, (caller, (time.clock_gettime(writer_clock) - writer) / n * 1e6, faults))
            finally:
                _jsonl._BATCH_BYTES = saved
        line = _jsonl.LedgerJsonFormatter().record_line(record)
        table.add(label, len(line), *best[:2], f"{best[2]:.2f}")
        figures[f"file_caller_us_{'shipped' if batch_bytes is None else '64_kb'}"] = best[0]
    table.notes.append(
        f"{n:,} records per round, the fastest of the rounds; the file is deleted after each variant"
    )
    return table, figures


_TRIM = 0.05


def _trimmed_mean(values: list[int]) -> float:
    """The mean of ``values`` without their lowest and highest ``_TRIM`` (another guest's bursts)."""
    ordered = sorted(values)
    cut = int(len(ordered) * _TRIM)
    kept = ordered[cut : len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


def stream_variants(make_client: Callable[[], Any], caller_asks_usage: bool) -> dict[str, Batch]:
    bare = make_client()
    ledgered = llm_ledger.instrument(make_client())
    extra: dict[str, Any] = {"stream": True}
    if caller_asks_usage:
        extra["stream_options"] = {"include_usage": True}
    kwargs = _payloads.chat_kwargs(**extra)

    def run(sdk: Any, flush: bool) -> Batch:
        create = sdk.chat.completions.create

        def batch(n: int) -> None:
            for _ in range(n):
                for _chunk in create(**kwargs):
                    pass
            if flush:
                llm_ledger.flush()

        return batch

    return {"bare": run(bare, False), "ledger": run(ledgered, True)}


def streamed(sizes: Sizes) -> tuple[Table, dict[str, float]]:
    """Section 2: streamed calls of two lengths; the slope of the added time is the cost per chunk."""
    table = Table(
        "Streamed chat.completions.create (MockTransport): µs per stream and per chunk",
        ["caller asks usage", "content chunks", "bare µs/stream", "ledger µs/stream", "added µs/stream",
         "added µs/chunk (naive)", "ratio"],
    )  # fmt: skip
    headline: dict[str, float] = {}
    short, long = sizes.chunks
    with configured_ledger():
        for asks in (True, False):
            added: dict[int, float] = {}
            for chunks in (short, long):
                transport = _payloads.mock_transport(chunks)
                t = interleave(
                    stream_variants(functools.partial(client, transport), asks),
                    calls=sizes.streams,
                    rounds=sizes.rounds,
                )
                added[chunks] = t.added_us("ledger", "bare")
                table.add("yes" if asks else "no (the ledger asks and hides it)", chunks,
                          t.median_us("bare"), t.median_us("ledger"), added[chunks],
                          added[chunks] / (chunks + 2), f"{t.ratio('ledger', 'bare'):.3f}")  # fmt: skip
            slope = (added[long] - added[short]) / (long - short)
            fixed = added[short] - slope * short
            key = "asks" if asks else "default"
            headline[f"chunk_us_{key}"] = slope
            headline[f"stream_fixed_us_{key}"] = fixed
            headline[f"stream_added_us_{key}_{long}"] = added[long]
    per_chunk = headline["chunk_us_asks"]
    table.notes += [
        f"per chunk (slope between {short} and {long} chunks, caller asks usage): {per_chunk:.2f} µs; "
        f"fixed per stream: {headline['stream_fixed_us_asks']:.1f} µs; "
        f"target ≤ {TARGET_CHUNK_US:.0f} µs per chunk: {verdict(per_chunk <= TARGET_CHUNK_US)}",
        f"when the caller does not ask for usage the ledger asks on its behalf (the request is copied and "
        f"one more chunk is parsed by the SDK, then hidden): per chunk {headline['chunk_us_default']:.2f} µs,"
        f" fixed per stream {headline['stream_fixed_us_default']:.1f} µs",
        "naive per chunk = added per stream / (content chunks + role and finish chunks)",
    ]
    return table, headline
