"""Spend over time: ``--by week`` and rows of a time dimension beside another one, in time order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llm_ledger._cli import main
from llm_ledger.report import summarise
from tests.conftest import Sdk
from tests.report_helpers import at, logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

SHORT: Any = [{"role": "user", "content": "classify this"}]
LONG: Any = [{"role": "user", "content": "summarise the quarterly numbers for the board " * 40}]


@pytest.fixture
def log(sdk: Sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real SDK calls of two lenses over three ISO weeks, the last across New Year: `tags` is cheap
    in week 45 and dear from week 46 on, `summary` the other way round."""
    path = tmp_path / "llm_calls.jsonl"
    days = {
        datetime(2026, 11, 2, 9, tzinfo=UTC): (LONG, SHORT),  # Monday, 2026-W45
        datetime(2026, 11, 8, 23, 59, tzinfo=UTC): (LONG, SHORT),  # Sunday, still 2026-W45
        datetime(2026, 11, 9, 0, 1, tzinfo=UTC): (SHORT, LONG),  # Monday, 2026-W46
        datetime(2026, 12, 31, 12, tzinfo=UTC): (SHORT, LONG),  # Thursday, 2026-W53
        datetime(2027, 1, 1, 12, tzinfo=UTC): (SHORT, LONG),  # Friday: ISO year 2026, 2026-W53
    }
    with logging_to(path, sdk) as (monitor, client):
        for when, (summary, tags) in days.items():
            at(monkeypatch, when)
            for lens, messages in (("summary", summary), ("tags", tags)):
                with monitor.lens(lens):
                    client.chat.completions.create(model="gpt-4o", messages=messages)
    return path


def test_by_week_groups_calls_and_runs_by_iso_week(log: Path) -> None:
    """--by week: Monday to Sunday, named as ISO weeks (2026-W45), New Year's week in one row."""
    rows = summarise(log, by="week").rows
    assert [(row.key["week"], row.calls, row.lens_runs) for row in rows] == [
        ("2026-W45", 4, 4),
        ("2026-W46", 2, 2),
        ("2026-W53", 4, 4),
    ]
    assert [row.calls for row in summarise(log, by="lens", where={"week": "2026-W53"}).rows] == [2, 2]


def test_a_time_dimension_beside_another_lists_periods_in_order_costliest_first_within(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--by user_id,day (cost per user per day), --by lens,week (which lens got dearer week over
    week): the periods in time order, each period's rows costliest first, not one list by cost that
    scatters the days."""
    rows = summarise(log, by="lens,day").rows
    assert [(row.key["day"], row.key["lens"]) for row in rows] == [
        ("2026-11-02", "summary"),
        ("2026-11-02", "tags"),
        ("2026-11-08", "summary"),
        ("2026-11-08", "tags"),
        ("2026-11-09", "tags"),
        ("2026-11-09", "summary"),
        ("2026-12-31", "tags"),
        ("2026-12-31", "summary"),
        ("2027-01-01", "tags"),
        ("2027-01-01", "summary"),
    ]
    assert all(a.cost_usd > b.cost_usd for a, b in zip(rows[::2], rows[1::2], strict=True))
    assert main(["report", str(log), "--by", "lens,week"]) == 0
    table = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[2:8]]
    assert table == [
        ["summary", "2026-W45"],
        ["tags", "2026-W45"],
        ["tags", "2026-W46"],
        ["summary", "2026-W46"],
        ["tags", "2026-W53"],
        ["summary", "2026-W53"],
    ]


@pytest.fixture
def evenings(sdk: Sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real SDK calls, each in a lens run, at 2026-11-01T03:30Z (New York: 23:30 on 31 October, summer
    time), 2026-11-02T03:30Z (22:30 on 1 November, winter time since 1 November) and 2026-11-02T12:00Z."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for when in ((2026, 11, 1, 3, 30), (2026, 11, 2, 3, 30), (2026, 11, 2, 12, 0)):
            at(monkeypatch, datetime(*when, tzinfo=UTC))
            with monitor.lens("summary"):
                client.chat.completions.create(model="gpt-4o-mini", messages=SHORT)
    return path


def test_tz_buckets_days_and_reads_dates_on_the_local_clock(evenings: Path) -> None:
    """--tz America/New_York: a call at 22:30 local counts on that local day, across a change of
    summer time, and a --since without a zone is local midnight; the default stays UTC."""
    utc = summarise(evenings, by="day").rows
    assert [(row.key["day"], row.calls, row.lens_runs) for row in utc] == [
        ("2026-11-01", 1, 1),
        ("2026-11-02", 2, 2),
    ]
    local = summarise(evenings, by="day", tz="America/New_York").rows
    assert [(row.key["day"], row.calls, row.lens_runs) for row in local] == [
        ("2026-10-31", 1, 1),
        ("2026-11-01", 1, 1),
        ("2026-11-02", 1, 1),
    ]
    months = summarise(evenings, by="month,hour", tz="America/New_York").rows
    assert [tuple(row.key.values()) for row in months] == [
        ("2026-10", "2026-10-31T23"),
        ("2026-11", "2026-11-01T22"),
        ("2026-11", "2026-11-02T07"),
    ]
    since = summarise(evenings, by="day", since="2026-11-02", tz="America/New_York")
    assert since.query.since == datetime(2026, 11, 2, 5, tzinfo=UTC)
    assert [row.key["day"] for row in since.rows] == ["2026-11-02"]
    offset = summarise(evenings, since="2026-11-02T00:00+00:00", tz="America/New_York")  # a zone given wins
    assert offset.total.calls == 2


def test_tz_on_the_command_line_and_a_bad_zone(evenings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tz is echoed in the JSON; an unknown zone is exit status 2 naming the closest one."""
    assert main(["report", str(evenings), "--by", "day", "--tz", "America/New_York", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tz"] == "America/New_York"
    assert [row["key"]["day"] for row in report["rows"]] == ["2026-10-31", "2026-11-01", "2026-11-02"]
    assert main(["report", str(evenings), "--by", "day", "--tz", "America/New_Yrok"]) == 2
    err = capsys.readouterr().err
    assert "tz: 'America/New_Yrok' is not a time zone name (did you mean 'America/New_York'?)" in err


def test_a_call_across_midnight_counts_on_the_day_it_started_as_it_is_priced(
    sdk: Sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call from 23:59:59.9 that answers 0.3 s later, after midnight, counts on the day it started,
    for --by day and --since/--until alike: the day its price was taken on (a price by date, DeepSeek's
    off-peak hours), not the next day's spend."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (_, client):
        at(monkeypatch, datetime(2026, 11, 8, 23, 59, 59, 900_000, tzinfo=UTC))
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=SHORT,
            extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "300"},
        )
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["timing"]["start_time"][:10] == "2026-11-08" < record["timing"]["end_time"][:10]
    assert [(row.key["day"], row.calls) for row in summarise(path, by="day").rows] == [("2026-11-08", 1)]
    assert summarise(path, until="2026-11-09").total.calls == 1
    assert summarise(path, since="2026-11-09").total.calls == 0
