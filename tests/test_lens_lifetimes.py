"""Every call counts in the lens it began in: streams read after the block, threads, generators;
and nothing a call carries makes a lens or a record fail."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import textwrap
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger.report import summarise_records
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY

HI: Any = [{"role": "user", "content": "hi"}]


def _sums(calls: list[dict[str, Any]]) -> tuple[int, int, float]:
    return (
        len(calls),
        sum(c["usage"]["total_tokens"] for c in calls),
        sum(c["cost"]["total_cost_usd"] for c in calls),
    )


def test_a_stream_read_after_its_lens_ended_counts_in_it(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A stream opened in a lens and read after it (a web handler's streaming response) shows as
    open in the summary at the block's end; the lens record, written when it ends, counts it."""
    with monitor.lens("handler") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert run.summary is not None
    at_exit = run.summary
    assert at_exit["open_calls"] == 1 and at_exit["total_api_calls"] == 1
    assert at_exit["cost_complete"] is False
    assert records.lenses == []  # not written yet: it would be missing the stream
    for _ in stream:
        pass
    (lens,) = records.lenses
    calls = records.calls
    assert all(c["context"]["lens_run_id"] == run.run_id for c in calls)
    summary = lens["summary"]
    assert (summary["total_api_calls"], summary["total_tokens"]) == _sums(calls)[:2]
    assert summary["total_cost_usd"] == pytest.approx(_sums(calls)[2])
    assert summary["open_calls"] == 0 and summary["cost_complete"] is True
    assert run.summary == summary and lens["context"]["lens_run_id"] == run.run_id


