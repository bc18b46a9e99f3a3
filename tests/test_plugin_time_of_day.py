"""A replayed call whose price depends on the time of day (DeepSeek's peak hours) costs the same in CI
whatever the hour: the plugin's session prices it at the day's dearest rate (or at ``--llm-time-of-day``),
in its records, its table, its budgets and its report, and `llm-ledger reprice` of the report agrees."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger import _monitor, _pricing
from llm_ledger._cli import main as cli_main
from tests.plugin_helpers import INI, run, server_fixture, with_key_fixture, write_project
from tests.report_helpers import StoppedClock

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

# deepseek-v4-pro (genai-prices 0.2.5): double from 01:00 to 04:00 and from 06:00 to 10:00 UTC
PEAK = datetime(2026, 12, 4, 7, 0, tzinfo=UTC)
OFF_PEAK = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LATE = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)

V4_TESTS = """
import json
import os

import openai
import pytest

import llm_ledger as ledger
from llm_ledger.testing import capture

# the application's own price table: its local gateway forwards to DeepSeek
MONITOR = ledger.LLMCallMonitor(
    logger=None, prices=ledger.PriceTable(hosts={"127.0.0.1": ledger.HostPrice("deepseek")})
)


@pytest.mark.llm
def test_review():
    client = MONITOR.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with capture(MONITOR) as records, client, MONITOR.lens("review"):
        client.chat.completions.create(
            model="deepseek-v4-pro", messages=[{"role": "user", "content": "Review this diff " * 40}]
        )
    with open("calls.jsonl", "a") as out:
        out.writelines(json.dumps(call) + "\\n" for call in records.calls)
"""


@pytest.fixture
def v4(pytester: pytest.Pytester, server: Any, with_key: None) -> pytest.Pytester:
    """An inner project whose deepseek-v4-pro call is recorded, with the server then stopped."""
    write_project(pytester, V4_TESTS)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)
    (pytester.path / "calls.jsonl").unlink()
    server.stop()
    return pytester


def replay_at(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, when: datetime, *args: str
) -> tuple[pytest.RunResult, dict[str, Any]]:
    """Replay the project with the wall clock at ``when``: the session's result and its one call record."""
    with monkeypatch.context() as patch:
        patch.setattr(_monitor, "time", StoppedClock(when.timestamp()))
        result = run(pytester, *args)
    calls = pytester.path / "calls.jsonl"
    [record] = [json.loads(line) for line in calls.read_text().splitlines()]
    calls.unlink()
    assert record["timing"]["start_time"].startswith(when.strftime("%Y-%m-%dT%H:%M"))
    return result, record


def genai_usd(record: dict[str, Any], when: datetime) -> Decimal:
    """What genai-prices charges for the record's tokens at DeepSeek at ``when`` (the reference)."""
    usage = record["usage"]
    tokens = genai_prices.Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])
    calc = genai_prices.calc_price(
        tokens, "deepseek-v4-pro", provider_id="deepseek", genai_request_timestamp=when
    )
    return calc.total_price


def cost(record: dict[str, Any]) -> Decimal:
    return Decimal(repr(record["cost"]["total_cost_usd"]))


def test_a_replayed_call_costs_the_dearest_rate_whatever_the_hour(
    v4: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replayed at peak, off-peak or late at night, the call's record, its lens in the report and the
    report's usage row cost the day's dearest rate (the peak price), the row carries the minute it was
    priced at, repricing the report reproduces the cost, and the session says so once."""
    peak_usd = None
    for i, when in enumerate((OFF_PEAK, PEAK, LATE)):
        result, record = replay_at(v4, monkeypatch, when, f"--llm-report=report-{i}.json")
        result.assert_outcomes(passed=1)
        assert cost(record) == genai_usd(record, PEAK) == 2 * genai_usd(record, OFF_PEAK)
        assert peak_usd in (None, cost(record))
        peak_usd = cost(record)
        result.stdout.fnmatch_lines(
            ["llm-ledger: calls whose price depends on the time of day were priced at the day's dearest *"]
        )
        assert result.stdout.str().count("not at the hour they ran") == 1
        assert "deepseek-v4-pro (01:00 UTC)" in result.stdout.str()

        report = json.loads((v4.path / f"report-{i}.json").read_text())
        assert Decimal(repr(report["lenses"]["review"]["cost_usd"])) == cost(record)
        [row] = report["usage"]
        assert row["at"] == "2026-12-04T01:00:00+00:00"  # the dearest part's start, that day
        capsys.readouterr()  # the inner session's output
        assert cli_main(["reprice", str(v4.path / f"report-{i}.json"), "--format", "json"]) == 0
        total = json.loads(capsys.readouterr().out)["total"]
        assert Decimal(repr(total["after_usd"])) == Decimal(repr(total["before_usd"])) == cost(record)
        assert total["change_usd"] == 0


def test_a_budget_between_off_peak_and_peak_fails_at_any_hour_unless_told_otherwise(
    v4: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lens budget the call meets off-peak but not at peak fails the run off-peak too (fail closed);
    --llm-time-of-day=now prices at the hour the test runs, and ini llm_time_of_day at a time of its own."""
    _, record = replay_at(v4, monkeypatch, OFF_PEAK, "--llm-time-of-day=now")
    off_peak, peak = genai_usd(record, OFF_PEAK), genai_usd(record, PEAK)
    assert cost(record) == off_peak < peak
    v4.path.joinpath("budgets.yaml").write_text(
        f"lenses:\n  review: {{max_cost_usd: {(off_peak + peak) / 2}}}\n"
    )

    result, record = replay_at(v4, monkeypatch, OFF_PEAK, "--llm-budget")
    assert cost(record) == peak
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llm-ledger: 1 budget limit(s) exceeded*", "lens review *max_cost_usd *"])

    result, record = replay_at(v4, monkeypatch, OFF_PEAK, "--llm-budget", "--llm-time-of-day=now")
    assert (result.ret, cost(record)) == (pytest.ExitCode.OK, off_peak)
    assert "not at the hour they ran" not in result.stdout.str()

    v4.makefile(".ini", pytest=INI + "llm_time_of_day = 12:00\n")
    result, record = replay_at(v4, monkeypatch, PEAK, "--llm-budget")
    assert (result.ret, cost(record)) == (pytest.ExitCode.OK, off_peak)
    assert "deepseek-v4-pro (12:00 UTC)" in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--llm-time-of-day=7PM"], "", "--llm-time-of-day: '7PM' is not a time of day; "),
        (["-o", "llm_time_of_day= Noon"], "", "-o 'llm_time_of_day= Noon': ' Noon' is not a time of day; "),
        (
            [],
            "llm_time_of_day = 25:00 UTC\n",
            "ini llm_time_of_day in *pytest.ini: '25:00 UTC' is not a time of day; ",
        ),
    ],
)
def test_a_time_of_day_that_is_none_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    """A bad --llm-time-of-day or ini llm_time_of_day stops the run, quoting the value as written and
    naming the valid choices."""
    write_project(pytester, "def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=INI + ini)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: llm-ledger: {message}use dearest (the day's dearest rate), HH:MM (UTC, e.g. 13:30) or now*"]
    )


