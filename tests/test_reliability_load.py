"""Under load nothing is lost or misattributed: concurrent lenses, many processes on one file, rotation."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger.testing import FakeOpenAI, capture
from tests import warm_python
from tests.reliability_helpers import FAKE_KEY, child_env, read_lines, record_figures, sized

pytestmark = [pytest.mark.reliability, pytest.mark.sdk_independent]  # writer and lenses, any SDK


@pytest.mark.asyncio
async def test_concurrent_calls_are_attributed_to_their_lens(fake_openai: FakeOpenAI) -> None:
    """Calls from many lenses in flight at once each land in their own lens, and summaries add up."""
    calls, lenses = sized(200, 1000), sized(20, 100)
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    failed = 0

    async def one_call(client: openai.AsyncOpenAI, number: int) -> None:
        nonlocal failed
        headers = {"x-fake-status": "400"} if number % 10 == 7 else {}  # a tenth of the calls fail
        with monitor.track_llm_call(call=number):
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "word " * (number % 13 + 1)}],
                    extra_headers=headers,
                )
            except openai.BadRequestError:
                failed += 1

    async def one_lens(client: openai.AsyncOpenAI, index: int) -> None:
        async with monitor.lens(f"lens-{index}", source_id=index):
            await asyncio.gather(*(one_call(client, n) for n in range(index, calls, lenses)))

    started = time.perf_counter()
    raw = openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    async with raw:
        client = monitor.instrument(raw)
        with capture(monitor) as records:
            await asyncio.gather(*(one_lens(client, index) for index in range(lenses)))
    elapsed = time.perf_counter() - started

    assert len(fake_openai.requests) == calls
    call_records = records.calls
    assert sorted(r["context"]["call"] for r in call_records) == list(range(calls))
    for record in call_records:
        assert record["context"]["lens_key"] == f"lens-{record['context']['call'] % lenses}"
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in call_records:
        by_run[record["context"]["lens_run_id"]].append(record)
    summaries = records.lenses
    assert len(summaries) == lenses == len(by_run)
    for lens_record in summaries:
        mine = by_run[lens_record["context"]["lens_run_id"]]
        summary = lens_record["summary"]
        assert {r["context"]["lens_key"] for r in mine} == {lens_record["context"]["lens_key"]}
        assert summary["total_api_calls"] == len(mine)
        assert summary["errors"] == sum(r["status"] == "error" for r in mine)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert summary[key] == sum(r["usage"][key] or 0 for r in mine), key
        costs = [r["cost"]["total_cost_usd"] or 0.0 for r in mine]
        assert math.isclose(summary["total_cost_usd"], math.fsum(costs), rel_tol=1e-9, abs_tol=1e-15)
    assert sum(r["status"] == "error" for r in call_records) == failed == len(range(7, calls, 10))
    record_figures(
        "load: concurrent async calls over real HTTP",
        calls=calls,
        lenses=lenses,
        failed_calls=failed,
        misattributed=0,
        seconds=round(elapsed, 2),
    )


def _spawn(log_dir: Path, proc: int, threads: int, calls: int, ending: str = "flush") -> warm_python.Process:
    command = [sys.executable, "-m", "tests.reliability_helpers", "write", str(log_dir)]
    command += [str(proc), str(threads), str(calls), ending]
    return warm_python.popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _spawn_processes(log_dir: Path, procs: int, threads: int, calls: int) -> warm_python.Process:
    """One child whose ``procs`` processes (forked, each with its own configure()) write at once."""
    command = [sys.executable, "-m", "tests.reliability_helpers", "write-forked", str(log_dir)]
    command += [str(procs), str(threads), str(calls)]
    return warm_python.popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(children: list[warm_python.Process], *, status: int = 0) -> None:
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == status, err.decode(errors="replace")


def _assert_every_call_once(lines: list[dict[str, Any]], procs: int, threads: int, calls: int) -> None:
    seen = Counter((r["context"]["proc"], r["context"]["thread"], r["context"]["i"]) for r in lines)
    expected = {(p, t, i) for p in range(procs) for t in range(threads) for i in range(calls)}
    assert set(seen) == expected
    assert max(seen.values()) == 1


def test_processes_and_threads_share_one_file_without_losing_a_line(tmp_path: Path) -> None:
    """Several processes x threads appending to one llm_calls.jsonl leave exactly one whole line per call."""
    procs, threads, calls = 4, 8, sized(40, 5000)
    started = time.perf_counter()
    _wait([_spawn_processes(tmp_path, procs, threads, calls)])
    elapsed = time.perf_counter() - started
    lines = read_lines(tmp_path / "llm_calls.jsonl")
    assert len(lines) == procs * threads * calls
    _assert_every_call_once(lines, procs, threads, calls)
    record_figures(
        "load: processes x threads on one JSONL file",
        processes=procs,
        threads=threads,
        calls_per_thread=calls,
        lines_written=len(lines),
        lines_lost=procs * threads * calls - len(lines),
        seconds=round(elapsed, 2),
    )


def test_rotation_in_create_mode_loses_no_line(tmp_path: Path) -> None:
    """Renaming the shared file again and again while processes write (logrotate `create`) loses nothing."""
    procs, threads, calls = 4, 8, sized(60, 5000)
    path = tmp_path / "llm_calls.jsonl"
    children = [_spawn_processes(tmp_path, procs, threads, calls)]
    rotations = 0
    while any(child.poll() is None for child in children):
        time.sleep(0.02)
        if path.exists():
            rotations += 1
            os.rename(path, tmp_path / f"llm_calls.jsonl.{rotations}")
            path.touch()  # logrotate's `create`: a fresh empty file under the old name
    _wait(children)
    files = sorted(tmp_path.glob("llm_calls.jsonl*"))
    lines = read_lines(*files)
    assert len(lines) == procs * threads * calls
    _assert_every_call_once(lines, procs, threads, calls)
    assert rotations >= 3
    assert sum(1 for f in files if f.stat().st_size) >= 2, "no write reached a file created after a rotation"
    record_figures(
        "load: rotation (rename + create) while processes write",
        processes=procs,
        threads=threads,
        calls_per_thread=calls,
        rotations=rotations,
        files=len(files),
        lines_written=len(lines),
        lines_lost=procs * threads * calls - len(lines),
    )


@pytest.mark.parametrize("ending", ["return", "sys.exit", "raise"])
def test_records_queued_at_exit_are_written(tmp_path: Path, ending: str) -> None:
    """A process exiting without flush() (normally, by sys.exit, by an uncaught exception) loses nothing."""
    threads, calls = 4, sized(50, 500)
    child = _spawn(tmp_path, 0, threads, calls, ending)
    _wait([child], status={"return": 0, "sys.exit": 3, "raise": 1}[ending])
    lines = read_lines(tmp_path / "llm_calls.jsonl")
    assert len(lines) == threads * calls
    _assert_every_call_once(lines, 1, threads, calls)
    record_figures(
        f"exit without flush ({ending})", calls=threads * calls, lines_lost=threads * calls - len(lines)
    )