@pytest.mark.asyncio
async def test_an_async_stream_closed_after_its_lens_ended_counts_in_it(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An async stream left open by the block and closed later ends the lens run as interrupted."""
    async with monitor.lens("handler") as run:
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert run.summary is not None and run.summary["open_calls"] == 1
    await stream.close()
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 1 and lens["summary"]["open_calls"] == 0
    assert records.calls[0]["status"] == "interrupted"


@pytest.mark.asyncio
async def test_a_lens_in_an_abandoned_async_generator_ends_with_its_calls_and_no_false_warning(
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """An SSE handler's async generator that opens a lens and yields its stream's chunks, abandoned
    by a web client that disconnected: asyncio closes it later in a task of its own (its finalizer
    hook does so when the generator is collected). The lens's record counts its call, and nothing
    says its calls counted in no run of it."""

    async def relay() -> AsyncGenerator[str]:
        async with monitor.lens("relay"):
            stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
            async for chunk in stream:
                yield chunk.id

    generator = relay()
    await generator.__anext__()  # the client read one event, then went away
    await asyncio.create_task(generator.aclose())  # as asyncio's finalizer hook closes it
    del generator
    for _ in range(3):  # the stream it left open is a cycle (the SDK's), whose iterators asyncio closes
        gc.collect()
        await asyncio.sleep(0.01)
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 1
    assert [r.getMessage() for r in internal_log.records] == []


def _forked_in_a_lens(fake_openai: FakeOpenAI, log_dir: Path, forking: str) -> tuple[str, list[Any]]:
    """Run ``forking`` (indented code forking inside a lens ``run`` after one call, ``call()`` making
    another) in a Python of its own writing to ``log_dir``: its output and the file's records."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, openai, llm_ledger
        llm_ledger.configure(log_dir={str(log_dir)!r})
        hi = [{{"role": "user", "content": "hi"}}]
        def call():
            client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        with llm_ledger.lens("forks") as run:
            call()
        """
    ) + textwrap.indent(textwrap.dedent(forking), "    ")
    done = warm_python.run(
        [sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True
    )
    return done.stdout, [json.loads(x) for x in (log_dir / "llm_calls.jsonl").read_text().splitlines()]


def test_a_child_forked_inside_a_lens_never_writes_that_lens_run_again(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A process forked inside a lens whose child leaves through the block (``sys.exit()``, an
    exception): the run is the parent's, so only the parent writes its ``lens_summary``, with its own
    calls; the child writes its own call, never a second record of the run, with the parent's calls
    counted again under the same ``lens_run_id``."""
    _, lines = _forked_in_a_lens(
        fake_openai,
        tmp_path,
        """
        pid = os.fork()
        if pid == 0:
            call()
            sys.exit(0)
        os.waitpid(pid, 0)
        """,
    )
    calls = [line for line in lines if line["event"] == "llm_api_call"]
    lenses = [line for line in lines if line["event"] == "lens_summary"]
    assert len(calls) == 2
    assert [lens["summary"]["total_api_calls"] for lens in lenses] == [1]


def test_a_child_forked_inside_a_lens_counts_its_calls_in_none_of_its_parents_runs(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A child forked inside a lens (a worker pool started in it) while another thread of the parent
    was counting a call in that run: the child's calls carry the run's context, yet count in no run
    of its parent's (it could never write them), so the child never waits on the parent's counting,
    which no thread of the child will ever finish (the lock held at the fork is simulated here)."""
    output, lines = _forked_in_a_lens(
        fake_openai,
        tmp_path,
        """
        run._totals._lock.acquire()  # as another thread of the parent counting a call at the fork
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a child stuck on the lock dies, and the test fails, rather than hang
            call()
            llm_ledger.flush()
            os._exit(0)
        run._totals._lock.release()
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
    )
    assert output.split() == ["0"]
    calls = [line for line in lines if line["event"] == "llm_api_call"]
    [lens] = [line for line in lines if line["event"] == "lens_summary"]
    assert [call["context"]["lens_run_id"] for call in calls] == [lens["context"]["lens_run_id"]] * 2
    assert lens["summary"]["total_api_calls"] == 1


# Where the collector finds an abandoned stream while the ledger holds a lock that recording it takes:
# a lens run's totals (the stream counts in the run whose summary is being built), the anomaly
# detector's baselines (the stream ends a lens run that ended before, whose record is then judged)
_COLLECTED_INSIDE = {
    "LensTotals._summary": """
        with llm_ledger.lens("same"):
            abandon()
            sys.setprofile(collect_in)
    """,
    "AnomalyDetector._first_of_process": """
        with llm_ledger.lens("relayed"):
            abandon()
        sys.setprofile(collect_in)
        with llm_ledger.lens("next"):
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    """,
}


@pytest.mark.parametrize("where", list(_COLLECTED_INSIDE))
def test_the_collector_recording_an_abandoned_stream_inside_the_ledger_never_hangs(
    fake_openai: FakeOpenAI, tmp_path: Path, where: str
) -> None:
    """The collector runs at any allocation, the ledger's own included, and a stream a web client
    abandoned (a cycle, as the SDK's stream is) is recorded when it is collected. Made to run where the
    ledger holds a lock that recording takes (here by a profile hook, at the allocation of ``where``):
    the thread goes on, and the stream and its lens are written."""
    script = textwrap.dedent(
        f"""
        import gc, sys, openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r}, anomalies=True)
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        gc.disable()  # collected where the hook says, not before

        def abandon():
            kept = [client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)]
            next(kept[0])
            kept.append(kept)

        def collect_in(frame, event, arg):
            if event == "call" and frame.f_code.co_qualname == {where!r}:
                sys.setprofile(None)
                gc.collect()
        """
    ) + textwrap.dedent(_COLLECTED_INSIDE[where])
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=30)
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert "interrupted" in [line.get("status") for line in lines]
    lenses = [line["summary"] for line in lines if line["event"] == "lens_summary"]
    assert len(lenses) == len(_COLLECTED_INSIDE[where].split("lens(")) - 1
    assert sum(summary["total_api_calls"] for summary in lenses) == len(lines) - len(lenses)