def test_a_project_without_calls_priced_by_time_says_nothing_of_it(
    pytester: pytest.Pytester, server: Any, with_key: None
) -> None:
    """The line on the time of day appears only when some call's price depends on it."""
    write_project(pytester, V4_TESTS.replace("deepseek-v4-pro", "deepseek-v3.2"))  # one price all day
    result = run(pytester, "--llm-record-mode=once")
    result.assert_outcomes(passed=1)
    [record] = [json.loads(line) for line in (pytester.path / "calls.jsonl").read_text().splitlines()]
    assert record["cost"]["total_cost_usd"] > 0
    assert "time of day" not in result.stdout.str()


LOGGED_CONFTEST = """
import llm_ledger

llm_ledger.configure(price_file="prices.yaml")  # its gateway on this machine forwards to DeepSeek


def pytest_sessionfinish():
    llm_ledger.flush()
"""

LOGGED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_review():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("review"):
        client.chat.completions.create(
            model="deepseek-v4-pro", messages=[{"role": "user", "content": "Review this diff " * 40}]
        )
"""


@pytest.mark.usefixtures("fresh_config", "with_key")
def test_the_sessions_log_reprices_to_the_sessions_cost_at_any_hour(
    pytester: pytest.Pytester,
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A session replayed off-peak prices its call at the day's dearest rate; the llm_calls.jsonl of ini
    llm_log_dir says so (``cost.priced_at``), so `llm-ledger reprice` of that log, run at another hour,
    gives the session's cost, as repricing its --llm-report does: a PR's reviewer gets one figure."""
    write_project(pytester, LOGGED_TESTS)
    pytester.makeconftest(LOGGED_CONFTEST)
    prices = 'version: 1\nhosts:\n  "127.0.0.1": {provider: deepseek}\n'
    pytester.path.joinpath("prices.yaml").write_text(prices)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)
    server.stop()
    pytester.makefile(".ini", pytest=INI + "llm_log_dir = test-logs\n")
    with monkeypatch.context() as patch:
        patch.setattr(_monitor, "time", StoppedClock(OFF_PEAK.timestamp()))
        run(pytester, "--llm-report=report.json").assert_outcomes(passed=1)
    log = pytester.path / "test-logs" / "llm_calls.jsonl"
    [record] = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "llm_api_call"]
    assert record["timing"]["start_time"].startswith("2026-12-04T12:00")
    assert record["cost"]["priced_at"] == "2026-12-04T01:00:00.000Z"  # the dearest part's start, that day
    session_usd = Decimal(repr(json.loads((pytester.path / "report.json").read_text())["total"]["cost_usd"]))
    assert cost(record) == session_usd == genai_usd(record, PEAK) == 2 * genai_usd(record, OFF_PEAK)

    capsys.readouterr()  # the inner sessions' output
    for source in (log, pytester.path / "report.json"):
        with monkeypatch.context() as patch:  # repriced later, at an off-peak hour
            patch.setattr(_pricing, "time", StoppedClock(LATE.timestamp()))
            assert cli_main(["reprice", str(source), "--format", "json"]) == 0
        total = json.loads(capsys.readouterr().out)["total"]
        assert Decimal(repr(total["after_usd"])) == Decimal(repr(total["before_usd"])) == session_usd
        assert total["change_usd"] == 0
