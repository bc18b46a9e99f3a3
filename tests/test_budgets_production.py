"""Budgets in production: budgets.yaml (or a mapping) checked against each lens run as its calls end."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import BudgetError, BudgetExceededError, BudgetGuard, ConfigError
from llm_ledger.report import summarise_records
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import FAKE_KEY

HI: Any = [{"role": "user", "content": "hi"}]


def _budget_records(records: Captured) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "budget_exceeded"]


def test_a_run_over_a_limit_emits_one_warning_record_and_calls_back(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """Warn mode: the call that crosses max_api_calls is followed by one budget_exceeded record (not one
    per later call), the callback gets it, and every call is still sent."""
    heard: list[llm_ledger.BudgetRecord] = []
    monitor.budgets = BudgetGuard({"lenses": {"digest": {"max_api_calls": 2}}}, on_exceeded=heard.append)
    with monitor.lens("digest", source_id="s-1") as run:
        for _ in range(4):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(fake_openai.requests) == 4
    events = [r["event"] for r in records]
    assert events == ["llm_api_call"] * 3 + ["budget_exceeded", "llm_api_call", "lens_summary"]
    [record] = _budget_records(records)
    assert record["level"] == "WARNING" and record["logger"] == "llm_monitor"
    assert record["budget"] == {
        "limit": "max_api_calls",
        "max": 2,
        "actual": 3,
        "source": "configure(budgets=...)",
        "mode": "warn",
        "refused": False,
    }
    assert record["context"]["lens_key"] == "digest" and record["context"]["source_id"] == "s-1"
    assert record["context"]["lens_run_id"] == run.run_id
    assert heard == [record]


def test_each_limit_is_reported_once_with_its_own_record(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Token and cost limits are compared with the run's running totals; cost in USD as written."""
    monitor.budgets = BudgetGuard({"default": {"max_total_tokens": 1, "max_cost_usd": 1e-9}})
    with monitor.lens("any_lens"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    budget = {r["budget"]["limit"]: r["budget"] for r in _budget_records(records)}
    assert set(budget) == {"max_total_tokens", "max_cost_usd"}
    first_call = records.calls[0]
    assert budget["max_total_tokens"]["actual"] == first_call["usage"]["total_tokens"]
    assert budget["max_cost_usd"]["actual"] == pytest.approx(first_call["cost"]["total_cost_usd"])
    assert budget["max_cost_usd"]["max"] == 1e-9


def test_the_warning_reaches_the_llm_monitor_logger(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A monitor that logs (the default) logs the breach at WARNING on llm_monitor."""
    monitor = llm_ledger.LLMCallMonitor()
    monitor.budgets = BudgetGuard({"lenses": {"digest": {"max_api_calls": 0}}})
    caplog.set_level(logging.INFO, logger="llm_monitor")
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        with monitor.lens("digest"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "llm_monitor" and warning.getMessage().startswith('{"timestamp"')
    assert '"event":"budget_exceeded"' in warning.getMessage()


def test_raise_mode_sends_no_call_past_max_api_calls(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """Raise mode, max_api_calls: 3: three calls are sent, the 4th raises BudgetExceededError unsent
    and writes the run's one budget_exceeded record (refused, actual 4), which the error carries; the
    5th is refused with the same record; the run still ends with its summary of 3 calls."""
    heard: list[llm_ledger.BudgetRecord] = []
    guard = BudgetGuard({"lenses": {"agent": {"max_api_calls": 3}}}, mode="raise", on_exceeded=heard.append)
    monitor.budgets = guard

    def runaway() -> None:  # a loop that never ends by itself
        while True:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with monitor.lens("agent") as run:
        with pytest.raises(BudgetExceededError) as raised:
            runaway()
        assert len(fake_openai.requests) == 3
        with pytest.raises(BudgetExceededError) as again:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(fake_openai.requests) == 3
    [record] = _budget_records(records)
    assert record["budget"] == {
        "limit": "max_api_calls",
        "max": 3,
        "actual": 4,
        "source": "configure(budgets=...)",
        "mode": "raise",
        "refused": True,
    }
    assert raised.value.record == record and again.value.record == record and heard == [record]
    assert record["context"]["lens_run_id"] == run.run_id
    assert "'agent' is at its budget (max_api_calls 3, all started; limits from" in str(raised.value)
    assert "this call was not sent" in str(raised.value) and "budget_mode='warn'" in str(raised.value)
    assert run.summary is not None and run.summary["total_api_calls"] == 3
    assert [r["event"] for r in records] == ["llm_api_call"] * 3 + ["budget_exceeded", "lens_summary"]


def test_raise_mode_never_breaks_a_call_in_flight(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """A stream whose usage crosses the limit is read to its end; only the next call is refused."""
    monitor.budgets = BudgetGuard({"lenses": {"s": {"max_total_tokens": 1}}}, mode="raise")
    with monitor.lens("s"):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, extra_headers={"x-fake-chunks": "5"}
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text  # the whole answer came through
        with pytest.raises(BudgetExceededError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(fake_openai.requests) == 1


def test_a_cost_budget_says_once_when_calls_have_no_price(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A call with no price counts as $0 toward max_cost_usd: the budget cannot see it, and says so once
    per lens key (never for a lens whose calls are all priced), so that it never passes quietly."""
    monitor.budgets = BudgetGuard(
        {"lenses": {"digest": {"max_cost_usd": 1.0}, "priced": {"max_cost_usd": 1.0}}}
    )
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("priced"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    for _ in range(2):
        with monitor.lens("digest") as run:
            client.chat.completions.create(model="house-model-7b", messages=HI)
    assert run.summary is not None and run.summary["cost_complete"] is False
    said = [r.getMessage() for r in caplog.records if "max_cost_usd" in r.getMessage()]
    assert len(said) == 1, said
    assert "lens 'digest' has calls with no price" in said[0] and "price file" in said[0]


def test_a_cost_budget_blind_to_a_call_without_usage_says_why(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A priced model whose server reported no usage (a stream stopped early) has no cost either: the
    warning says so, with the fixes that apply (a call limit, usage reported), never a price file the
    model is already in, nor a token limit, as blind to that call as the cost."""
    monitor.budgets = BudgetGuard({"lenses": {"digest": {"max_cost_usd": 1.0}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("digest") as run:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-fault": "no-usage"}
        )
    assert run.summary is not None and run.summary["cost_complete"] is False
    [said] = [r.getMessage() for r in caplog.records if "max_cost_usd" in r.getMessage()]
    assert (
        "lens 'digest' has calls that reported no usage, which its budget max_cost_usd $1.0 counts as $0"
        in said
    )
    assert "keep a max_api_calls limit beside it" in said
    assert "price file" not in said and "token" not in said.replace("no usage", "")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_call_whose_usage_gives_only_its_total_keeps_its_tokens_with_no_cost(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    """A compatible server whose usage gives ``total_tokens`` alone: the record keeps the total (prompt
    and completion unknown), the run and a report count its tokens, and a total-token budget sees them;
    with no split no price applies, so the cost is left out (``cost_complete: false``) and the cost and
    prompt-token budgets say why: the server's usage, never a price file the model is already in."""
    limits = {"max_cost_usd": 1.0, "max_prompt_tokens": 10_000, "max_total_tokens": 5}
    monitor.budgets = BudgetGuard({"lenses": {"digest": limits}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("digest") as run:
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            stream=stream,
            extra_headers={"x-fake-usage-style": "total-only"},
        )
        for _ in answer if stream else ():
            pass
    [call] = records.calls
    total = call["usage"]["total_tokens"]
    assert total and (call["usage"]["prompt_tokens"], call["usage"]["completion_tokens"]) == (None, None)
    assert call["status"] == "ok" and call["cost"]["total_cost_usd"] is None
    assert run.summary is not None
    assert (run.summary["total_tokens"], run.summary["cost_complete"]) == (total, False)
    report = summarise_records(records, by=["lens"]).total
    assert (report.total_tokens, report.unpriced_calls) == (total, 1)
    said = [r.getMessage() for r in caplog.records]
    cost, prompt = (
        next(m for m in said if f"budget {key}" in m) for key in ("max_cost_usd", "max_prompt_tokens")
    )
    assert (
        "whose usage gave only total_tokens" in cost and "counts as $0" in cost and "price file" not in cost
    )
    assert "whose usage gave only total_tokens" in prompt and "counts as 0 tokens" in prompt
    assert [r["budget"]["limit"] for r in records if r["event"] == "budget_exceeded"] == ["max_total_tokens"]


def test_a_token_budget_blind_to_calls_without_usage_says_so_once(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A call answered with no usage counts as 0 tokens in the run's totals: its token limit can never
    see it, so that is said once per lens (CI fails such a limit closed; production warns). A call that
    failed, with no usage either, was not answered: nothing to say."""
    monitor.budgets = BudgetGuard({"lenses": {"digest": {"max_total_tokens": 10_000}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("digest"), pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-status": "500"}
        )
    assert not [r for r in caplog.records if "reported no usage" in r.getMessage()]
    for _ in range(2):
        with monitor.lens("digest"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-fault": "no-usage"}
            )
    [said] = [r.getMessage() for r in caplog.records if "reported no usage" in r.getMessage()]
    assert "lens 'digest'" in said and "max_total_tokens 10000 counts as 0 tokens" in said
    assert "keep a max_api_calls limit beside it" in said


@pytest.mark.asyncio
async def test_raise_mode_on_an_async_client(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """The refusal is raised from the awaited call, and tasks of other runs carry on."""
    monitor.budgets = BudgetGuard({"lenses": {"loop": {"max_api_calls": 1}}}, mode="raise")

    async def runaway() -> None:
        async with monitor.lens("loop"):
            while True:
                await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)

    async def fine() -> int:
        async with monitor.lens("loop") as run:
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert run.summary is not None
        calls: int = run.summary["total_api_calls"]
        return calls

    outcome = await asyncio.gather(runaway(), fine(), return_exceptions=True)
    assert isinstance(outcome[0], BudgetExceededError) and outcome[1] == 1
    assert len(fake_openai.requests) == 2  # the runaway's one, the other run's one


_SLOW = {"x-fake-fault": "slow", "x-fake-delay-ms": "200"}


@pytest.mark.asyncio
async def test_asyncio_gather_sends_no_more_calls_than_max_api_calls(
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    fake_openai: FakeOpenAI,
) -> None:
    """Calls in flight count as started: asyncio.gather of 10 slow calls with max_api_calls: 3 sends
    exactly 3 (the server receives 3), the other 7 raise BudgetExceededError unsent, the breach is
    recorded once, and the run's next call is refused."""
    monitor.budgets = BudgetGuard({"lenses": {"fan_out": {"max_api_calls": 3}}}, mode="raise")
    async with monitor.lens("fan_out") as run:
        outcome = await asyncio.gather(
            *(
                aclient.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=_SLOW)
                for _ in range(10)
            ),
            return_exceptions=True,
        )
        with pytest.raises(BudgetExceededError, match="max_api_calls 3, all started"):
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
    refused = [o for o in outcome if isinstance(o, BudgetExceededError)]
    assert len(refused) == 7 and len(fake_openai.requests) == 3
    [record] = _budget_records(records)
    assert all(error.record == record for error in refused)
    assert (record["budget"]["actual"], record["budget"]["refused"]) == (4, True)
    assert run.summary is not None and run.summary["total_api_calls"] == 3
    assert summarise_records(records, by=("lens",)).rows[0].over_budget == 1


def test_threads_of_one_run_send_no_more_calls_than_max_api_calls(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """Threads given the run with llm_ledger.propagate share its cap: 8 slow calls at once with
    max_api_calls: 3 send exactly 3; the breach is recorded once."""
    monitor.budgets = BudgetGuard({"lenses": {"pool": {"max_api_calls": 3}}}, mode="raise")
    start = threading.Barrier(8)

    def work() -> str:
        start.wait()
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=_SLOW)
        except BudgetExceededError:
            return "refused"
        return "sent"

    with monitor.lens("pool") as run, ThreadPoolExecutor(8) as pool:
        outcomes = [f.result() for f in [pool.submit(llm_ledger.propagate(work)) for _ in range(8)]]
    assert sorted(outcomes) == ["refused"] * 5 + ["sent"] * 3
    assert len(fake_openai.requests) == 3 and len(_budget_records(records)) == 1
    assert run.summary is not None and run.summary["total_api_calls"] == 3


def test_a_stream_being_read_counts_as_a_started_call(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """A stream still open is a started call: with max_api_calls: 1 the next call is refused while it is
    read, and the stream itself is read to its end."""
    monitor.budgets = BudgetGuard({"lenses": {"s": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("s") as run:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, extra_headers={"x-fake-chunks": "5"}
        )
        with stream:
            first = next(iter(stream))
            with pytest.raises(BudgetExceededError):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert first is not None and text
    assert len(fake_openai.requests) == 1
    assert run.summary is not None and run.summary["total_api_calls"] == 1


def test_a_call_refused_by_a_nested_runs_cap_counts_in_no_run(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """A call counts in every enclosing run's cap; refused by the inner run's, it counts in the outer's
    neither: the outer run still sends its own 2nd call, then refuses its 3rd with its own record."""
    monitor.budgets = BudgetGuard(
        {"lenses": {"outer": {"max_api_calls": 2}, "inner": {"max_api_calls": 1}}}, mode="raise"
    )
    with monitor.lens("outer") as outer:
        with monitor.lens("inner"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
            with pytest.raises(BudgetExceededError, match="'inner'"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(BudgetExceededError, match="'outer'"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(fake_openai.requests) == 2
    assert [r["context"]["lens_key"] for r in _budget_records(records)] == ["inner", "outer"]
    assert outer.summary is not None and outer.summary["total_api_calls"] == 2


def test_a_stopped_run_stops_only_itself(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Calls outside the run, in a later run of the same lens and in other threads' runs go through;
    a lens nested in the stopped run is stopped with it, and both runs still end with their summary."""
    monitor.budgets = BudgetGuard({"lenses": {"outer": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("outer"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with monitor.lens("inner"), pytest.raises(BudgetExceededError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with monitor.lens("inner"), pytest.raises(BudgetExceededError):  # stopped: no new run goes
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)

        def elsewhere() -> None:  # a thread starts outside the lens (no propagate)
            with monitor.lens("elsewhere"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)

        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    with monitor.lens("outer") as again:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert again.summary is not None and again.summary["total_api_calls"] == 1
    lenses = [r["context"]["lens_key"] for r in records.lenses]
    assert lenses == ["inner", "inner", "elsewhere", "outer", "outer"]


def test_limits_apply_per_lens_and_ci_sections_are_ignored(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens's own entry wins over default; tests and total are for CI only."""
    monitor.budgets = BudgetGuard(
        {
            "lenses": {"roomy": {"max_api_calls": 10}},
            "default": {"max_api_calls": 1},
            "tests": {"t::x": {"max_api_calls": 0}},
            "total": {"max_api_calls": 0},
        }
    )
    with monitor.lens("roomy"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    with monitor.lens("other"):
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [r["context"]["lens_key"] for r in _budget_records(records)] == ["other"]


def test_a_failing_callback_is_reported_and_the_call_is_unaffected(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, internal_log: pytest.LogCaptureFixture
) -> None:
    """The monitor never breaks the call it watches, not even through a user's callback."""

    def broken(record: Any) -> None:
        raise RuntimeError("pager down")

    monitor.budgets = BudgetGuard({"default": {"max_api_calls": 0}}, on_exceeded=broken)
    with monitor.lens("x"):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content
    assert "on_budget_exceeded callback" in internal_log.text and "pager down" in internal_log.text


def test_configure_reads_budgets_yaml_and_the_environment(
    fresh_config: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI
) -> None:
    """configure(budgets=path, budget_mode=...) sets the default monitor's guard; budgets=None turns it
    off."""
    path = tmp_path / "budgets.yaml"
    path.write_text("lenses:\n  digest: {max_api_calls: 1}\n")
    heard: list[Any] = []
    llm_ledger.configure(log_dir=None, budgets=path, budget_mode="raise", on_budget_exceeded=heard.append)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = llm_ledger.instrument(raw)

        def three_calls() -> None:
            for _ in range(3):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)

        with capture() as records, llm_ledger.lens("digest"), pytest.raises(BudgetExceededError):
            three_calls()
        assert len(heard) == 1 and heard[0]["budget"]["source"] == str(path)
        assert _budget_records(records) == heard

        llm_ledger.configure(log_dir=None, budgets=None)
        with llm_ledger.lens("digest"):
            three_calls()  # no budgets: no refusal


def test_configure_reads_budgets_from_the_environment(
    fresh_config: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM_LEDGER_BUDGETS / LLM_LEDGER_BUDGET_MODE set the default monitor's guard."""
    path = tmp_path / "budgets.yaml"
    path.write_text("lenses:\n  digest: {max_api_calls: 1}\n")
    monkeypatch.setenv("LLM_LEDGER_BUDGETS", str(path))
    monkeypatch.setenv("LLM_LEDGER_BUDGET_MODE", "raise")
    settings = llm_ledger.configure(log_dir=None)
    guard = llm_ledger.get_monitor().budgets
    assert settings.budget_mode == "raise" and guard is not None and guard.mode == "raise"
    assert guard.budgets.for_lens("digest") == llm_ledger.Limits(max_api_calls=1)


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        (
            {"lenses": {"digest": {"max_calls": 3}}},
            "configure(budgets=...): lenses.digest.max_calls: unknown key (did you mean 'max_api_calls'?); "
            "valid keys: max_api_calls, "
            "max_completion_tokens, max_cost_usd, max_prompt_tokens, max_total_tokens",
        ),
        (
            {"default": {"max_cost_usd": -0.5}},
            "configure(budgets=...): default.max_cost_usd: expected a non-negative number of USD, got -0.5",
        ),
        (
            {"lense": {}},
            "configure(budgets=...): lense: unknown key (did you mean 'lenses'?); "
            "valid keys: default, lenses, tests, total",
        ),
        (
            {"lenses": {"digest": {"max_api_calls": 2.5}}},
            "configure(budgets=...): lenses.digest.max_api_calls: expected a non-negative whole number, "
            "got 2.5",
        ),
    ],
)
def test_a_bad_budgets_mapping_names_the_key_and_the_choices(
    fresh_config: None, budgets: dict[str, Any], message: str
) -> None:
    """Bad input in code gets the file's error format, without a line number, and changes nothing."""
    with pytest.raises(BudgetError) as raised:
        llm_ledger.configure(log_dir=None, budgets=budgets)
    assert str(raised.value) == message
    assert llm_ledger.get_monitor().budgets is None


def test_a_budgets_mapping_takes_numbers_of_any_numeric_type(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A limit given in code as a Decimal or a Fraction (a cost computed with the ledger's own Decimal
    costs) is the number it is, enforced as such; a value that is no number is refused as its repr, not
    as the string it would print as (a Path('1') is not '1')."""
    limits = {"max_cost_usd": Decimal("1e-9"), "max_api_calls": Fraction(4, 2)}
    monitor.budgets = BudgetGuard({"lenses": {"digest": limits}})
    with monitor.lens("digest"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    exceeded = {r["budget"]["limit"]: r["budget"]["max"] for r in _budget_records(records)}
    assert exceeded == {"max_cost_usd": 1e-9, "max_api_calls": 2}
    with pytest.raises(BudgetError) as raised:
        BudgetGuard({"default": {"max_api_calls": Path("1")}})
    assert str(raised.value) == (
        "configure(budgets=...): default.max_api_calls: expected a non-negative whole number, "
        f"got {repr(Path('1'))!r}"
    )


def test_a_bad_budgets_file_names_file_line_and_key(fresh_config: None, tmp_path: Path) -> None:
    """A budgets file for production fails exactly as it does in CI: file, line, key path, valid keys."""
    path = tmp_path / "budgets.yaml"
    path.write_text(
        textwrap.dedent("""\
        lenses:
          digest:
            max_api_calls: -1
        """)
    )
    with pytest.raises(BudgetError, match=r"budgets.yaml:3: lenses.digest.max_api_calls: expected a "
                       r"non-negative whole number, got -1"):  # fmt: skip
        llm_ledger.configure(log_dir=None, budgets=path)
    with pytest.raises(BudgetError, match=r"budgets file not found; create it .*or pass configure"):
        llm_ledger.configure(log_dir=None, budgets=tmp_path / "missing.yaml")


def test_parse_budgets_given_a_path_says_to_load_the_file(tmp_path: Path) -> None:
    """parse_budgets() takes YAML text or a mapping; a path (or any other object) is a BudgetError that
    names load_budgets(), never an AttributeError from inside the parser."""
    path = tmp_path / "budgets.yaml"
    path.write_text("lenses:\n  digest: {max_api_calls: 3}\n")
    limits = llm_ledger.load_budgets(path).for_lens("digest")
    assert limits is not None and limits.max_api_calls == 3
    for value in (path, 42):
        with pytest.raises(
            BudgetError, match=r"parse_budgets\(\) takes YAML text or a mapping, got .*load_budgets"
        ):
            llm_ledger.parse_budgets(value)  # type: ignore[arg-type]


def test_budget_mode_reads_as_its_environment_variable_does(fresh_config: None) -> None:
    """budget_mode="RAISE" is "raise", as LLM_LEDGER_BUDGET_MODE=RAISE is."""
    settings = llm_ledger.configure(
        log_dir=None, budgets={"default": {"max_api_calls": 1}}, budget_mode=" RAISE"
    )
    assert settings.budget_mode == "raise"


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"budget_mode": "hard"}, {}, "budget_mode must be one of 'warn', 'raise', got 'hard'"),
        ({}, {"LLM_LEDGER_BUDGET_MODE": "strict"}, "LLM_LEDGER_BUDGET_MODE must be one of 'warn', 'raise'"),
        ({"budgets": {}, "on_budget_exceeded": "page-me"}, {}, "on_budget_exceeded must be a callable"),
        (
            {"budgets": 42},
            {},
            "budgets must be the path of a budgets file, a mapping of its shape or a Budgets, got 42",
        ),
    ],
)
def test_bad_budget_options_name_the_valid_choices(
    fresh_config: None,
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, Any],
    env: dict[str, str],
    message: str,
) -> None:
    """A mode, callback or budgets argument that cannot be used is a ConfigError saying what would do."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        llm_ledger.configure(log_dir=None, **kwargs)


def test_the_refusal_shows_limits_and_totals_as_written_with_their_unit(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A million-token limit reads as 1000000 (not 1e+06, which made a run 5 tokens over look at its
    limit), and a cost limit in dollars with every digit."""
    big = {"x-fake-cached-tokens": "1000005"}  # the fake server's prompt is at least the cached tokens
    monitor.budgets = BudgetGuard({"lenses": {"t": {"max_prompt_tokens": 1_000_000}}}, mode="raise")
    with monitor.lens("t"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=big)
        with pytest.raises(BudgetExceededError) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert "(max_prompt_tokens 1000000, reached 1000005;" in str(raised.value)
    monitor.budgets = BudgetGuard({"lenses": {"c": {"max_cost_usd": 1e-9}}}, mode="raise")
    with monitor.lens("c"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        with pytest.raises(BudgetExceededError) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    # 5 prompt tokens at $0.15 and 3 completion tokens at $0.60 per 1M on gpt-4o-mini
    assert "(max_cost_usd $0.000000001, reached $0.00000255;" in str(raised.value)


def test_a_cost_written_with_a_dollar_sign_says_to_drop_it(tmp_path: Path) -> None:
    """`max_cost_usd: $0.05` (and `input: $2.50` in a price file) is refused with the fix, not as
    '<5 characters not shown: they look like a credential>'."""
    with pytest.raises(BudgetError) as raised:
        llm_ledger.parse_budgets("default:\n  max_cost_usd: $0.05\n")
    assert str(raised.value) == (
        "budgets.yaml:2: default.max_cost_usd: expected a non-negative number of USD, got '$0.05': "
        "write 0.05, without the $ (the unit is USD)"
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  house-7b: {input: $2.50, output: 10}\n")
    with pytest.raises(llm_ledger.PriceFileError, match=r"got '\$2\.50': write 2\.50, without the \$"):
        llm_ledger.PriceTable.from_file(prices)


def test_a_background_response_polled_in_its_run_is_no_blind_spot_of_its_budget(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A background response's start has no usage yet (its cost is pending, not missing): its run's
    cost and token limits are not told they cannot see calls that "reported no usage"; they count its
    end, polled in the run, like any call (here over both limits)."""
    monitor.budgets = BudgetGuard(
        {"lenses": {"deep_research": {"max_cost_usd": 0.000001, "max_total_tokens": 10}}}
    )
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("deep_research") as run:
        response = client.responses.create(model="gpt-4o-mini", input="otters " * 20, background=True)
        while response.status in ("queued", "in_progress"):
            response = client.responses.retrieve(response.id)
    assert run.summary is not None and run.summary["cost_complete"] is True
    assert [r.getMessage() for r in caplog.records if "lens 'deep_research'" in r.getMessage()] == []
    limits = [r["budget"]["limit"] for r in _budget_records(records)]
    assert sorted(limits) == ["max_cost_usd", "max_total_tokens"]


def test_a_run_that_ends_before_its_background_response_says_its_budget_cannot_count_it(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A lens that only starts a background response (a web handler) ends before its cost comes, which
    its run's cost limit then never sees: said once per lens key, naming the fix, never as calls that
    "reported no usage"; a lens with only a call limit is told nothing."""
    monitor.budgets = BudgetGuard(
        {"lenses": {"start_job": {"max_cost_usd": 1.0}, "counted": {"max_api_calls": 5}}}
    )
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for lens in ("start_job", "start_job", "counted"):
        with monitor.lens(lens):
            client.responses.create(model="gpt-4o-mini", input="otters", background=True)
    said = [r.getMessage() for r in caplog.records if "lens '" in r.getMessage()]
    assert said == [
        "llm-ledger: lens 'start_job' ended with background responses (background=True) still running, "
        "whose cost its budget max_cost_usd $1.0 cannot count: the record of their end comes after the "
        "run; retrieve them until they end inside the lens, or keep a max_api_calls limit beside it"
    ]


def test_a_budget_blind_to_an_image_or_video_billed_in_units_says_so_not_no_usage(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """dall-e-3 (billed per image) reports no usage, and never will: the run's cost and token limits
    cannot see it, which is said once each, naming what it is billed in, never telling the user to have
    the server report usage or read streams to their end."""
    monitor.budgets = BudgetGuard({"lenses": {"promo": {"max_cost_usd": 1.0, "max_total_tokens": 1000}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for _ in range(2):
        with monitor.lens("promo") as run:
            client.images.generate(model="dall-e-3", prompt="an otter")
    assert run.summary is not None and run.summary["cost_complete"] is False
    said = [r.getMessage() for r in caplog.records if "lens 'promo'" in r.getMessage()]
    assert [s.split(" counts as ")[1].partition(";")[0] for s in said] == ["$0", "0 tokens"]
    for message in said:
        assert "image, audio or video calls billed in other units than tokens" in message
        assert "report usage" not in message and "stream" not in message


def test_a_cost_budget_blind_to_a_cancelled_background_response_says_it_never_reports_usage(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A background response cancelled while it runs is billed for what ran, and OpenAI's answer says
    no usage: the run's cost limit cannot see it, and the warning says a cancelled response never
    reports it (the stream advice alone would send the user looking for a stream)."""
    monitor.budgets = BudgetGuard({"lenses": {"research": {"max_cost_usd": 1.0}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with monitor.lens("research") as run:
        queued = client.responses.create(
            model="gpt-4o-mini", input="otters", background=True, extra_headers={"x-fake-polls": "5"}
        )
        assert client.responses.cancel(queued.id).status == "cancelled"
    assert run.summary is not None and run.summary["cost_complete"] is False
    [said] = [r.getMessage() for r in caplog.records if "lens 'research'" in r.getMessage()]
    assert "reported no usage" in said and "a cancelled background response never reports it" in said