def test_a_process_exiting_while_a_collected_stream_is_recorded_apart_writes_it_and_its_lens(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The collector's recording of an abandoned stream runs on a thread of its own, waited for a
    second; a process that ends while that thread still records (here behind a slow sink) waits for
    it at exit: the stream's call and its lens run, whose record it completes, are written."""
    script = textwrap.dedent(
        f"""
        import gc, time, openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        llm_ledger.get_monitor().add_sink(lambda record: record["event"] == "llm_api_call" and time.sleep(2))
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}))
        gc.disable()
        with llm_ledger.lens("short"):
            kept = [client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True)]
            next(kept[0])
            kept.append(kept)  # abandoned in a cycle, as the SDK's stream is
            del kept
            gc.collect()
        """
    )
    warm_python.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent.parent, timeout=30)
    lines = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert [(line["event"], line.get("status")) for line in lines] == [
        ("llm_api_call", "interrupted"),
        ("lens_summary", None),
    ]
    assert lines[1]["summary"]["total_api_calls"] == 1


def test_a_call_started_after_its_lens_ended_counts_in_no_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Work a lens handed to a thread that only starts its call after the lens ended is not
    counted in it: its record carries the lens's key and context but no run id, so a report over the
    log finds one whole run of the lens, not a second one cut short."""
    started = threading.Event()

    def late_call() -> None:
        started.wait(5)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with monitor.lens("fan_out") as run:
        worker = threading.Thread(target=llm_ledger.propagate(late_call))
        worker.start()
    started.set()
    worker.join(5)
    assert run.summary is not None and run.summary["total_api_calls"] == 0
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 0
    [late] = records.calls
    assert late["context"]["lens_key"] == "fan_out" and "lens_run_id" not in late["context"]
    [row] = summarise_records(records, by="lens").rows
    assert (row.lens_runs, row.cut_short_runs, row.calls) == (1, 0, 1)


@pytest.mark.asyncio
async def test_a_task_calling_after_its_inner_lens_ended_is_filed_under_the_run_that_counts_it(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A task made in an inner lens that calls once it ended, the outer one still open, counts in the
    outer run alone, and its record names that run: each summary is the sum of the calls its record
    and its nested runs' name, and a report over the log finds no run cut short."""
    inner_ended = asyncio.Event()

    async def later() -> None:
        await inner_ended.wait()
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)

    async with monitor.lens("outer") as outer:
        async with monitor.lens("inner") as inner:
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
            task = asyncio.create_task(later())
        inner_ended.set()
        await task
    assert outer.summary is not None and inner.summary is not None
    assert (outer.summary["total_api_calls"], inner.summary["total_api_calls"]) == (2, 1)
    for run, ids in ((outer, {outer.run_id, inner.run_id}), (inner, {inner.run_id})):
        mine = [c for c in records.calls if c["context"].get("lens_run_id") in ids]
        assert run.summary is not None
        calls, tokens, cost = _sums(mine)
        assert (calls, tokens) == (run.summary["total_api_calls"], run.summary["total_tokens"])
        assert cost == pytest.approx(run.summary["total_cost_usd"])
    late = records.calls[-1]["context"]
    assert (late["lens_key"], late["lens_run_id"], late.get("parent_lens_run_id")) == (
        "outer",
        outer.run_id,
        None,
    )
    report = summarise_records(records, by="lens")
    assert report.total.cut_short_runs == 0 and report.total.lens_runs == 2 and report.total.calls == 2


