"""Lens runs and context: aggregates, nesting, decorators, and isolation under concurrency."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
from collections import Counter
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

import llm_ledger
import llm_ledger.testing
from llm_ledger.report import summarise_records
from llm_ledger.testing import Captured

HI: Any = [{"role": "user", "content": "hi"}]


def test_summary_has_the_seed_keys_and_sums_the_calls(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """run.summary (None until the block ends) equals the sums of the lens's call records, with the
    seed's keys and the extras."""
    with monitor.lens("default_summary", source_id="src-1", service="RunnerService") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "longer " * 50}])
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert run.summary is None  # until the block ends
    calls = records.calls
    summary = run.summary
    assert summary is not None
    assert summary["total_api_calls"] == 3
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"):
        assert summary[key] == sum(c["usage"][key] for c in calls), key
    assert summary["total_cost_usd"] == pytest.approx(sum(c["cost"]["total_cost_usd"] for c in calls))
    assert summary["avg_duration_ms"] == pytest.approx(
        sum(c["timing"]["duration_ms"] for c in calls) / 3, abs=0.01
    )
    assert summary["models_used"] == ["gpt-4o", "gpt-4o-mini"]
    assert summary["errors"] == 0 and summary["cost_complete"] is True
    assert summary["duration_ms"] >= sum(c["timing"]["duration_ms"] for c in calls) * 0.99
    [lens_record] = records.lenses
    assert lens_record["event"] == "lens_summary" and lens_record["logger"] == "llm_monitor"
    assert lens_record["summary"] == summary
    assert lens_record["context"]["lens_key"] == "default_summary"
    assert lens_record["context"]["source_id"] == "src-1"
    assert lens_record["context"]["service"] == "RunnerService"
    for call in calls:
        assert call["context"]["lens_key"] == "default_summary"
        assert call["context"]["lens_run_id"] == lens_record["context"]["lens_run_id"] == run.run_id


