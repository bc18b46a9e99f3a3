"""A background response (``responses.create(background=True)``) is billed when it ends, which a later
retrieve, cancel or resumed stream sees: its usage and cost are recorded once, in the lens runs of the
create, and a report over the log sums them right; polls record nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger.report import render, summarise_records
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY, Sdk
from tests.report_helpers import logging_to
from tests.test_ledger_paths import _maybe

ASK: Any = {"model": "gpt-4o-mini", "input": "Summarise the history of the otters in space, please."}
RUNNING = ("queued", "in_progress")


async def _poll(c: Any, response: Any) -> Any:
    """Retrieve ``response`` until it ends, as the background guide does, then once more."""
    while response.status in RUNNING:
        response = await _maybe(c.responses.retrieve(response.id))
    await _maybe(c.responses.retrieve(response.id))  # read again later (to show it): recorded already
    return response


def _costs(records: Captured) -> list[Any]:
    return [(r["response"]["finish_reason"], r["cost"]["total_cost_usd"]) for r in records.calls]


def _report(records: Captured) -> Any:
    return summarise_records(records, by=["lens"]).total


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_background_response_polled_in_its_lens_costs_what_the_same_answer_costs_once(
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """create(background=True), polled to its end and read again: two records (the create, pending
    with no cost; its end, with the usage and the cost the same request costs in the foreground), the
    polls none; the lens and a report over the records count that cost once, complete."""
    c = aclient if is_async else client
    await _maybe(c.responses.create(**ASK))
    foreground = records.calls[-1]
    records.records.clear()
    with monitor.lens("deep_research") as run:
        queued = await _maybe(c.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "3"}))
        assert queued.status == "queued" and queued.usage is None
        done = await _poll(c, queued)
    assert done.status == "completed" and done.usage is not None
    begun, ended = records.calls
    cost = foreground["cost"]["total_cost_usd"]
    assert cost and _costs(records) == [("queued", None), ("completed", cost)]
    assert begun["usage"]["total_tokens"] is None and ended["usage"] == foreground["usage"]
    assert begun["response"]["id"] == ended["response"]["id"] == done.id
    assert ended["request"] == begun["request"]  # the request that began it
    assert ended["context"]["lens_run_id"] == begun["context"]["lens_run_id"] == run.run_id
    assert run.summary is not None
    assert run.summary["total_cost_usd"] == cost and run.summary["cost_complete"] is True
    assert run.summary["total_tokens"] == done.usage.total_tokens and run.summary["total_api_calls"] == 2
    assert run.summary["pending_calls"] == 0
    total = _report(records)
    assert float(total.cost_usd) == cost and total.unpriced_calls == 0 and total.cut_short_runs == 0


def test_a_background_response_ended_after_its_lens_says_its_cost_is_pending_then_records_it(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens that only begins the response (a web handler) writes its record at its end, its cost not
    complete yet, as a report over the log says too (the start's end is not in it: never $0 and
    complete); the end, retrieved later, is recorded with the lens's context (not its finished run), so
    a report by lens then has the cost, nothing unpriced and no run cut short."""
    with monitor.lens("start_job", source_id="doc-7") as run:
        queued = client.responses.create(**ASK, background=True)
    assert run.summary is not None and [r["event"] for r in records] == ["llm_api_call", "lens_summary"]
    assert run.summary["cost_complete"] is False and run.summary["total_cost_usd"] == 0
    assert run.summary["pending_calls"] == 1 and run.summary["total_api_calls"] == 1
    assert _report(records).unpriced_calls == 1
    stored = dict(run.summary)
    _poll_sync(client, queued)
    assert run.summary == stored == records.lenses[0]["summary"]  # what the application stored, for good
    begun, ended = records.calls
    assert ended["context"] == {k: v for k, v in begun["context"].items() if k != "lens_run_id"}
    assert ended["context"]["lens_key"] == "start_job" and ended["context"]["source_id"] == "doc-7"
    assert len(records.lenses) == 1  # its run was not written again
    [row] = summarise_records(records, by=["lens"]).rows
    assert row.key == {"lens": "start_job"} and float(row.cost_usd) == ended["cost"]["total_cost_usd"] > 0
    assert (row.unpriced_calls, row.cut_short_runs, row.lens_runs) == (0, 0, 1)


