"""The SDK's retries and timeouts: an attempt the server may have billed (answered 2xx, then its body
broke; or sent, then timed out waiting) leaves the call's and its lens's cost incomplete, whether the
SDK retried it or raised; an attempt that sent nothing (a refused connection) or was refused does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import BudgetGuard
from llm_ledger._records import CALL_EVENT
from llm_ledger.analysis import iter_records
from llm_ledger.analysis._usage import LOST_ANSWERS
from llm_ledger.report import summarise
from llm_ledger.testing import Captured, FakeOpenAI
from pytest_llm_ledger._report import SessionLedger
from tests.conftest import FAKE_KEY, Sdk
from tests.plugin_helpers import cli, run, server_fixture, with_key_fixture, write_project
from tests.report_helpers import logging_to

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name
HI: Any = [{"role": "user", "content": "hi"}]


def _chat(client: openai.OpenAI, headers: dict[str, str]) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=headers)


@pytest.mark.parametrize("fault", ["cut-stream", "reset"])
def test_a_retried_answer_whose_body_broke_leaves_the_cost_incomplete(
    fault: str,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """The server answered 200 (generated, billed), the body broke, the SDK retried and the retry
    succeeded: the caller gets the answer, the record the retry's usage and cost and
    ``cost.attempts_left_out: 1``, and the lens does not claim a complete cost."""
    retrying = client.with_options(max_retries=2)
    with monitor.lens("digest") as run:
        answer = _chat(retrying, {"x-fake-fault": fault, "x-fake-fault-attempts": "1"})
    assert answer.choices[0].message.content
    assert [r.retry_count for r in fake_openai.requests] == [0, 1]
    [record] = records.calls
    assert record["status"] == "ok" and record["retries"] == 1 and record["error"] is None
    assert record["usage"]["total_tokens"] == answer.usage.total_tokens if answer.usage else False
    assert record["cost"]["total_cost_usd"] and record["cost"]["attempts_left_out"] == 1
    assert run.summary is not None and run.summary["cost_complete"] is False
    assert run.summary["total_cost_usd"] == record["cost"]["total_cost_usd"]


def test_a_retry_after_a_refusal_keeps_the_cost_complete(
    fake_openai: FakeOpenAI, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A 429 (or 5xx) the SDK retries was not billed: the retried call's cost is whole."""
    fake_openai.fail_next(429)
    with monitor.lens("digest") as run:
        _chat(client.with_options(max_retries=2), {})
    [record] = records.calls
    assert record["retries"] == 1 and "attempts_left_out" not in record["cost"]
    assert run.summary is not None and run.summary["cost_complete"] is True


@pytest.mark.parametrize("retries", [0, 1])
def test_a_read_timeout_counts_as_possibly_billed(
    retries: int, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A request sent whose answer timed out (the SDK's ``timeout``) may be generated and billed all the
    same: retried into a success, or raised, the lens says its cost is incomplete."""
    slow = {"x-fake-fault": "slow", "x-fake-delay-ms": "2000", "x-fake-fault-attempts": "1"}
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=retries, timeout=0.3)
    with raw, monitor.lens("digest") as run:
        client = monitor.instrument(raw)
        if retries:
            _chat(client, slow)
        else:
            with pytest.raises(openai.APITimeoutError):
                _chat(client, slow)
    [record] = records.calls
    assert record["status"] == ("ok" if retries else "error")
    assert record["cost"]["attempts_left_out"] == 1
    assert run.summary is not None and run.summary["cost_complete"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["sdk timeout", "asyncio.timeout"])
async def test_a_timeout_and_a_cancellation_while_waiting_agree(
    how: str, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The same wait cut by the SDK's timeout or by ``asyncio.timeout`` (a cancellation): the request
    was sent either way, so neither lens claims a complete cost."""
    slow = {"x-fake-fault": "slow", "x-fake-delay-ms": "2000"}
    timeout = 0.3 if how == "sdk timeout" else 30
    raw = openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0, timeout=timeout)
    async with raw:
        client = monitor.instrument(raw)
        with pytest.raises((openai.APITimeoutError, TimeoutError)):
            async with monitor.lens("digest") as run, asyncio.timeout(0.3 if how != "sdk timeout" else 30):
                await client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=slow)
    [record] = records.calls
    assert record["status"] == ("error" if how == "sdk timeout" else "interrupted")
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_a_connection_refused_is_not_billed(
    monitor: llm_ledger.LLMCallMonitor, records: Captured, refused_port: int
) -> None:
    """Nothing reached a server (a connection refused, retried): the failed call's cost is whole, $0."""
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=f"http://127.0.0.1:{refused_port}/v1", max_retries=1)
    with raw, monitor.lens("digest") as run, pytest.raises(openai.APIConnectionError):
        _chat(monitor.instrument(raw), {})
    [record] = records.calls
    assert record["retries"] == 1 and "attempts_left_out" not in record["cost"]
    assert run.summary is not None and run.summary["cost_complete"] is True