def test_a_runs_context_is_what_its_records_carry(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``run.context`` is the lens's own context as its call and summary records carry it: its key,
    its run id and the values passed to ``lens()``; a copy the caller may change."""
    with monitor.lens("digest", user_id="u1") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        context = run.context
    assert context == {"user_id": "u1", "lens_key": "digest", "lens_run_id": run.run_id}
    [call], [summary] = records.calls, records.lenses
    for record in (call, summary):  # which also carry the seed's keys (source_id, service), None here
        assert record["context"] == {**context, "source_id": None, "service": None}
    context["user_id"] = "changed"
    assert run.context["user_id"] == "u1"


def test_failed_calls_and_unknown_prices_show_in_the_summary(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """Failed calls count in total_api_calls and errors; an unpriced model makes cost_complete false."""
    with monitor.lens("mixed") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "500"}
            )
        client.chat.completions.create(model="house-model-7", messages=HI)
    assert run.summary is not None
    assert run.summary["total_api_calls"] == 3 and run.summary["errors"] == 1
    assert run.summary["cost_complete"] is False
    assert run.summary["total_cost_usd"] > 0  # the known costs are still summed
    assert run.summary["models_used"] == ["gpt-4o-mini", "house-model-7"]


def test_empty_lens_reports_zeroes(monitor: llm_ledger.LLMCallMonitor, records: Captured) -> None:
    """A lens with no call still emits a summary, with zero totals and no average."""
    with monitor.lens("nothing") as run:
        pass
    assert run.summary is not None and run.summary["total_api_calls"] == 0
    assert run.summary["avg_duration_ms"] is None and run.summary["total_cost_usd"] == 0
    assert len(records.lenses) == 1


def test_lens_summary_is_emitted_when_the_block_raises(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An exception leaving the lens still emits its summary and propagates unchanged."""
    run = monitor.lens("boom")

    def business() -> None:
        with run:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            raise KeyError("business error")

    with pytest.raises(KeyError, match="business error"):
        business()
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert len(records.lenses) == 1


def test_nested_lenses_count_a_call_in_each(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A call counts in every enclosing lens; its context names the innermost lens."""
    with monitor.lens("outer", source_id="s") as outer:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with monitor.lens("inner") as inner:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert outer.summary is not None and inner.summary is not None
    assert outer.summary["total_api_calls"] == 2 and inner.summary["total_api_calls"] == 1
    assert [c["context"]["lens_key"] for c in records.calls] == ["outer", "inner"]
    assert records.calls[1]["context"]["source_id"] == "s"  # inherited from the outer lens
    assert [r["context"]["lens_key"] for r in records.lenses] == ["inner", "outer"]


def test_track_llm_call_adds_context(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """track_llm_call adds its keys to every call inside, and only inside."""
    with monitor.track_llm_call(service="GeneratorService", source_id="s-9", user_id="u-1"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    inside, outside = records.calls
    assert inside["context"] == {
        "lens_key": None,
        "source_id": "s-9",
        "service": "GeneratorService",
        "user_id": "u-1",
    }
    assert outside["context"] == {"lens_key": None, "source_id": None, "service": None}


def test_the_innermost_block_wins_on_a_key_two_set(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """On a key set by nested ``track_llm_call`` and ``lens`` blocks, a call carries the innermost
    block's value, and the lens's record its own; a lens's ``service`` left None keeps the outer one."""
    with (
        monitor.track_llm_call(user_id="outer", service="api", tenant="t1"),
        monitor.lens("clash", user_id="lens") as run,
        monitor.track_llm_call(user_id="inner"),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    [call], [lens] = records.calls, records.lenses
    assert {k: call["context"][k] for k in ("user_id", "service", "tenant")} == {
        "user_id": "inner",
        "service": "api",
        "tenant": "t1",
    }
    assert lens["context"]["user_id"] == "lens" and lens["context"]["lens_run_id"] == run.run_id


def test_decorators_open_a_new_block_per_call(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """As decorators, lens and track_llm_call give each invocation its own run."""

    @monitor.lens("decorated", service="Svc")
    @monitor.track_llm_call(step="generate")
    def work(n: int) -> int:
        for _ in range(n):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return n

    assert work(1) == 1 and work(2) == 2
    assert [r["summary"]["total_api_calls"] for r in records.lenses] == [1, 2]
    assert len({r["context"]["lens_run_id"] for r in records.lenses}) == 2
    assert all(c["context"]["step"] == "generate" for c in records.calls)


@pytest.mark.asyncio
async def test_a_decorated_function_returning_a_coroutine_is_said_once(
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain decorator of the application's (``functools.wraps`` and a plain ``def``) between
    ``@lens(...)`` and an ``async def`` hides the coroutine: the lens ends before its calls run, so they
    count in no lens run. The ledger cannot open the block around a coroutine it was handed, so it
    says so once, naming the function and the fix; the result is the function's own."""

    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return wrapper

    @monitor.lens("hidden")
    @logged
    async def summarise() -> str:
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return "done"

    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    assert [await summarise(), await summarise()] == ["done", "done"]
    told = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(told) == 1
    assert "summarise is decorated with lens() as a plain function, yet returned a coroutine" in told[0]
    assert "Put @lens(...) directly on the async def" in told[0]
    assert [r["summary"]["total_api_calls"] for r in records.lenses] == [0, 0]


def test_a_failing_log_handler_never_breaks_a_decorated_function_saying_it_returned_a_coroutine(
    monitor: llm_ledger.LLMCallMonitor,
) -> None:
    """The warning that a function decorated as a plain one returned a coroutine goes through the
    ledger's guarded logging: a log handler that raises on it never reaches the application's call."""

    class Failing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler down")

    async def work() -> str:
        return "done"

    hidden = monitor.lens("hidden_failing")(lambda: work())
    internal = logging.getLogger("llm_ledger.internal")
    handler = Failing()
    internal.addHandler(handler)
    try:
        coroutine = hidden()
    finally:
        internal.removeHandler(handler)
    assert asyncio.run(coroutine) == "done"


@pytest.mark.asyncio
async def test_async_decorator_and_async_with(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """lens works with `async with` and on `async def`."""

    @monitor.lens("async_decorated")
    async def work() -> None:
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)

    await work()
    async with monitor.lens("async_with") as run:
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert [r["context"]["lens_key"] for r in records.lenses] == ["async_decorated", "async_with"]


@pytest.mark.asyncio
async def test_forty_concurrent_lenses_see_only_their_own_calls(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """40 lenses under asyncio.gather, each fanning out its own calls, never mix."""

    async def run_lens(i: int) -> tuple[int, Any]:
        async with monitor.lens(f"lens-{i}", source_id=i) as run:
            calls = [
                aclient.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * i}]
                )
                for _ in range(1 + i % 3)
            ]
            await asyncio.gather(*calls)
        return i, run.summary

    results = await asyncio.gather(*(run_lens(i) for i in range(40)))
    for i, summary in results:
        mine = [c for c in records.calls if c["context"]["lens_key"] == f"lens-{i}"]
        assert summary["total_api_calls"] == 1 + i % 3 == len(mine)
        assert summary["prompt_tokens"] == sum(c["usage"]["prompt_tokens"] for c in mine)
        assert all(c["context"]["source_id"] == i for c in mine)


def test_forty_lenses_in_a_thread_pool_do_not_mix(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """40 lenses run in 8 threads each count exactly their own calls."""

    def run_lens(i: int) -> Any:
        with monitor.lens(f"t-{i}") as run:
            for _ in range(1 + i % 2):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "y" * i}]
                )
        return run.summary

    with ThreadPoolExecutor(max_workers=8) as pool:
        summaries = list(pool.map(run_lens, range(40)))
    for i, summary in enumerate(summaries):
        mine = [c for c in records.calls if c["context"]["lens_key"] == f"t-{i}"]
        assert summary["total_api_calls"] == len(mine) == 1 + i % 2
        assert summary["total_tokens"] == sum(c["usage"]["total_tokens"] for c in mine)


def test_a_lens_object_cannot_be_entered_twice(monitor: llm_ledger.LLMCallMonitor) -> None:
    """Re-entering an active lens object is a clear error rather than a corrupted stack."""
    run = monitor.lens("once")
    with run, pytest.raises(RuntimeError, match="already active"):
        run.__enter__()


@pytest.mark.asyncio
async def test_one_track_llm_call_block_serves_concurrent_tasks_and_threads(
    aclient: openai.AsyncOpenAI, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``track_llm_call(...)`` object made once (at module level) may be entered by requests
    handled at the same time, in tasks and threads, and nested: each block adds the context to its
    own calls and takes it away at its end, never raising into the handler."""
    tracked = monitor.track_llm_call(service="api")

    async def handle() -> None:
        async with tracked:
            await asyncio.sleep(0)  # every task is inside the block before any leaves it
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)

    barrier = threading.Barrier(3)

    def work() -> None:
        with tracked:
            barrier.wait(timeout=10)
            with tracked:
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with ThreadPoolExecutor(3) as pool:
        threads = [pool.submit(work) for _ in range(3)]
        await asyncio.gather(*(handle() for _ in range(5)))
        for thread in threads:
            thread.result()
    services = Counter(call["context"]["service"] for call in records.calls)
    assert services == {"api": 5 + 6, None: 5 + 3}


def test_a_block_left_open_inside_a_lens_ends_with_it(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A generator suspended inside its ``track_llm_call`` block and abandoned inside a lens: the lens's
    end takes that block's context away with its own, and closing the generator later brings neither
    back, so calls after the lens carry neither."""

    def steps() -> Generator[None]:
        with monitor.track_llm_call(step="draft"):
            yield

    with monitor.lens("outer"):
        pending = steps()
        next(pending)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    pending.close()
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    inside, after, closed = (call["context"] for call in records.calls)
    assert (inside["lens_key"], inside["step"]) == ("outer", "draft")
    assert [(c["lens_key"], "step" in c) for c in (after, closed)] == [(None, False), (None, False)]


def test_a_lens_record_carries_its_own_context_not_a_block_left_open_inside_it(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A generator suspended in its ``track_llm_call(user_id=...)`` block inside a lens: the calls
    made while that block is open carry its context, but the lens run was not opened in it, so the
    lens's record (and the anomaly records that copy it) carries the lens's own context, as its
    budget records do."""

    def steps() -> Generator[None]:
        with monitor.track_llm_call(user_id="someone-else"):
            yield

    with monitor.lens("outer", source_id="doc-1"):
        pending = steps()
        next(pending)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    pending.close()
    [call] = records.calls
    [lens_record] = records.lenses
    assert call["context"]["user_id"] == "someone-else"
    assert "user_id" not in lens_record["context"]
    assert lens_record["context"]["source_id"] == "doc-1"


def test_a_lens_entered_and_ended_in_context_copies_of_its_own_is_said_once(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lens block entered and left each in a context copy of its own, not around the calls (a web
    framework running a sync generator dependency's steps in a thread pool, each in a copy of the
    request's context): its calls count in no run of it, and it records 0 calls. The ledger cannot
    carry the run back into the caller's context, so it says so once per lens key, naming the fix."""

    def request(key: str) -> None:
        run = monitor.lens(key)
        contextvars.copy_context().run(run.__enter__)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        contextvars.copy_context().run(run.__exit__, None, None, None)

    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for key in ("in_a_pool", "in_a_pool", "other"):
        request(key)
    told = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(told) == 2
    assert "lens 'in_a_pool' ended in another context than it began in" in told[0]
    assert "Open the lens where its calls are made" in told[0]
    assert [r["summary"]["total_api_calls"] for r in records.lenses] == [0, 0, 0]


def test_a_dependencys_lens_counts_the_handlers_calls_only_as_an_async_generator_as_the_warning_says(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A web framework's generator dependency (FastAPI's Depends) opening a lens around a sync handler's
    calls: as a sync generator (each step in a thread pool's copy of the request's context) it counts
    none of them, decorated or not, since the handler runs between its steps, outside them; as an async
    generator (stepped in the request's task, the handler in a copy of its context) it counts them. The
    warning said to decorate the generator, which a dependency's author then did, to count nothing and
    be told nothing more: it now names the async generator for a dependency."""

    def handler() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    def sync_dependency() -> Generator[None]:
        with monitor.lens("sync_dependency"):
            yield

    def decorated_dependency() -> Generator[None]:
        yield

    def solved_in_a_pool(dependency: Generator[None]) -> None:
        def step() -> None:
            next(dependency, None)

        with ThreadPoolExecutor(2) as pool:
            for work in (step, handler, step):  # its setup, the handler, its teardown: each in a copy
                pool.submit(contextvars.copy_context().run, work).result()

    async def async_dependency() -> Any:
        with monitor.lens("async_dependency"):
            yield

    async def solved_in_the_task() -> None:
        dependency = async_dependency()
        await anext(dependency)
        await asyncio.to_thread(handler)
        await anext(dependency, None)

    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    solved_in_a_pool(sync_dependency())
    solved_in_a_pool(monitor.lens("decorated_dependency")(decorated_dependency)())
    asyncio.run(solved_in_the_task())
    counted = {r["context"]["lens_key"]: r["summary"]["total_api_calls"] for r in records.lenses}
    assert counted == {"sync_dependency": 0, "decorated_dependency": 0, "async_dependency": 1}
    (told,) = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert "lens 'sync_dependency' ended in another context" in told
    assert "a dependency: an async generator" in told


def test_a_lens_left_on_another_thread_is_no_parent_of_later_runs_on_the_first(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens entered on one thread and left on another (an exit stack handed to a worker) stays in
    the first thread's context, which another thread cannot change: it never raises, counts no
    later call, and a lens opened later on that thread is no nested run of it, so summing the log
    from the summaries gives each lens its own calls (none negative)."""
    run = monitor.lens("handed_over")

    def first_thread() -> llm_ledger.LensRun:  # in a context copy: the lens stays in it for good
        run.__enter__()
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        worker = threading.Thread(target=run.__exit__, args=(None, None, None))
        worker.start()
        worker.join()
        with monitor.lens("later") as later:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        return later

    later = contextvars.copy_context().run(first_thread)
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert later.summary is not None and later.summary["total_api_calls"] == 2
    assert later.context["parent_lens_run_id"] is None
    from_summaries = summarise_records(records, by="lens", from_summaries=True)
    assert {row.key["lens"]: row.calls for row in from_summaries.rows} == {"handed_over": 1, "later": 2}
    assert summarise_records(records, by="lens").total.cut_short_runs == 0


def test_a_sync_generator_stepped_in_a_thread_pool_counts_every_call_once_decorated(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync generator given to a streaming response is stepped in a thread pool, each step in a
    copy of the request's context (Starlette's iterate_in_threadpool): a lens block inside it counts
    only its first step's calls, and the warning names the fix that works there, the lens as a
    decorator on the generator, which counts every call."""

    def relay() -> Generator[str]:
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True):
            yield "chunk"
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # a title, after the stream
        yield "title"

    def body() -> Generator[str]:
        with monitor.lens("block_in_the_body"):
            yield from relay()

    def stepped_in_a_pool(generator: Generator[str]) -> None:
        def step() -> str | None:
            return next(generator, None)

        with ThreadPoolExecutor(2) as pool:
            while pool.submit(contextvars.copy_context().run, step).result() is not None:
                pass

    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    stepped_in_a_pool(body())
    stepped_in_a_pool(monitor.lens("decorated")(relay)())
    counted = {r["context"]["lens_key"]: r["summary"]["total_api_calls"] for r in records.lenses}
    assert counted == {"block_in_the_body": 1, "decorated": 2}
    (told,) = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert "lens 'block_in_the_body' ended in another context" in told
    assert "llm_ledger.lens(...)(generator_function)" in told


def test_a_sync_generator_stepped_by_asgirefs_sync_to_async_ends_its_lens_in_the_caller(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asgiref's sync_to_async (Django under ASGI) runs each step of a sync function in a copy of the
    caller's context on a thread, then copies what it changed back into the caller's: a lens block in
    a sync generator stepped that way counts every call and says nothing, and once it has ended, the
    caller's later calls carry none of its context (they were filed under the ended run)."""

    def body() -> Generator[str]:
        with monitor.lens("stepped", source_id="doc-1"):
            yield "first"
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            yield "second"

    def sync_to_async(step: Any) -> Any:
        """asgiref.sync.SyncToAsync, less the event loop: the step in a context copy, then the
        copy's values set back where they differ (its _restore_context)."""
        context = contextvars.copy_context()
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(context.run, step).result()
        for var in context:
            try:
                if var.get() != context[var]:
                    var.set(context[var])
            except LookupError:
                var.set(context[var])
        return result

    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    generator = body()
    while sync_to_async(lambda: next(generator, None)) is not None:
        pass
    sync_to_async(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HI))
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [(r["context"]["lens_key"], r["summary"]["total_api_calls"]) for r in records.lenses] == [
        ("stepped", 1)
    ]
    assert [r["context"]["lens_key"] for r in records.calls] == ["stepped", None, None]
    assert [r["context"]["source_id"] for r in records.calls] == ["doc-1", None, None]
    assert [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"] == []


def test_lens_key_must_be_a_non_empty_string(monitor: llm_ledger.LLMCallMonitor) -> None:
    """A missing or non-string lens key is rejected with the value shown."""
    with pytest.raises(TypeError, match="lens_key must be a non-empty string"):
        monitor.lens("")


def test_context_cannot_overwrite_the_keys_a_lens_run_sets(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """lens_key, lens_run_id and parent_lens_run_id belong to lens runs: passed as context they would
    file a call under a lens or run it never ran in, so they are refused, naming the key and the fix."""
    with monitor.lens("summary") as run:
        with pytest.raises(TypeError, match=r"track_llm_call\(\): lens_key is set by lens\(\)"):
            monitor.track_llm_call(lens_key="other")
        for key in ("lens_run_id", "parent_lens_run_id"):
            with pytest.raises(TypeError, match=rf"lens\(\): {key} is set by lens\(\)"):
                monitor.lens("inner", **{key: "mine"})
            with pytest.raises(TypeError, match=key):
                llm_ledger.track_llm_call(**{key: "mine"})
        with monitor.track_llm_call(user_id="alice"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    [call] = records.calls
    assert call["context"]["lens_key"] == "summary"
    assert call["context"]["lens_run_id"] == run.run_id
    assert call["context"]["user_id"] == "alice"


def test_track_llm_call_and_lens_written_as_bare_decorators_say_how_to_write_them(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``@track_llm_call`` and ``@lens`` without their parentheses (the plan's "decorator") fail where
    they are written, naming the form that works; that form then records the function's calls."""

    def call_llm() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    for track in (monitor.track_llm_call, llm_ledger.track_llm_call):
        with pytest.raises(TypeError, match=r"@track_llm_call\(service=.*\) with parentheses"):
            track(call_llm)  # type: ignore[arg-type]
    for open_lens in (monitor.lens, llm_ledger.lens):
        with pytest.raises(TypeError, match=r"@lens\('default_summary', \.\.\.\) with parentheses"):
            open_lens(call_llm)  # type: ignore[arg-type]
    monitor.lens("default_summary")(monitor.track_llm_call(service="GeneratorService")(call_llm))()
    [call] = records.calls
    assert call["context"]["lens_key"] == "default_summary"
    assert call["context"]["service"] == "GeneratorService"


def test_propagate_refuses_what_it_cannot_call(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """propagate() of something not callable fails where it is written, naming the value, not later in
    the worker thread; a callable it wraps carries the lens into the thread."""
    with monitor.lens("fan-out") as run:
        with pytest.raises(TypeError, match=r"propagate\(\) expects a function.*got 'summarise'"):
            llm_ledger.propagate("summarise")  # type: ignore[arg-type]
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                llm_ledger.propagate(client.chat.completions.create), model="gpt-4o-mini", messages=HI
            ).result()
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert records.calls[0]["context"]["lens_run_id"] == run.run_id


def test_module_level_functions_use_the_default_monitor(client: openai.OpenAI) -> None:
    """llm_ledger.lens / track_llm_call / instrument work through the default monitor."""
    with llm_ledger.testing.capture() as captured:
        llm_ledger.instrument(client)
        with llm_ledger.lens("module_level") as run, llm_ledger.track_llm_call(service="S"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert captured.calls[0]["context"]["service"] == "S"
    assert llm_ledger.get_monitor() is llm_ledger.get_monitor()


def test_a_sink_changing_a_records_context_changes_no_other_record(
    monitor: llm_ledger.LLMCallMonitor, client: openai.OpenAI
) -> None:
    """Each record gets its own copy of the context, whatever a sink does with it."""
    seen: list[dict[str, Any]] = []

    def meddle(record: Any) -> None:
        seen.append(dict(record["context"]))
        record["context"]["lens_key"] = "changed by a sink"

    monitor.add_sink(meddle)
    with monitor.lens("mine", source_id="s"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [c["lens_key"] for c in seen] == ["mine", "mine", "mine"]  # two calls, then the summary


def test_a_sink_changing_a_budget_or_anomaly_records_context_changes_no_later_record(
    fake_openai: Any, sdk: Any, tmp_path: Any
) -> None:
    """A sink trimming each record before shipping it elsewhere (the user id, a lens's summary) changes
    the record it is handed only: the file keeps the user id on the lens's calls after a
    ``budget_exceeded`` record, and anomaly detection still judges each lens run, whose
    ``lens_anomaly`` record keeps it too."""
    written = llm_ledger.JsonlFileHandler(tmp_path / "calls.jsonl")

    def strip(record: Any) -> None:
        record["context"].pop("user_id", None)
        record.pop("summary", None)

    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[written.write_record, strip])
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"capped": {"max_api_calls": 1}}})
    monitor.anomalies = llm_ledger.AnomalyDetector(llm_ledger.AnomalyConfig(min_runs=3, window=3))
    client = sdk(monitor)
    with monitor.lens("capped", user_id="alice"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    for calls in (1, 1, 1, 8):  # three ordinary runs, then one far above them
        with monitor.lens("spiky", user_id="bob"):
            for _ in range(calls):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    written.close()
    lines = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    events = Counter(line["event"] for line in lines)
    assert events["budget_exceeded"] == 1 and events["lens_anomaly"] >= 1
    assert [line["event"] for line in lines if "user_id" not in line["context"]] == []


def test_a_monitor_without_logger_or_sink_still_sums_its_lenses(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """Lens summaries are the same whether anything hears the call records or not."""

    def run() -> dict[str, Any]:
        with monitor.lens("quiet") as run:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            client.chat.completions.create(model="gpt-4o", messages=HI)
        assert run.summary is not None
        return {k: v for k, v in run.summary.items() if "duration" not in k}

    unheard = run()
    with llm_ledger.testing.capture(monitor) as captured:
        heard = run()
    assert len(captured.calls) == 2
    assert unheard == heard
    assert unheard["total_api_calls"] == 2 and unheard["total_cost_usd"] > 0


def test_capture_of_every_monitor_sees_monitors_made_later(fake_openai: Any) -> None:
    """capture(every_monitor=True) hears the default monitor and any other, made before or after."""
    from tests.conftest import FAKE_KEY

    with llm_ledger.testing.capture(every_monitor=True) as captured:
        mine = llm_ledger.LLMCallMonitor(logger=None)
        with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
            client = mine.instrument(raw)
            with mine.lens("mine"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        mine.instrument(raw).chat.completions.create(model="gpt-4o-mini", messages=HI)  # after the block
    assert [r["event"] for r in captured.records] == ["llm_api_call", "lens_summary"]
    assert captured.lenses[0]["context"]["lens_key"] == "mine"
    with pytest.raises(TypeError, match="not both"), llm_ledger.testing.capture(mine, every_monitor=True):
        pass


def test_a_call_ending_on_a_thread_as_its_lens_exits_is_written_before_the_lens(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A call that ends on another thread while its lens exits still reaches the sinks before the
    lens's record: readers that file calls under their lens (OTelSink's spans) see the lens last."""
    seen: list[str] = []
    arrived, lens_exited = threading.Event(), threading.Event()

    def sink(record: Any) -> None:
        if record["event"] == "llm_api_call":
            arrived.set()
            lens_exited.wait(5)  # the lens exits while this call's record is on its way to the sinks
        seen.append(record["event"])

    monitor.add_sink(sink)
    with ThreadPoolExecutor(1) as pool:
        with monitor.lens("racing") as run:
            done = pool.submit(
                llm_ledger.propagate(client.chat.completions.create), model="gpt-4o-mini", messages=HI
            )
            assert arrived.wait(5)
        lens_exited.set()
        done.result()
    assert seen == ["llm_api_call", "lens_summary"]
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["open_calls"]) == (1, 0)