def test_two_servers_giving_the_same_id_have_each_end_recorded_with_its_own_start(
    monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Ids are a server's own: two servers (here two fake ones, each numbering from resp_1, as one
    started anew does) that give two responses the same id have each end recorded once, in the lens
    and with the request of the start it answers, never one end under the other's start and the other
    lost."""
    with (
        FakeOpenAI() as one,
        FakeOpenAI() as two,
        openai.OpenAI(api_key=FAKE_KEY, base_url=one.base_url, max_retries=0) as raw_one,
        openai.OpenAI(api_key=FAKE_KEY, base_url=two.base_url, max_retries=0) as raw_two,
    ):
        first, second = monitor.instrument(raw_one), monitor.instrument(raw_two)
        with monitor.lens("first"):
            queued_one = first.responses.create(**ASK, background=True)
        with monitor.lens("second"):
            queued_two = second.responses.create(**{**ASK, "model": "gpt-4o"}, background=True)
        assert queued_one.id == queued_two.id  # the same id, from two servers
        _poll_sync(first, queued_one)
        _poll_sync(second, queued_two)
    ends = [r for r in records.calls if r["response"]["finish_reason"] == "completed"]
    assert [(r["context"]["lens_key"], r["request"]["model"]) for r in ends] == [
        ("first", "gpt-4o-mini"),
        ("second", "gpt-4o"),
    ]
    assert all(r["cost"]["total_cost_usd"] for r in ends)
    assert [r["server"]["port"] for r in ends] == [one.port, two.port]


def _poll_sync(client: openai.OpenAI, response: Any) -> Any:
    while response.status in RUNNING:
        response = client.responses.retrieve(response.id)
    return response


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_cancelled_background_response_is_recorded_once_without_a_cost(
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """cancel() of a running response: its end, `interrupted` with no usage (OpenAI's answer to a
    cancel carries none), recorded once though cancelled twice and retrieved after; its lens says the
    cost is not complete and a report counts it as a call with no known cost, never as $0 and known."""
    c = aclient if is_async else client
    with monitor.lens("deep_research") as run:
        queued = await _maybe(c.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "9"}))
        running = await _maybe(c.responses.retrieve(queued.id))
        cancelled = await _maybe(c.responses.cancel(queued.id))
        again = await _maybe(c.responses.cancel(queued.id))
        after = await _maybe(c.responses.retrieve(queued.id))
    assert (running.status, cancelled.status, again.status, after.status) == (
        "in_progress", "cancelled", "cancelled", "cancelled",
    )  # fmt: skip
    assert [(r["status"], *cost) for r, cost in zip(records.calls, _costs(records), strict=True)] == [
        ("ok", "queued", None),
        ("interrupted", "cancelled", None),
    ]
    assert run.summary is not None and run.summary["cost_complete"] is False
    assert _report(records).unpriced_calls == 1


def test_another_process_retrieving_the_end_records_it_once_with_its_own_context(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """A worker that did not begin the response (another process polls it) records its end once, in
    its own lens, though it retrieves it again; a stored response that did not run in the background
    (its usage was its create's) is retrieved without a record. The log of both processes sums to the
    cost, with nothing unpriced."""
    with monitor.lens("start_job"):
        queued = client.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "2"})
        stored = client.responses.create(**ASK)
    done = warm_python.run(
        [sys.executable, "-c", _WORKER, fake_openai.base_url, queued.id, stored.id],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    ended = [r for r in theirs if r["event"] == "llm_api_call"]
    assert [r["response"]["finish_reason"] for r in ended] == ["completed"]
    assert ended[0]["context"]["lens_key"] == "poll_jobs" and ended[0]["response"]["id"] == queued.id
    log = [*records, *theirs]
    total = summarise_records(log, by=["lens"]).total
    assert total.unpriced_calls == 0
    paid = ended[0]["cost"]["total_cost_usd"] + records.calls[1]["cost"]["total_cost_usd"]
    assert float(total.cost_usd) == pytest.approx(paid)


_WORKER = """
import json, sys
import openai, llm_ledger
from llm_ledger.testing import capture
base_url, job, *shown = sys.argv[1:]
monitor = llm_ledger.LLMCallMonitor(logger=None)
with capture(monitor) as records, openai.OpenAI(api_key="sk-test", base_url=base_url) as raw:
    client = monitor.instrument(raw)
    with monitor.lens("poll_jobs"):
        response = client.responses.retrieve(job)
        while response.status in ("queued", "in_progress"):
            response = client.responses.retrieve(job)
        client.responses.retrieve(job)
        for other in shown:
            client.responses.retrieve(other)
print(json.dumps(list(records)))
"""

# what a background response's start asks for, beyond its input: the end's record names it all
ASKED: Any = {
    "model": "o4-mini", "input": ASK["input"], "reasoning": {"effort": "high"}, "temperature": 0.2,
    "top_p": 0.9, "max_output_tokens": 900, "text": {"format": {"type": "json_object"}, "verbosity": "low"},
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}],
    "service_tier": "flex", "background": True,
}  # fmt: skip
ECHOED = {
    "model": "o4-mini", "temperature": 0.2, "top_p": 0.9, "max_tokens": 900, "reasoning_effort": "high",
    "output_type": "json_object", "tools_count": 1, "service_tier": "flex", "verbosity": "low",
}  # fmt: skip


def test_another_process_ending_a_background_response_records_the_request_its_start_made(
    client: openai.OpenAI,
    records: Captured,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The end a worker records (it only polls the response) names the model and parameters the start
    asked for, as the ended Response states them, so a report by any of them files the end's cost with
    its start: not under ``(none)``."""
    client.responses.create(**ASKED, extra_headers={"x-fake-polls": "2", "x-fake-reasoning-tokens": "300"})
    [begun] = records.calls
    assert {key: begun["request"][key] for key in ECHOED} == ECHOED
    done = warm_python.run(
        [sys.executable, "-c", _WORKER, fake_openai.base_url, begun["response"]["id"]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [ended] = [r for r in json.loads(done.stdout) if r["event"] == "llm_api_call"]
    assert ended["response"]["finish_reason"] == "completed" and ended["cost"]["total_cost_usd"] > 0
    assert {key: ended["request"][key] for key in ECHOED} == ECHOED
    # the input is not in the Response: its length and messages stay unknown
    assert (ended["request"]["messages_count"], ended["request"]["user_prompt_length"]) == (None, 0)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in [*records, ended]))
    assert main(["report", str(log), "--by", "request.reasoning_effort", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    found = [(row["key"]["request.reasoning_effort"], row["calls"], row["cost_usd"]) for row in rows]
    assert found == [("high", 2, pytest.approx(ended["cost"]["total_cost_usd"]))]


def _poll_to_end(client: openai.OpenAI, response_id: str) -> None:
    while client.responses.retrieve(response_id).status in RUNNING:
        pass


def _resume(client: openai.OpenAI, response_id: str) -> None:
    list(client.responses.retrieve(response_id, stream=True, starting_after=1))


def _cancel(client: openai.OpenAI, response_id: str) -> None:
    client.responses.cancel(response_id)


@pytest.mark.parametrize("end", [_poll_to_end, _resume, _cancel])
def test_an_end_of_a_response_begun_elsewhere_records_the_request_the_response_states(
    end: Any, client: openai.OpenAI, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """A response begun through a client the ledger does not watch: its end, however it is seen (a
    poll, a resumed stream, a cancel), records the model and parameters the Response states, and the
    retrieve's own ``stream``."""
    with openai.OpenAI(api_key="sk-test", base_url=fake_openai.base_url) as plain:
        response_id = plain.responses.create(**ASKED, extra_headers={"x-fake-polls": "2"}).id
    end(client, response_id)
    [ended] = records.calls
    assert {key: ended["request"][key] for key in ECHOED} == ECHOED
    assert ended["request"]["stream"] is (end is _resume)
    assert ended["status"] == ("interrupted" if end is _cancel else "ok")


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_background_stream_resumed_after_a_cut_records_the_end_once(
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """create(background=True, stream=True) cut mid-way (the response runs on, server-side): recorded
    as the stream ended, its cost pending; resumed with retrieve(stream=True, starting_after=N), its
    end (response.completed) is recorded once, in the create's lens run, which is then complete. A
    background stream read to its end is the one record of its cost: a retrieve after it adds none."""
    c = aclient if is_async else client
    with monitor.lens("deep_research") as run:
        stream = await _maybe(c.responses.create(**ASK, background=True, stream=True,
                                                 extra_headers={"x-fake-fault": "cut-stream"}))  # fmt: skip
        seen: list[Any] = []
        with pytest.raises((openai.APIConnectionError, *_breaks())):
            await _collect(stream, seen)
        last = seen[-1].sequence_number
        resumed = await _maybe(c.responses.retrieve(seen[0].response.id, stream=True, starting_after=last))
        rest = [event async for event in _events(resumed)]
        assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed"
        whole = await _maybe(c.responses.create(**ASK, background=True, stream=True))
        finished = [event async for event in _events(whole)]
        await _maybe(c.responses.retrieve(finished[-1].response.id))
    assert [(r["status"], r["response"]["finish_reason"], r["request"]["stream"]) for r in records.calls] == [
        ("error", "in_progress", True),
        ("ok", "completed", True),
        ("ok", "completed", True),
    ]
    cut, ended, streamed = records.calls
    assert ended["response"]["id"] == cut["response"]["id"] and ended["usage"]["total_tokens"]
    assert ended["cost"]["total_cost_usd"] == streamed["cost"]["total_cost_usd"] > 0
    assert run.summary is not None and run.summary["cost_complete"] is True
    assert run.summary["total_cost_usd"] == pytest.approx(2 * streamed["cost"]["total_cost_usd"])


def _breaks() -> tuple[type[BaseException], ...]:
    from tests.sdk import STREAM_BREAKS

    return STREAM_BREAKS


async def _collect(stream: Any, seen: list[Any]) -> None:
    async for event in _events(stream):
        seen.append(event)


async def _events(stream: Any) -> Any:
    if hasattr(stream, "__aiter__"):
        async for event in stream:
            yield event
    else:
        for event in stream:
            yield event


def test_a_response_retrieved_that_did_not_run_in_the_background_is_not_recorded_again(
    client: openai.OpenAI, records: Captured
) -> None:
    """A stored response's usage was its create's: retrieving it (to show it, streamed or not) records
    nothing, nor does a retrieve that fails (an unknown id)."""
    created = client.responses.create(**ASK)
    client.responses.retrieve(created.id)
    list(client.responses.retrieve(created.id, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    assert len(records.calls) == 1


def _raw(client: openai.OpenAI, response_id: str) -> None:
    for _ in range(2):
        client.responses.with_raw_response.retrieve(response_id).parse()


def _helper(client: openai.OpenAI, response_id: str) -> None:
    with client.responses.stream(response_id=response_id) as stream:
        for _ in stream:
            pass


def _streaming_response(client: openai.OpenAI, response_id: str) -> None:
    for _ in range(2):
        with client.responses.with_streaming_response.retrieve(response_id) as response:
            response.read()


@pytest.mark.parametrize("path", [_raw, _helper, _streaming_response])
def test_every_path_of_a_retrieve_records_the_end_once(
    path: Any, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """with_raw_response.retrieve(), the responses.stream(response_id=...) helper (a stream resumed
    from the start) and with_streaming_response.retrieve(): the end recorded once, in the lens."""
    with monitor.lens("deep_research") as run:
        queued = client.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "1"})
        path(client, queued.id)
    assert [r["response"]["finish_reason"] for r in records.calls] == ["queued", "completed"]
    assert run.summary is not None and run.summary["cost_complete"] is True
    assert run.summary["total_cost_usd"] == records.calls[1]["cost"]["total_cost_usd"] > 0


def test_the_fake_server_runs_background_responses_as_openai_does(client: openai.OpenAI) -> None:
    """queued, in progress for x-fake-polls retrieves, then completed with its usage; a stream from any
    sequence number; cancel only for a background response; an unknown id is a 404."""
    queued = client.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "2"})
    statuses = [client.responses.retrieve(queued.id) for _ in range(3)]
    assert [queued.status, *(r.status for r in statuses)] == [
        "queued",
        "in_progress",
        "in_progress",
        "completed",
    ]
    assert [r.usage is not None for r in statuses] == [False, False, True] and statuses[-1].background
    events = list(client.responses.retrieve(queued.id, stream=True, starting_after=2))
    assert events[0].sequence_number == 3 and events[-1].type == "response.completed"
    assert client.responses.cancel(queued.id).status == "completed"  # ended: answered as it is
    stored = client.responses.create(**ASK)
    with pytest.raises(openai.BadRequestError, match="background=true"):
        client.responses.cancel(stored.id)
    with pytest.raises(openai.NotFoundError, match="resp_none"):
        client.responses.retrieve("resp_none")


def test_a_background_response_ending_leaves_a_run_incomplete_for_its_other_calls(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The end of a background response completes its run's cost only when nothing else is left out:
    a web search fee left out by another call of the run keeps ``cost_complete`` false."""
    with monitor.lens("deep_research") as run:
        client.responses.create(model="gpt-4.1", input="hi", tools=[{"type": "web_search"}])
        queued = client.responses.create(**ASK, background=True, extra_headers={"x-fake-polls": "1"})
        while queued.status in RUNNING:
            queued = client.responses.retrieve(queued.id)
    searched, _, ended = records.calls
    assert searched["cost"]["left_out"] == ["web_search"] and ended["cost"]["total_cost_usd"]
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_a_report_before_the_end_is_logged_names_the_background_start_as_why_its_cost_is_unknown(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A report read while a background response runs on (its end in no record yet) marks the cost as
    a lower bound, and its footnote gives that reason among the others, so the reader waits for the
    end rather than hunting for a missing price or usage."""
    with monitor.lens("start_job"):
        client.responses.create(**ASK, background=True)
    text = render(summarise_records(records, by=["lens"]))
    assert "$0.000000*" in text
    assert "* 1 billed call has no known cost" in text
    assert "or a background response whose end is in no log read)" in text


def test_reprice_of_a_log_counts_a_background_start_unpriced_until_it_reads_its_end(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger reprice`` reads a log as ``report`` does: a start whose end is in no record read
    (the log as it was before the end came) leaves before and after incomplete, saying why (never $0
    and complete); the whole log pairs the start with its end, complete on both sides."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        with monitor.lens("start_job"):
            queued = client.responses.create(**ASK, background=True)
        _poll_sync(client, queued)
    begun, summary, _end = path.read_text().splitlines()
    before_the_end = tmp_path / "before.jsonl"
    before_the_end.write_text(f"{begun}\n{summary}\n")
    assert main(["reprice", str(before_the_end)]) == 0
    said = capsys.readouterr().out
    assert "$0.000000*" in said
    assert "* before and after leave out 1 background response begun whose end no record read shows" in said
    totals = []
    for log in (before_the_end, path):
        assert main(["reprice", str(log), "--format", "json"]) == 0
        totals.append(json.loads(capsys.readouterr().out))
    assert [t["pending_calls"] for t in totals] == [1, 0]
    complete = [(t["total"]["before_complete"], t["total"]["after_complete"]) for t in totals]
    assert complete == [(False, False), (True, True)]
    assert totals[1]["total"]["before_usd"] == totals[1]["total"]["after_usd"] > 0
