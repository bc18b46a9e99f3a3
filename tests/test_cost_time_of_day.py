"""Prices that depend on the time: DeepSeek's off-peak discount (each call is priced at the part of the day
it was made in, live and when a log is repriced) and a price change genai-prices lists ahead (it applies
from its day in a running process), as genai-prices prices them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import genai_prices.data
import openai
import pytest

import llm_ledger
from llm_ledger import HostPrice, PriceTable, _monitor, _pricing
from llm_ledger._cli import main
from llm_ledger._pricing import day_parts
from llm_ledger.report import usage_row
from llm_ledger.testing import Captured, price_time_of_day
from tests.report_helpers import StoppedClock

# deepseek-chat: the list price from 00:30 to 16:30 UTC, half of it the rest of the day
PEAK = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
OFF_PEAK = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
DEEPSEEK = PriceTable(hosts={"127.0.0.1": HostPrice("deepseek")})


def genai_usd(model: str, prompt: int, completion: int, when: datetime, cached: int = 0) -> Decimal:
    """What genai-prices charges for these tokens at DeepSeek at ``when`` (the independent reference)."""
    usage = genai_prices.Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    calc = genai_prices.calc_price(usage, model, provider_id="deepseek", genai_request_timestamp=when)
    return calc.total_price


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner", "deepseek-v4-flash"])
@pytest.mark.parametrize(
    "hour_minute", [(0, 0), (0, 30), (3, 59), (6, 0), (12, 0), (16, 29), (16, 30), (23, 59)]
)
def test_cost_at_a_time_of_day_is_genai_prices_price_then(model: str, hour_minute: tuple[int, int]) -> None:
    """``cost(at=...)`` is genai-prices' price at that moment, on either side of each off-peak boundary,
    from one table whose model names were resolved at another hour."""
    table = PriceTable()
    table.cost(model, prompt_tokens=1, completion_tokens=1, provider="deepseek")  # resolved now
    when = PEAK.replace(hour=hour_minute[0], minute=hour_minute[1])
    cost = table.cost(
        model,
        prompt_tokens=30_000,
        completion_tokens=4_000,
        cached_tokens=10_000,
        provider="deepseek",
        at=when,
    )
    assert cost is not None
    assert cost.total_cost_usd == genai_usd(model, 30_000, 4_000, when, cached=10_000)


def test_off_peak_is_cheaper_than_peak() -> None:
    """The two parts of deepseek-chat's day really are priced apart (half price off-peak)."""
    peak, off_peak = (
        PriceTable().cost(
            "deepseek-chat", prompt_tokens=1_000_000, completion_tokens=0, provider="deepseek", at=at
        )
        for at in (PEAK, OFF_PEAK)
    )
    assert peak is not None and off_peak is not None
    assert off_peak.total_cost_usd * 2 == peak.total_cost_usd


def test_at_must_be_an_aware_datetime() -> None:
    """A time without a zone is ambiguous for a price by UTC hour: refused, naming what to pass."""
    with pytest.raises(ValueError, match="at must be a datetime with a time zone"):
        PriceTable().cost("deepseek-chat", prompt_tokens=1, completion_tokens=1, at=datetime(2026, 12, 4, 12))