@pytest.mark.asyncio
async def test_asyncio_to_thread_carries_the_lens_by_itself(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """As the README says: ``asyncio.to_thread`` copies the context, so a sync call run through it
    counts in the lens without ``propagate``."""

    def call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    async with monitor.lens("to_thread") as run:
        await asyncio.gather(asyncio.to_thread(call), asyncio.to_thread(call))
    assert run.summary is not None and run.summary["total_api_calls"] == 2
    assert {c["context"]["lens_run_id"] for c in records.calls} == {run.run_id}


def test_propagate_carries_the_lens_into_threads_and_executors(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``ThreadPoolExecutor.submit``, ``threading.Thread`` and ``run_in_executor`` count in the lens
    with ``propagate``; without it, a thread starts in an empty context and counts in none."""

    def call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    async def in_executor() -> None:
        await asyncio.get_running_loop().run_in_executor(None, llm_ledger.propagate(call))

    with ThreadPoolExecutor(4) as pool, monitor.lens("threads", source_id="doc-1") as run:
        wrapped = llm_ledger.propagate(call)
        futures = [pool.submit(wrapped) for _ in range(4)]  # one wrapped function on 4 threads at once
        for future in futures:
            future.result()
        thread = threading.Thread(target=llm_ledger.propagate(call))
        thread.start()
        thread.join()
        asyncio.run(in_executor())
        pool.submit(call).result()  # not propagated
    assert run.summary is not None and run.summary["total_api_calls"] == 6
    mine = [c for c in records.calls if c["context"].get("lens_run_id") == run.run_id]
    assert len(mine) == 6 and all(c["context"]["source_id"] == "doc-1" for c in mine)
    assert [c["context"]["lens_key"] for c in records.calls].count(None) == 1


def test_propagate_carries_the_lens_into_an_async_function_run_on_another_threads_loop(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``propagate`` on an ``async def`` runs its coroutine in the lens wherever it is awaited: by
    ``asyncio.run`` on a thread of its own, whose task starts in that thread's empty context."""

    async def summarise() -> str:
        async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
            await monitor.instrument(raw).chat.completions.create(model="gpt-4o-mini", messages=HI)
        return "done"

    results: list[str] = []
    with monitor.lens("threaded_loop", source_id="doc-2") as run:
        coroutine = llm_ledger.propagate(summarise)()
        worker = threading.Thread(target=lambda: results.append(asyncio.run(coroutine)))
        worker.start()
        worker.join(10)
    assert results == ["done"]
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    [call] = records.calls
    assert call["context"]["lens_run_id"] == run.run_id and call["context"]["source_id"] == "doc-2"


def test_propagate_used_as_a_decorator_says_it_hides_the_lens_it_runs_in(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """``@llm_ledger.propagate`` on a function's definition wraps it where no lens is open (at
    import): every run of it then hides the lens it is called in, on its own thread too, and its calls
    count in none. That is said once, naming the fix, when it first runs inside a lens."""

    @llm_ledger.propagate
    def summarise() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    summarise()  # outside any lens: nothing is hidden, nothing said
    for _ in range(2):
        with monitor.lens("decorated_propagate") as run:
            summarise()
        assert run.summary is not None and run.summary["total_api_calls"] == 0
    (told,) = [r.getMessage() for r in internal_log.records]
    assert "summarise" in told and "'decorated_propagate'" in told
    assert "pool.submit(llm_ledger.propagate(fn)" in told
    assert [c["context"]["lens_key"] for c in records.calls] == [None, None, None]


def test_a_decorated_generator_keeps_its_lens_open_for_its_life(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Calls made between the items of a ``@lens`` generator count in one run; the code iterating
    over it is not inside the lens."""

    @monitor.lens("pages")
    def pages(n: int) -> Iterator[str]:
        for _ in range(n):
            yield client.chat.completions.create(model="gpt-4o-mini", messages=HI).id

    seen = []
    for page in pages(3):
        seen.append(page)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the caller's own call
    (lens,) = records.lenses
    assert len(seen) == 3 and lens["summary"]["total_api_calls"] == 3
    callers = [c for c in records.calls if c["context"]["lens_key"] is None]
    assert len(callers) == 3


def test_a_decorated_generator_closed_early_ends_its_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Breaking out of a ``@lens`` generator ends its run with the calls made so far."""

    @monitor.lens("pages")
    def pages() -> Generator[int, None, None]:
        while True:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            yield 1

    generator = pages()
    next(generator)
    next(generator)
    generator.close()
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 2


@pytest.mark.asyncio
async def test_a_decorated_async_generator_keeps_its_lens_open_for_its_life(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The same for ``@lens`` on an async generator, including fan-out inside it."""

    @monitor.lens("pages")
    async def pages(n: int) -> AsyncIterator[int]:
        for _ in range(n):
            await asyncio.gather(
                aclient.chat.completions.create(model="gpt-4o-mini", messages=HI),
                aclient.chat.completions.create(model="gpt-4o-mini", messages=HI),
            )
            yield 2

    total = 0
    async for count in pages(3):
        total += count
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the caller's own
    (lens,) = records.lenses
    assert total == 6 and lens["summary"]["total_api_calls"] == 6
    assert sum(c["context"]["lens_key"] is None for c in records.calls) == 3


@pytest.mark.asyncio
async def test_a_decorated_async_generator_takes_what_is_sent_and_thrown_in_as_the_bare_one_does(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``asend()`` values and ``athrow()`` exceptions reach a ``@lens`` async generator as they reach
    the undecorated one (a coroutine-driven pipeline relies on them), calls between them count in
    its run, and the run ends when the generator does."""

    async def echo() -> AsyncGenerator[str, str]:
        received = "start"
        while True:
            try:
                received = yield f"got {received}"
            except ValueError as exc:
                received = f"thrown {exc}"
            if received == "call":
                await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)

    async def drive(generator: AsyncGenerator[str, str]) -> list[str]:
        seen = [await generator.__anext__(), await generator.asend("a"), await generator.asend("call")]
        seen.append(await generator.athrow(ValueError("x")))
        with pytest.raises(KeyError):
            await generator.athrow(KeyError("not handled"))
        return seen

    bare = await drive(echo())
    assert (
        await drive(monitor.lens("echo")(echo)())
        == bare
        == ["got start", "got a", "got call", "got thrown x"]
    )
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 1
    assert [c["context"]["lens_key"] for c in records.calls] == [None, "echo"]


@pytest.mark.asyncio
async def test_a_decorated_generator_called_with_wrong_arguments_still_ends_its_lens(
    monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Called with arguments it does not take, a ``@lens`` generator or async generator raises the
    bare one's TypeError when first iterated, and its run ends (its summary is written), as a
    decorated function's does."""

    @monitor.lens("sync")
    def pages(n: int) -> Iterator[int]:
        yield n

    @monitor.lens("async")
    async def apages(n: int) -> AsyncIterator[int]:
        yield n

    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        next(pages(size=1))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        await apages(size=1).__anext__()  # type: ignore[call-arg]
    assert [r["context"]["lens_key"] for r in records.lenses] == ["sync", "async"]


def test_odd_model_values_never_raise_into_the_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A number or a dict as ``model`` (the server answers 400) is recorded and counted; the lens
    block ends normally with the string model in ``models_used``."""
    with monitor.lens("odd") as run:
        for model in (123, {"name": "gpt-4o"}):
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model=model, messages=HI)  # type: ignore[call-overload]
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert run.summary is not None
    assert run.summary["total_api_calls"] == 3 and run.summary["errors"] == 2
    assert run.summary["models_used"] == ["gpt-4o"]
    assert [c["request"]["model"] for c in records.calls] == [None, None, "gpt-4o"]
    assert len(records.lenses) == 1


def test_a_redact_hook_that_raises_leaves_the_record_and_leaks_nothing(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A ``redact`` hook that fails costs the captured text (a placeholder), never the record,
    the lens count or the caller's result; the failure is reported."""

    def broken(text: str) -> str:
        raise ValueError("redactor down")

    monitor.capture_content = True
    monitor.redact = broken
    with monitor.lens("hooked") as run:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert answer.choices[0].message.content
    (call,) = records.calls
    assert call["status"] == "ok" and call["usage"]["total_tokens"]
    assert call["content"]["messages"][0]["content"] == "[REDACTION FAILED]"
    assert call["content"]["output"] == "[REDACTION FAILED]"
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert any("redact hook" in r.getMessage() for r in internal_log.records)


@pytest.mark.parametrize("returned", [None, b"bytes", 42], ids=["None", "bytes", "int"])
def test_a_redact_hook_returning_no_str_leaves_the_record_and_leaks_nothing(
    returned: Any,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A ``redact`` hook that returns something other than a str (a forgotten ``return``) is a
    failed redaction: a placeholder for each captured string of a plain, streamed and failed call,
    never the hook's value nor the text; every call is recorded and counted."""
    monitor.capture_content = True
    monitor.redact = lambda text: returned
    with monitor.lens("hooked") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    plain, streamed, failed = records.calls
    for call in (plain, streamed):
        failed_text = "[REDACTION FAILED]"
        message = {"role": failed_text, "content": failed_text}
        assert call["content"] == {"messages": [message], "output": failed_text}
    assert failed["error"]["message"] == "[REDACTION FAILED]"
    assert run.summary is not None and run.summary["total_api_calls"] == 3
    assert any("returned" in r.getMessage() and "not str" in r.getMessage() for r in internal_log.records)


def test_a_key_from_an_api_key_provider_is_redacted_from_the_first_call(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """With content capture on, the key an API-key provider function returns is scrubbed from the
    captured text of the very first call (the provider runs inside the request)."""
    monitor.capture_content = True
    with openai.OpenAI(api_key=lambda: FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": FAKE_KEY}])
    (call,) = records.calls
    assert FAKE_KEY not in str(call) and "[REDACTED]" in str(call["content"])


def test_without_configure_an_error_record_is_not_printed_as_a_dict(fake_openai: FakeOpenAI) -> None:
    """An application that never calls ``configure()`` gets no dict reprs on stderr from failed
    calls; with its own root handler, records read as JSON."""
    script = f"""
import logging, sys, openai, llm_ledger
if sys.argv[1] == "root":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
raw = openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r}, max_retries=0)
client = llm_ledger.instrument(raw)
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}],
                                   extra_headers={{"x-fake-status": "400"}})
except openai.BadRequestError:
    pass
"""
    bare = warm_python.run([sys.executable, "-c", script, "bare"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert "{'timestamp'" not in bare.stderr and "llm_api_call" not in bare.stderr
    rooted = warm_python.run(
        [sys.executable, "-c", script, "root"], capture_output=True, text=True, timeout=60
    )
    assert rooted.returncode == 0, rooted.stderr
    assert '"event":"llm_api_call"' in rooted.stderr and "{'timestamp'" not in rooted.stderr


def test_a_budget_watch_that_fails_never_raises_into_the_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, internal_log: Any
) -> None:
    """``monitor.budgets`` set to something that cannot watch a lens run (the parsed ``Budgets`` in
    place of a ``BudgetGuard`` over them) is reported on ``llm_ledger.internal``; the application's
    ``with lens(...)`` block runs, and its calls are counted and recorded."""
    monitor.budgets = llm_ledger.parse_budgets({"lenses": {"watched": {"max_api_calls": 1}}})  # type: ignore[assignment]
    with monitor.lens("watched") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert len(records.calls) == 1 and len(records.lenses) == 1
    assert "watching a lens run's budget" in internal_log.text


def test_a_request_whose_content_cannot_be_captured_is_still_recorded_and_counted(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """With content capture on, a request the ledger fails to copy (nested deeper than its copy can
    go, yet sent fine by the SDK) is recorded without content and counted: its lens ends, with
    no call left open, and its record is written."""
    monitor.capture_content = True
    deep: Any = "x"
    # the copy takes two frames a level on Python 3.11, one from 3.12 (comprehensions are inlined)
    for _ in range(sys.getrecursionlimit() // (2 if sys.version_info < (3, 12) else 1)):
        deep = {"a": deep}
    with monitor.lens("deep") as run:
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi", "metadata": deep}],  # type: ignore[list-item]
        )
    assert answer.choices[0].message.content
    assert run.summary is not None
    assert run.summary["total_api_calls"] == 1 and run.summary["open_calls"] == 0
    (call,) = records.calls
    assert call["status"] == "ok" and call["usage"]["total_tokens"]
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 1
    assert any("capturing a request's content" in r.getMessage() for r in internal_log.records)


def test_ctrl_c_inside_a_sink_still_counts_the_call_in_its_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Ctrl-C landing while a slow sink handles a call's record reaches the caller, as Ctrl-C
    anywhere would; the call still counts in its lens, whose record is written at its end."""
    fired: list[Any] = []

    def slow_sink(record: Any) -> None:
        if record["event"] == "llm_api_call" and not fired:
            fired.append(record)
            raise KeyboardInterrupt  # what Ctrl-C during the sink's work raises

    monitor.add_sink(slow_sink)
    with monitor.lens("interrupted sink") as run:
        with pytest.raises(KeyboardInterrupt):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["open_calls"]) == (2, 0)
    assert len(records.calls) == 2
    (lens,) = records.lenses
    assert lens["summary"]["total_api_calls"] == 2


def test_a_sink_that_trims_records_in_place_changes_no_lens_count(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A sink may change the record it is handed (drop ``usage`` or ``content`` before exporting
    it): its lens still counts the call as it was recorded, and writes its record."""

    def trim(record: Any) -> None:
        if record["event"] == "llm_api_call":
            record.pop("usage")
            record["status"] = "trimmed"

    monitor.add_sink(trim)
    with monitor.lens("trimmed") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "400"}
            )
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["open_calls"], run.summary["errors"]) == (2, 0, 1)
    assert run.summary["total_tokens"] == sum(c["usage"]["total_tokens"] or 0 for c in records.calls) > 0
    assert len(records.lenses) == 1


def test_a_sink_that_changes_a_lens_record_leaves_the_runs_summary_alone(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """``run.summary`` is what the application stores (``SourceLog.extra_data``): a sink trimming the
    ``lens_summary`` record it is handed (before exporting it) changes that record only."""

    def trim(record: Any) -> None:
        if record["event"] == "lens_summary":
            record["summary"].pop("total_cost_usd")
            record["summary"]["models_used"].append("trimmed")

    monitor.add_sink(trim)
    with monitor.lens("kept") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert run.summary is not None
    assert run.summary["total_cost_usd"] is not None and run.summary["models_used"] == ["gpt-4o-mini"]


@pytest.mark.asyncio
async def test_streams_cancelled_in_a_gather_each_count_once_in_their_lens(
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Many streams over every streaming path, gathered in one lens, half of them cancelled once
    each has begun: each call is recorded once (``interrupted`` if cancelled, else ``ok``) and
    counted in the lens, which ends with no call open; the ledger reports no failure of its own."""
    # ~0.8 s each; the half to be cancelled 25 times slower, so that none ends before its cancel on a
    # busy host (the answer's length caps x-fake-chunks: the delay is what makes a stream longer)
    short = {"x-fake-fault": "slow", "x-fake-delay-ms": "20", "x-fake-chunks": "40"}
    headers = [{**short, "x-fake-delay-ms": "500"} if n % 2 == 0 else short for n in range(12)]
    begun = [asyncio.Event() for _ in range(12)]

    async def chat(n: int) -> None:
        stream = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, extra_headers=headers[n]
        )
        async with stream:  # closed when cancelled, as an application's would be
            async for _ in stream:
                begun[n].set()

    async def streaming_response(n: int) -> None:
        manager = aclient.chat.completions.with_streaming_response.create
        request = manager(model="gpt-4o-mini", messages=HI, stream=True, extra_headers=headers[n])
        async with request as response:
            async for _ in response.iter_lines():
                begun[n].set()

    async def responses(n: int) -> None:
        stream = await aclient.responses.create(
            model="gpt-4o-mini", input="hi", stream=True, extra_headers=headers[n]
        )
        async with stream:
            async for _ in stream:
                begun[n].set()

    async def raw_response(n: int) -> None:
        manager = aclient.chat.completions.with_raw_response.create
        raw = await manager(model="gpt-4o-mini", messages=HI, stream=True, extra_headers=headers[n])
        async with raw.parse() as stream:
            async for _ in stream:
                begun[n].set()

    paths = [chat, streaming_response, responses, raw_response] * 3
    async with monitor.lens("fan-out") as run:
        tasks = [asyncio.create_task(path(n)) for n, path in enumerate(paths)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in begun)), 10)
        for task in tasks[::2]:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = [isinstance(outcome, asyncio.CancelledError) for outcome in outcomes]
    assert cancelled == [True, False] * 6 and not [o for o in outcomes if isinstance(o, Exception)]
    calls = records.calls
    assert len({c["call_id"] for c in calls}) == len(calls) == 12
    assert sorted(c["status"] for c in calls) == ["interrupted"] * 6 + ["ok"] * 6
    (lens,) = records.lenses
    assert (lens["summary"]["total_api_calls"], lens["summary"]["open_calls"]) == (12, 0)
    assert run.summary == lens["summary"]
    assert not [r for r in internal_log.records if r.name == "llm_ledger.internal"]


@pytest.mark.asyncio
async def test_nested_lenses_in_tasks_count_in_every_enclosing_run(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Lenses opened in tasks inside a lens nest under it: each call counts in its own run and in the
    enclosing one; a task that only opens its lens after the enclosing run ended counts in its own run
    alone, which is no nested run of the ended one: summed from the summaries, no lens is negative."""
    outer_ended = asyncio.Event()

    async def inner(n: int, late: bool = False) -> str | None:
        if late:
            await outer_ended.wait()
        run = monitor.lens("inner", n=n)
        async with run:
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
            await asyncio.gather(
                *(aclient.chat.completions.create(model="gpt-4o-mini", messages=HI) for _ in range(2))
            )
        return run.run_id

    async with monitor.lens("outer") as outer:
        inner_ids = await asyncio.gather(*(asyncio.create_task(inner(n)) for n in range(4)))
        late = asyncio.create_task(inner(99, late=True))
    outer_ended.set()
    late_id = await late
    by_run = {lens["context"]["lens_run_id"]: lens for lens in records.lenses}
    assert by_run[outer.run_id]["summary"]["total_api_calls"] == 12
    for run_id in (*inner_ids, late_id):
        assert by_run[run_id]["summary"]["total_api_calls"] == 3
        assert by_run[run_id]["context"]["parent_lens_run_id"] == (
            None if run_id == late_id else outer.run_id
        )
    from_summaries = summarise_records(records, by="lens", from_summaries=True)
    assert {row.key["lens"]: row.calls for row in from_summaries.rows} == {"outer": 0, "inner": 15}
    assert sum(c["context"]["lens_run_id"] == late_id for c in records.calls) == 3


def test_a_background_response_ended_after_its_inner_lens_is_filed_under_the_outer_run(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A background response begun in an inner lens and ended (retrieved) once that lens ended, the
    outer one still open, counts its end in the outer run, and the end's record names that run: the
    outer summary is the sum of the calls filed under it and its nested run, with no run cut short."""
    with monitor.lens("outer") as outer:
        with monitor.lens("inner") as inner:
            response = client.responses.create(
                model="gpt-4o-mini", input="Summarise the otters, please.", background=True
            )
        while response.status in ("queued", "in_progress"):
            response = client.responses.retrieve(response.id)
    assert outer.summary is not None and inner.summary is not None
    begun, ended = records.calls
    assert begun["context"]["lens_run_id"] == inner.run_id
    assert (ended["context"]["lens_key"], ended["context"]["lens_run_id"]) == ("outer", outer.run_id)
    assert outer.summary["total_api_calls"] == 2 and outer.summary["cost_complete"] is True
    assert outer.summary["total_tokens"] == ended["usage"]["total_tokens"] > 0
    report = summarise_records(records, by="lens")
    assert report.total.cut_short_runs == 0 and report.total.unpriced_calls == 0
