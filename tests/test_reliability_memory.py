"""Memory: the ledger's footprint does not grow with a stream's length or with the number of calls."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

import llm_ledger
from llm_ledger.testing import capture
from tests.reliability_helpers import mock_client, record_figures, sized, sse_chunks
from tests.sdk import sdk_http

pytestmark = pytest.mark.reliability

_LEDGER = tracemalloc.Filter(True, "*/llm_ledger/*")
_SAMPLES = 10


def _ledger_bytes() -> int:
    """Bytes currently allocated by lines of llm_ledger (the innermost frame of each allocation)."""
    return sum(
        stat.size for stat in tracemalloc.take_snapshot().filter_traces([_LEDGER]).statistics("filename")
    )


def _warm_up(client: Any) -> None:
    """One short untraced stream, so imports and caches (SDK, price table) do not count as the stream."""
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True
    ):
        pass


def _stream_peak(chunks: int) -> tuple[int, int]:
    """Stream ``chunks`` chunks through an instrumented client; (llm_ledger's peak bytes, process peak bytes).

    llm_ledger's allocations are sampled ``_SAMPLES`` times during the stream.
    """

    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse_chunks("gpt-4o-mini", chunks)
        )

    monitor = llm_ledger.LLMCallMonitor(logger=None)
    every = max(1, chunks // _SAMPLES)
    with mock_client(handler) as client:
        monitor.instrument(client)
        _warm_up(client)
        with capture(monitor) as records:
            gc.collect()
            tracemalloc.start(1)
            try:
                baseline = _ledger_bytes()
                tracemalloc.reset_peak()
                peak = 0
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True
                )
                for seen, _ in enumerate(stream, 1):
                    if seen % every == 0:
                        peak = max(peak, _ledger_bytes() - baseline)
                process_peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    (record,) = records.calls
    assert record["status"] == "ok"
    assert record["response"]["content_length"] == 5 * chunks
    assert record["usage"]["completion_tokens"] == chunks
    return peak, process_peak


def test_a_long_stream_keeps_the_ledger_memory_flat() -> None:
    """llm_ledger holds the same memory at the end of a stream ten times longer (counters, not chunks)."""
    # 1,800 more chunks: a leak of even one list slot (8 bytes) a chunk shows as 14 KiB, far past the
    # 4 KiB of noise allowed below; 5,000 cost more time under tracemalloc and showed nothing more
    long = sized(2_000, 100_000)
    short = long // 10
    short_peak, short_process = _stream_peak(short)
    long_peak, long_process = _stream_peak(long)
    # flat: ten times the chunks may not cost more than a few KiB of sampling noise
    assert long_peak <= short_peak + 4096, (short_peak, long_peak)
    assert long_peak < 64 * 1024
    record_figures(
        "memory: long stream",
        short_chunks=short,
        long_chunks=long,
        ledger_peak_bytes_short=short_peak,
        ledger_peak_bytes_long=long_peak,
        process_peak_bytes_short=short_process,
        process_peak_bytes_long=long_process,
    )


def test_many_calls_leave_nothing_behind() -> None:
    """After thousands of calls (plain, streamed, abandoned streams) the ledger keeps no per-call state."""
    warmup, count = 200, sized(500, 5_000)
    monitor = llm_ledger.LLMCallMonitor(logger=None)

    def run(client: Any, calls: int) -> None:
        for number in range(calls):
            kind = number % 3
            if kind == 0:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
            else:
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
                )
                if kind == 1:
                    for _ in stream:
                        pass
                else:
                    next(iter(stream))
                    del stream  # abandoned: recorded when collected

    with mock_client() as client:
        monitor.instrument(client)
        with capture(monitor) as records:
            run(client, warmup)
            gc.collect()
            tracemalloc.start(1)
            try:
                before = _ledger_bytes()
                with monitor.lens("many"):
                    run(client, count)
                gc.collect()  # streams abandoned since the last collection: recorded now, not after clear()
                records.records.clear()
                gc.collect()
                after = _ledger_bytes()
            finally:
                tracemalloc.stop()
    growth = after - before
    assert growth < 16 * 1024, f"llm_ledger kept {growth} bytes after {count} calls"
    record_figures("memory: many calls", calls=count, ledger_growth_bytes=growth)