def _repriced(
    records: Iterable[Mapping[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Any:
    """The total of ``llm-ledger reprice --format json`` over a log holding ``records``."""
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert main(["reprice", str(log), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)["total"]


@pytest.mark.usefixtures("priced_when_made")
def test_each_call_is_priced_at_its_own_hour_and_a_repriced_log_agrees(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One long-running monitor makes a DeepSeek call at peak and one off-peak: each record costs what
    genai-prices charges at its start time (not the price of whichever hour first priced the model), and
    repricing the log with nothing changed finds no change."""
    monitor.prices = DEEPSEEK
    for when in (PEAK, OFF_PEAK):
        monkeypatch.setattr(_monitor, "time", StoppedClock(when.timestamp()))
        with llm_ledger.lens("digest"):
            client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "hi " * 500}]
            )
    monkeypatch.undo()
    peak, off_peak = records.calls
    for record, when in ((peak, PEAK), (off_peak, OFF_PEAK)):
        assert record["timing"]["start_time"].startswith(when.strftime("%Y-%m-%dT%H:%M"))
        usage = record["usage"]
        expected = genai_usd("deepseek-chat", usage["prompt_tokens"], usage["completion_tokens"], when)
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == expected
    assert off_peak["cost"]["total_cost_usd"] < peak["cost"]["total_cost_usd"]

    total = _repriced(records, tmp_path, capsys)
    assert total["calls"] == 2
    assert total["change_usd"] == 0
    assert total["after_usd"] == total["before_usd"]


NEW_YEARS_EVE = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
NEW_YEAR = datetime(2027, 1, 1, 0, 30, tzinfo=UTC)


def test_a_listed_price_change_applies_from_its_day_in_a_running_process(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gemini-3.8-flash's introductory rate ends on 2027-01-01 (genai-prices lists the new price): a
    monitor that priced it on New Year's Eve prices the next call, after midnight, at the new price."""
    monitor.prices = PriceTable(hosts={"127.0.0.1": HostPrice("google")})
    for when in (NEW_YEARS_EVE, NEW_YEAR):
        clock = StoppedClock(when.timestamp())
        monkeypatch.setattr(_monitor, "time", clock)
        monkeypatch.setattr(_pricing, "time", clock)
        client.chat.completions.create(
            model="gemini-3.8-flash", messages=[{"role": "user", "content": "hi " * 500}]
        )
    monkeypatch.undo()
    costs = []
    for record, when in zip(records.calls, (NEW_YEARS_EVE, NEW_YEAR), strict=True):
        usage = record["usage"]
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]),
            "gemini-3.8-flash",
            provider_id="google",
            genai_request_timestamp=when,
        )
        costs.append(Decimal(repr(record["cost"]["total_cost_usd"])))
        assert costs[-1] == calc.total_price
    assert costs[1] == 2 * costs[0]


def test_a_fixed_time_of_day_prices_a_monitors_calls_but_not_an_explicit_moment(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``price_time_of_day`` (what the pytest plugin sets for its session) prices a monitor's off-peak
    call at the day's dearest rate, or at the time of day it names, while ``PriceTable.cost(at=...)``
    still prices the moment it is given; the setting it replaced comes back to restore it."""
    monitor.prices = DEEPSEEK
    monkeypatch.setattr(_monitor, "time", StoppedClock(OFF_PEAK.timestamp()))
    previous = price_time_of_day("dearest")
    try:
        for when in ("dearest", "20:00", "now"):
            price_time_of_day(when)
            client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "hi " * 500}]
            )
        explicit = PriceTable().cost(
            "deepseek-chat", prompt_tokens=1000, completion_tokens=0, provider="deepseek", at=OFF_PEAK
        )
        assert price_time_of_day(previous) == "now"
    finally:
        price_time_of_day(previous)
    monkeypatch.undo()
    usage = records.calls[0]["usage"]
    costs = [Decimal(repr(record["cost"]["total_cost_usd"])) for record in records.calls]
    peak = genai_usd("deepseek-chat", usage["prompt_tokens"], usage["completion_tokens"], PEAK)
    off_peak = genai_usd("deepseek-chat", usage["prompt_tokens"], usage["completion_tokens"], OFF_PEAK)
    assert costs == [peak, off_peak, off_peak] and off_peak < peak
    assert explicit is not None and explicit.total_cost_usd == genai_usd("deepseek-chat", 1000, 0, OFF_PEAK)


def test_the_dearest_time_of_day_is_the_dearest_for_any_call_of_any_model() -> None:
    """For every model genai-prices prices by the time of day, the moment a session fixed at "dearest"
    prices a call at costs at least what any other part of the day costs, whatever the token mix: the
    default of the plugin fails closed (this fails if genai-prices ever lists parts of a day that no
    single part outprices)."""
    table = PriceTable()
    day = datetime(2026, 12, 4, tzinfo=UTC)
    timed = [
        (provider.id, model.id)
        for provider in genai_prices.data.providers  # the bundled data, as the ledger reads it
        for model in provider.models
        if table.priced_by_time(model.id, provider=provider.id)
    ]
    assert ("deepseek", "deepseek-v4-pro") in timed
    previous = price_time_of_day("dearest")
    try:
        for provider, model in timed:
            dearest = table.priced_at(model, day, provider=provider)
            assert dearest.date() == day.date()
            for prompt, completion, cached in ((1000, 0, 0), (0, 1000, 0), (1000, 10, 900)):
                costs = [
                    table.cost(
                        model,
                        provider=provider,
                        at=at,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        cached_tokens=cached,
                    )
                    for at in (dearest, *(day + timedelta(seconds=start) for start in (0, *day_parts(model))))
                ]
                worst = costs.pop(0)
                assert worst is not None
                assert all(c is not None and c.total_cost_usd <= worst.total_cost_usd for c in costs)
    finally:
        price_time_of_day(previous)


@pytest.mark.usefixtures("priced_when_made")
def test_a_record_says_the_moment_its_price_was_taken_only_when_the_time_of_day_sets_it(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside a test session a DeepSeek call priced by the time of day says it was priced at its start
    (``cost.priced_at``); a model priced the same all day, or a call with no price, says null."""
    monitor.prices = DEEPSEEK
    monkeypatch.setattr(_monitor, "time", StoppedClock(OFF_PEAK.timestamp()))
    for model in ("deepseek-chat", "deepseek-v3.2", "no-such-model"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi " * 500}])
    monkeypatch.undo()
    timed, flat, unpriced = records.calls
    assert timed["cost"]["priced_at"] == timed["timing"]["start_time"]
    assert timed["timing"]["start_time"].startswith("2026-12-04T20:00")
    assert flat["cost"]["total_cost_usd"] is not None
    assert flat["cost"]["priced_at"] is None
    assert unpriced["cost"]["total_cost_usd"] is None
    assert unpriced["cost"]["priced_at"] is None


def test_a_record_priced_at_a_fixed_time_of_day_says_so_and_reprices_to_its_cost(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An off-peak call priced at the day's dearest rate (a test session's rule) records that moment;
    its usage row keeps it whatever the process's setting is when the row is read, and repricing the
    log gives the recorded cost back. The same log without ``cost.priced_at`` (written before records
    said it) reprices each call at its start, as it always did."""
    monitor.prices = DEEPSEEK
    monkeypatch.setattr(_monitor, "time", StoppedClock(OFF_PEAK.timestamp()))
    previous = price_time_of_day("dearest")
    try:
        client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi " * 500}]
        )
        price_time_of_day("now")  # the rows are read under another rule than the call was priced by
        [record] = records.calls
        assert record["cost"]["priced_at"] == "2026-12-04T00:30:00.000Z"  # the dearest part's start
        assert usage_row(record).priced_minute == "2026-12-04T00:30:00+00:00"
        old = {**record, "cost": {k: v for k, v in record["cost"].items() if k != "priced_at"}}
        assert usage_row(old).priced_minute == "2026-12-04T20:00:00+00:00"  # its start
    finally:
        price_time_of_day(previous)
    monkeypatch.undo()
    usage = record["usage"]
    peak = genai_usd("deepseek-chat", usage["prompt_tokens"], usage["completion_tokens"], PEAK)
    off_peak = genai_usd("deepseek-chat", usage["prompt_tokens"], usage["completion_tokens"], OFF_PEAK)
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == peak

    totals = []
    for name, logged in (("new.jsonl", record), ("old.jsonl", old)):
        (tmp_path / name).write_text(json.dumps(logged) + "\n")
        assert main(["reprice", str(tmp_path / name), "--format", "json"]) == 0
        totals.append(json.loads(capsys.readouterr().out)["total"])
    new, before = totals
    assert Decimal(repr(new["after_usd"])) == Decimal(repr(new["before_usd"])) == peak
    assert new["change_usd"] == 0
    assert Decimal(repr(before["after_usd"])) == off_peak < peak


# prices genai-prices lists as changing on a given day: o3's cut (2025-06-10), deepseek-v4-pro's rise
# (2026-08-17), gpt-4o's priority tier (priced apart from 2026-10-12) and gemini-3.8-flash's
# introductory rate ending (2027-01-01)
@pytest.mark.parametrize(
    ("provider", "model", "when", "tier"),
    [
        ("openai", "o3", datetime(2025, 5, 1, 12, 0, tzinfo=UTC), None),
        ("deepseek", "deepseek-v4-pro", datetime(2026, 8, 1, 12, 0, tzinfo=UTC), None),
        ("openai", "gpt-4o", datetime(2026, 10, 11, 12, 0, tzinfo=UTC), "priority"),
        ("google", "gemini-3.8-flash", datetime(2027, 1, 2, 12, 0, tzinfo=UTC), None),
    ],
)
def test_cost_at_a_moment_on_another_day_is_genai_prices_price_that_day(
    provider: str, model: str, when: datetime, tier: str | None
) -> None:
    """``cost(at=...)`` on a day whose prices genai-prices lists apart from today's (before a price
    change, or after one listed ahead) is genai-prices' price that day, from a table that resolved the
    model today; the same table still prices another day (a Friday) at that day's price."""
    table = PriceTable()
    table.cost(model, provider=provider, prompt_tokens=1, completion_tokens=1)  # resolved today
    now = PEAK  # a weekday: genai-prices knows no weekend rule (DeepSeek's, below)
    usage = genai_prices.Usage(input_tokens=30_000, cache_read_tokens=10_000, output_tokens=4_000)
    context = None if tier is None else {"service_tier": tier}
    expected = [
        genai_prices.calc_price(
            usage, model, provider_id=provider, genai_request_timestamp=at, price_context=context
        ).total_price
        for at in (now, when)
    ]
    assert expected[0] != expected[1]  # that day really is priced apart from today
    for at, usd in zip((now, when, now), (*expected, expected[0]), strict=True):
        cost = table.cost(
            model,
            provider=provider,
            at=at,
            service_tier=tier,
            prompt_tokens=30_000,
            completion_tokens=4_000,
            cached_tokens=10_000,
        )
        assert cost is not None and cost.total_cost_usd == usd, at


def test_a_log_written_before_a_price_change_reprices_to_what_it_cost(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A monitor that ran on 2026-08-01 priced a deepseek-v4-pro call at that day's price (genai-prices
    lists a rise from 2026-08-17); repricing its log today with nothing changed finds no change, rather
    than the difference between that day's price and today's."""
    monitor.prices = PriceTable(hosts={"127.0.0.1": HostPrice("deepseek")})
    then = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
    clock = StoppedClock(then.timestamp())
    monkeypatch.setattr(_monitor, "time", clock)
    monkeypatch.setattr(_pricing, "time", clock)
    previous = price_time_of_day("now")
    try:
        client.chat.completions.create(
            model="deepseek-v4-pro", messages=[{"role": "user", "content": "hi " * 500}]
        )
    finally:
        price_time_of_day(previous)
    monkeypatch.undo()
    [record] = records.calls
    usage = record["usage"]
    recorded = Decimal(repr(record["cost"]["total_cost_usd"]))
    assert recorded == genai_usd("deepseek-v4-pro", usage["prompt_tokens"], usage["completion_tokens"], then)
    assert recorded != genai_usd(
        "deepseek-v4-pro", usage["prompt_tokens"], usage["completion_tokens"], then.replace(month=9)
    )
    total = _repriced([record], tmp_path, capsys)
    assert total["change_usd"] == 0
    assert Decimal(repr(total["after_usd"])) == recorded


FRIDAY_PEAK = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
SATURDAY_PEAK_HOURS = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # 10:00 in Beijing, a Saturday


@pytest.mark.parametrize("model", ["deepseek-v4-pro", "deepseek-flash", "deepseek-chat"])
def test_deepseek_bills_weekends_at_the_off_peak_rate_all_day(model: str) -> None:
    """DeepSeek's peak hours are Monday to Friday (Beijing time) from 2026-08-23: a call in the peak hours
    of a Saturday or Sunday costs the off-peak rate, where genai-prices' data (no weekdays) says peak;
    the same hours of a weekday, and of a weekend before the rule, cost genai-prices' peak price."""
    table = PriceTable()

    def usd(at: datetime) -> Decimal:
        cost = table.cost(model, provider="deepseek", at=at, prompt_tokens=30_000, completion_tokens=4_000)
        assert cost is not None
        return cost.total_cost_usd

    off_peak = genai_usd(model, 30_000, 4_000, SATURDAY_PEAK_HOURS.replace(hour=20))
    peak = genai_usd(model, 30_000, 4_000, FRIDAY_PEAK)
    assert off_peak < peak == genai_usd(model, 30_000, 4_000, SATURDAY_PEAK_HOURS)  # genai-prices: peak
    assert usd(FRIDAY_PEAK) == peak
    for weekend in (SATURDAY_PEAK_HOURS, SATURDAY_PEAK_HOURS + timedelta(days=1, hours=6)):  # Sunday 08:00
        assert usd(weekend) == off_peak
    assert usd(SATURDAY_PEAK_HOURS + timedelta(days=2)) == peak  # Monday
    assert usd(datetime(2026, 8, 22, 2, 0, tzinfo=UTC)) == genai_usd(  # the Saturday before the rule
        model, 30_000, 4_000, datetime(2026, 8, 22, 2, 0, tzinfo=UTC)
    )
    previous = price_time_of_day("dearest")  # a test session's rule: the weekday's dearest part, any day
    try:
        at = table.priced_at(model, SATURDAY_PEAK_HOURS, provider="deepseek")
        assert at.date() == FRIDAY_PEAK.date() and usd(at) == peak
    finally:
        price_time_of_day(previous)


def test_a_monitors_weekend_deepseek_call_costs_the_off_peak_rate_and_reprices_to_it(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A deepseek-v4-pro call a monitor makes at 02:00 UTC on a Saturday is recorded at the off-peak price,
    priced at its start; in a test session (the dearest time of day) at the peak price, priced at the
    Friday's peak hour, so CI costs do not change with the day of the week. The log reprices to both."""
    monitor.prices = PriceTable(hosts={"127.0.0.1": HostPrice("deepseek")})
    clock = StoppedClock(SATURDAY_PEAK_HOURS.timestamp())
    monkeypatch.setattr(_monitor, "time", clock)
    monkeypatch.setattr(_pricing, "time", clock)
    previous = price_time_of_day("now")
    try:
        for when in ("now", "dearest"):
            price_time_of_day(when)
            client.chat.completions.create(
                model="deepseek-v4-pro", messages=[{"role": "user", "content": "hi " * 500}]
            )
    finally:
        price_time_of_day(previous)
    monkeypatch.undo()
    weekend, session = records.calls
    usage = weekend["usage"]
    off_peak, peak = (
        genai_usd("deepseek-v4-pro", usage["prompt_tokens"], usage["completion_tokens"], at)
        for at in (SATURDAY_PEAK_HOURS.replace(hour=20), FRIDAY_PEAK)
    )
    assert Decimal(repr(weekend["cost"]["total_cost_usd"])) == off_peak
    assert weekend["cost"]["priced_at"] == "2026-12-05T02:00:00.000Z"
    assert Decimal(repr(session["cost"]["total_cost_usd"])) == peak
    assert session["cost"]["priced_at"] == "2026-12-04T01:00:00.000Z"  # Friday's dearest part
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records.calls))
    assert main(["reprice", str(log), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["change_usd"] == 0 and Decimal(repr(total["after_usd"])) == off_peak + peak