def test_the_report_plugin_and_diff_name_answers_lost_to_retries(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log's reader (``llm-ledger report``), the plugin's report and ``llm-ledger diff`` read the
    lens's rule: the retried call's cost leaves out an answer lost, and they say so."""
    log = tmp_path / "llm_calls.jsonl"
    with logging_to(log, sdk) as (monitor, client), monitor.lens("digest"):
        _chat(
            client.with_options(max_retries=2), {"x-fake-fault": "cut-stream", "x-fake-fault-attempts": "1"}
        )
    assert summarise([str(log)]).total.unpriced_calls == 1  # llm-ledger report: its cost is incomplete
    ledger = SessionLedger()
    for record in iter_records([log]):
        add = ledger.add_call if record["event"] == CALL_EVENT else ledger.add_lens
        add("tests/test_x.py::test_x", record)
    report = ledger.report(exit_status=0)
    [row] = report["usage"]
    assert (row["lost_answer_calls"], row["uncosted_calls"], row["cost_usd"] > 0) == (1, 0, True)
    assert report["total"]["cost_complete"] is False
    path = tmp_path / "head.json"
    path.write_text(json.dumps(report))
    result = cli(capsys, "diff", str(path), str(path))
    assert "answers lost before their usage was read" in result.stdout


@pytest.mark.parametrize(("limit", "blind"), [("max_cost_usd", "$0"), ("max_total_tokens", "0 tokens")])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_budget_blind_to_a_lost_answer_says_why(
    limit: str,
    blind: str,
    retries: int,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lens's cost or token limit cannot see an answer billed whose usage was lost, retried into a
    success or raised: the warning names that cause, not a model with no price."""
    monitor.budgets = BudgetGuard({"lenses": {"digest": {limit: 1_000_000}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    broken = {"x-fake-fault": "cut-stream", "x-fake-fault-attempts": "1"}
    with monitor.lens("digest"), contextlib.suppress(openai.APIConnectionError):
        _chat(client.with_options(max_retries=retries), broken)
    [said] = [r.getMessage() for r in caplog.records if "lens 'digest'" in r.getMessage()]
    assert "answers the server may have billed whose usage was lost" in said, said
    assert f"{limit} " in said and f"counts as {blind}" in said, said


@pytest.mark.asyncio
async def test_an_async_retried_answer_whose_body_broke_is_counted_as_a_sync_one(
    fake_openai: FakeOpenAI,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """The async client's retry is counted as the sync one's: ``cost.attempts_left_out: 1``, the lens
    incomplete."""
    broken = {"x-fake-fault": "reset", "x-fake-fault-attempts": "1"}
    async with monitor.lens("digest") as run:
        await aclient.with_options(max_retries=2).chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers=broken
        )
    [record] = records.calls
    assert record["status"] == "ok" and record["retries"] == 1 and record["cost"]["attempts_left_out"] == 1
    assert run.summary is not None and run.summary["cost_complete"] is False


LOST_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_digest(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=1, timeout=0.3)
    broken = {"x-fake-fault": "slow", "x-fake-delay-ms": "2000", "x-fake-fault-attempts": "1"}
    with raw, ledger.lens("digest"):
        c = ledger.instrument(raw)
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                  extra_headers=broken)
    assert llm_ledger.cost_complete is False
"""


@pytest.mark.usefixtures("with_key")
def test_a_ci_budget_blind_to_a_lost_answer_fails_closed_naming_it(
    pytester: pytest.Pytester, server: Any
) -> None:
    """In a test session (recording), an attempt that timed out reading and was retried leaves the
    lens's cost and tokens unknown: its ``max_cost_usd`` and ``max_total_tokens`` cannot be checked,
    and the summary says why."""
    write_project(pytester, LOST_TESTS)
    pytester.path.joinpath("budgets.yaml").write_text(
        "lenses:\n  digest: {max_cost_usd: 1, max_total_tokens: 100000}\n"
    )
    result = run(pytester, "--llm-record-mode=once", "--llm-budget")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    said = f"{LOST_ANSWERS} by calls to 'gpt-4o-mini' (1 call)"
    result.stdout.fnmatch_lines(
        [
            f"lens digest: max_cost_usd cannot be checked: {said}; nothing re-recorded*",
            f"lens digest: max_total_tokens cannot be checked: {said}; nothing re-recorded*",
        ]
    )
