"""Cost by any dimension: `--by`, `--where`, `--since/--until`, exact sums, and the Python API."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_ledger
from llm_ledger import ConfigError
from llm_ledger._cli import main
from llm_ledger.report import (
    CostReport,
    CostRow,
    QueryError,
    render,
    render_diff,
    summarise,
    summarise_records,
)
from llm_ledger.testing import Captured
from tests.conftest import Sdk
from tests.report_helpers import EPOCH, call, lens_run, logging_to, write

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HOUR = 3600.0


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Two users over two days, one call without a user, a lens run that used two models."""
    alice = [
        call(extra={"user_id": "alice"}, cost="0.1"),
        call(extra={"user_id": "alice"}, model="gpt-4o", cost="0.2", epoch=EPOCH + HOUR),
    ]
    bob = [call(lens="deep_dive", extra={"user_id": "bob"}, cost="0.15", epoch=EPOCH + 24 * HOUR)]
    anonymous = call(lens="deep_dive", cost="0.15", epoch=EPOCH + 25 * HOUR)
    records = [*alice, lens_run(alice), *bob, lens_run(bob, epoch=EPOCH + 24 * HOUR), anonymous]
    return write(tmp_path / "llm_calls.jsonl", records)


def keyed(report: CostReport) -> dict[Any, CostRow]:
    return {
        tuple(row.key.values()) if len(row.key) > 1 else next(iter(row.key.values())): row
        for row in report.rows
    }


def test_any_context_key_is_a_dimension_and_records_without_it_group_under_none(log: Path) -> None:
    """--by user_id: a row per user, exact Decimal costs; a call without a user_id under None."""
    rows = keyed(summarise(log, by="user_id"))
    assert set(rows) == {"alice", "bob", None}
    assert rows["alice"].cost_usd == Decimal("0.3")  # exactly: 0.1 + 0.2 in floats is 0.30000000000000004
    assert (rows["alice"].calls, rows["alice"].lens_runs) == (2, 1)
    assert rows[None].calls == 1 and rows[None].lens_runs == 0


def test_a_dimension_no_record_has_is_an_error_naming_those_they_have(log: Path) -> None:
    """A typo (``usr_id``) in by or where is refused with the closest dimension and every one the
    records have, instead of one null row or an empty report; an empty log judges nothing."""
    with pytest.raises(
        QueryError, match=r"by: no record has a dimension 'usr_id' \(did you mean 'user_id'\?\)"
    ) as by:
        summarise(log, by="usr_id")
    assert by.value.parameter == "by" and "lens, lens_key" in str(by.value)
    # only what a row can be named by: the fields holding objects are named as dotted paths into them
    listed, _, dotted = str(by.value).partition("the records have: ")[2].partition("; and dotted paths into ")
    assert {"usage", "request", "context", "timing"}.isdisjoint(listed.split(", "))
    assert {"usage.*", "request.*", "timing.*"} <= set(dotted.split(", "))
    with pytest.raises(QueryError, match=r"where: no record has a dimension 'tenant'"):
        summarise(log, where={"tenant": "acme"})
    empty = log.parent / "empty.jsonl"
    empty.write_text("")
    assert summarise(empty, by="tenant").rows == ()


def test_a_context_key_with_a_dot_is_a_dimension_for_where_as_for_by() -> None:
    """A context key such as ``team.name`` filters as it groups (it was refused as a dimension no
    record has, suggesting itself)."""
    records = [call(extra={"team.name": "core"}), call(extra={"team.name": "web"})]
    assert [row.key["team.name"] for row in summarise_records(records, by="team.name").rows] == [
        "core",
        "web",
    ]
    kept = summarise_records(records, where={"team.name": "web"})
    assert (kept.total.calls, kept.filtered_out) == (1, 1)


def test_a_dimension_some_records_lack_groups_them_under_none(log: Path) -> None:
    """A key only some records carry is a dimension: the others group under None."""
    report = summarise(log, by="user_id")
    assert None in {row.key["user_id"] for row in report.rows}


def test_several_dimensions_make_one_row_per_combination(log: Path) -> None:
    """--by lens,model: a row per (lens, model); a lens run counts under each model it used, once in total."""
    report = summarise(log, by=["lens", "model"])
    rows = keyed(report)
    assert set(rows) == {
        ("default_summary", "gpt-4o-mini"),
        ("default_summary", "gpt-4o"),
        ("deep_dive", "gpt-4o-mini"),
    }
    assert (
        rows[("default_summary", "gpt-4o")].lens_runs
        == rows[("default_summary", "gpt-4o-mini")].lens_runs
        == 1
    )
    assert report.total.lens_runs == 2
    assert report.total.cost_usd == Decimal("0.6")
    assert summarise(log, by="lens,model").rows == report.rows


def test_record_fields_and_dotted_paths_are_dimensions(tmp_path: Path) -> None:
    """A top-level field (status) and a dotted path (server.address) group like context keys."""
    records = [call(), call(status="error", prompt=None, completion=None, cost=None)]
    records[0]["server"] = {"address": "api.openai.com", "port": 443, "provider": "openai"}
    path = write(tmp_path / "log.jsonl", records)
    assert {r.key["status"]: r.calls for r in summarise(path, by="status").rows} == {"ok": 1, "error": 1}
    by_address = {r.key["server.address"]: r.calls for r in summarise(path, by="server.address").rows}
    assert by_address == {"api.openai.com": 1, None: 1}


def test_by_status_a_lens_run_counts_as_error_when_a_call_failed_else_ok(tmp_path: Path) -> None:
    """--by status: a lens run counts under `error` when any of its calls failed, else under `ok` (it
    was a `(none)` row of every lens run with no calls); `--where status=error` keeps the failed runs,
    and the runs still add up to the total. Other call fields (operation) have no value for a run."""
    failed = [call(), call(status="error", prompt=None, completion=None, cost=None)]
    fine = [call(lens="tags")]
    cut = [call(lens="stream", status="interrupted", prompt=None, completion=None, cost=None)]
    runs = [lens_run(failed), lens_run(fine), lens_run(cut)]
    path = write(tmp_path / "log.jsonl", [*failed, *fine, *cut, *runs])
    rows = keyed(summarise(path, by="status"))
    assert {status: (row.lens_runs, row.calls) for status, row in rows.items()} == {
        "ok": (2, 2),
        "error": (1, 1),
        "interrupted": (0, 1),
    }
    errors = summarise(path, by="lens", where={"status": "error"})
    assert [(row.key["lens"], row.lens_runs, row.calls) for row in errors.rows] == [("default_summary", 1, 1)]
    from_runs = summarise_records(runs[:2], by="status", from_summaries=True)
    assert {row.key["status"]: (row.lens_runs, row.calls) for row in from_runs.rows} == {
        "error": (1, 2),
        "ok": (1, 1),
    }
    assert keyed(summarise(path, by="operation"))[None].lens_runs == 3


def test_where_keeps_matching_records_and_repeated_keys_mean_any(log: Path) -> None:
    """where: several values of one key are alternatives; several keys must all match."""
    assert summarise(log, by="user_id", where={"user_id": "alice"}).total.calls == 2
    both = summarise(log, by="user_id", where={"user_id": ["alice", "bob"]})
    assert {row.key["user_id"] for row in both.rows} == {"alice", "bob"}
    narrowed = summarise(log, by="lens", where={"user_id": "alice", "model": "gpt-4o"})
    assert [(row.key["lens"], row.calls) for row in narrowed.rows] == [("default_summary", 1)]
    assert narrowed.filtered_out == 4  # alice's lens run used gpt-4o: it stays
    assert summarise(log, where={"user_id": "null"}).total.calls == 1  # a missing value reads null


def test_where_on_model_keeps_the_lens_runs_that_used_it(log: Path) -> None:
    """A lens run counts under the asked-for models it used, not under the others."""
    report = summarise(log, by="model", where={"model": "gpt-4o"})
    assert [(row.key["model"], row.calls, row.lens_runs) for row in report.rows] == [("gpt-4o", 1, 1)]


@pytest.mark.parametrize(
    ("since", "until", "calls"),
    [
        ("2025-11-25", None, 2),  # a date: midnight UTC, inclusive
        (None, "2025-11-25", 2),  # exclusive
        ("2025-11-24T17:00:01Z", "2025-11-25T17:00:01", 2),  # naive means UTC
        (date(2025, 11, 24), datetime(2025, 11, 24, 17, 0, 1, tzinfo=UTC), 2),
        ("2025-11-24T19:00:00+02:00", None, 3),  # 17:00 UTC onwards
        (datetime(2025, 11, 25, 16, tzinfo=timezone(timedelta(hours=-1))), None, 1),  # 17:00 UTC
    ],
)
def test_since_is_inclusive_and_until_exclusive(log: Path, since: Any, until: Any, calls: int) -> None:
    """ISO dates, date-times with or without a zone, dates and datetimes bound the records' timestamps."""
    # call timestamps end 0.5 s after they start: 16:00:00.5, 17:00:00.5, next day 16:00:00.5, 17:00:00.5
    assert summarise(log, since=since, until=until).total.calls == calls


def test_render_and_render_diff_refuse_an_unknown_format_naming_the_valid_ones(log: Path) -> None:
    """``render()`` and ``render_diff()`` given a format they do not write: ConfigError in one wording,
    naming the bad value and the formats each writes."""
    with pytest.raises(ConfigError, match=r"^unknown format 'html'; choose one of text, json, markdown$"):
        render(summarise(log), "html")
    with pytest.raises(ConfigError, match=r"^unknown format 'html'; choose one of markdown, text, json$"):
        render_diff({}, "html")


@pytest.mark.parametrize("fmt", ["html", "markdown"])
def test_reprice_and_anomalies_output_refuse_a_format_they_do_not_write(fmt: str) -> None:
    """The renderers behind ``reprice`` and ``anomalies`` refuse a format they do not write (anomalies
    has no Markdown table) in the wording of ``render()``, instead of writing a text table for it."""
    from llm_ledger.analysis._render import render_anomalies, render_reprice
    from llm_ledger.analysis._reprice import Reprice

    if fmt == "html":
        with pytest.raises(ConfigError, match=r"^unknown format 'html'; choose one of text, markdown, json$"):
            render_reprice(Reprice("log.jsonl", {}, None, None), fmt)
    with pytest.raises(ConfigError, match=rf"^unknown format '{fmt}'; choose one of text, json$"):
        render_anomalies([], fmt)


@pytest.mark.parametrize("command", ["report", "diff"])
def test_the_cli_refuses_an_unknown_format_as_argparse_does(
    command: str, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger report|diff --format html``: argparse's usage error (exit 2) listing the choices."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--format", "html", str(log), *([str(log)] if command == "diff" else [])])
    assert exited.value.code == 2
    assert f"llm-ledger {command}: error: argument --format: invalid choice: 'html' (choose from " in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": "2025-13-01"}, "since: '2025-13-01' is not an ISO date or date-time; e.g. 2025-11-24"),
        ({"until": "yesterday"}, "until: 'yesterday' is not an ISO date or date-time"),
        ({"since": "2025-11-25", "until": "2025-11-24"}, "since: 2025-11-25T00:00:00Z is not before until"),
        ({"since": "2025-11-24", "until": "2025-11-24"}, "since is inclusive and until exclusive"),
        ({"by": "lens,"}, "by: 'lens,' has an empty dimension name; e.g. user_id, or lens,model"),
        ({"where": {"user_id": 7}}, "where: user_id: expected a string or a list of strings"),
        (
            {"where": "user_id=alice"},
            "where: expected a mapping of dimension to value(s), e.g. {'user_id': 'alice'}",
        ),
        ({"where": [("user_id", "alice")]}, "where: expected a mapping of dimension to value(s)"),
        ({"by": 5}, "by: 5 is not a dimension name; e.g. user_id"),
        ({"by": []}, "by: no dimension given; e.g. user_id, or lens,model for several"),
        ({"where": {"": "alice"}}, "where: '' is not a dimension name; e.g. user_id=alice"),
        ({"since": 20251124}, "since: expected an ISO date string, a date or a datetime, got 20251124"),
    ],
)
def test_bad_arguments_are_clear_errors(log: Path, kwargs: dict[str, Any], message: str) -> None:
    """Bad dates, an empty range, an empty dimension: ConfigError naming it with a valid example."""
    with pytest.raises(ConfigError) as excinfo:
        summarise(log, **kwargs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "user_id"], "where: 'user_id' is not KEY=VALUE; e.g. user_id=alice"),
        (["--where", "=alice"], "where: '=alice' is not KEY=VALUE"),
        (["--since", "24/11/2025"], "since: '24/11/2025' is not an ISO date or date-time; e.g. 2025-11-24"),
        (
            ["--since", "2025-12-01", "--until", "2025-11-01"],
            "since: 2025-12-01T00:00:00Z is not before until",
        ),
        # a moment the ledger's UTC milliseconds cannot hold: past year 9999 once rounded up, before year 1
        (["--until", "9999-12-31T23:59:59.9999"], "until: '9999-12-31T23:59:59.9999' is out of range"),
        (["--since", "0001-01-01T00:00+01:00"], "since: '0001-01-01T00:00+01:00' is out of range"),
    ],
)
def test_bad_command_line_filters_exit_2_with_the_valid_form(
    capsys: pytest.CaptureFixture[str], log: Path, args: list[str], message: str
) -> None:
    """The CLI: exit status 2, the problem and an example on stderr, no traceback."""
    assert main(["report", str(log), *args]) == 2
    err = capsys.readouterr().err
    assert f"llm-ledger report: error: {message}" in err
    assert "Traceback" not in err


def test_the_command_line_groups_and_filters_like_the_api(
    capsys: pytest.CaptureFixture[str], log: Path
) -> None:
    """--by a,b --where k=v --since: the JSON rows are the API's rows as JSON (costs as numbers)."""
    args = ["--by", "lens", "--by", "user_id", "--where", "model=gpt-4o-mini", "--since", "2025-11-24"]
    assert main(["report", str(log), *args, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    api = summarise(log, by=["lens", "user_id"], where={"model": "gpt-4o-mini"}, since="2025-11-24")
    assert out["rows"] == [row.to_json() for row in api.rows]
    assert out["by"] == ["lens", "user_id"] and out["where"] == {"model": ["gpt-4o-mini"]}
    assert out["since"] == "2025-11-24T00:00:00Z"
    assert out["total"]["cost_usd"] == 0.4


def test_the_text_table_has_a_column_per_dimension(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    """Several dimensions: one column each, then the figures; (none) for a missing value."""
    assert main(["report", str(log), "--by", "user_id,lens"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["user_id", "lens", "lens"]
    assert any(row.split()[:2] == ["(none)", "deep_dive"] for row in lines)
    assert any(row.startswith("total ") and "$0.600000" in row for row in lines)


def test_time_dimensions_list_rows_in_time_order(log: Path) -> None:
    """--by day (or month, hour): rows in time order, not by cost."""
    assert [row.key["day"] for row in summarise(log, by="day").rows] == ["2025-11-24", "2025-11-25"]
    assert [row.calls for row in summarise(log, by="hour").rows] == [1, 1, 1, 1]


def test_summaries_alone_give_the_totals_of_their_runs(log: Path) -> None:
    """summarise_records(from_summaries=True): lens summaries (an app's own table) carry the figures."""
    from llm_ledger.analysis import iter_records

    summaries = [r for r in iter_records([log]) if r["event"] == "lens_summary"]
    report = summarise_records(summaries, by="user_id", from_summaries=True)
    rows = keyed(report)
    assert rows["alice"].cost_usd == Decimal("0.3") and rows["alice"].calls == 2
    assert rows["bob"].total_tokens == 120
    assert report.total.lens_runs == 2


def test_rows_of_equal_cost_sort_by_key_whatever_order_their_calls_came_in(tmp_path: Path) -> None:
    """0.1 + 0.2 and 0.15 + 0.15 are the same exact cost: ties order by key, not by float noise."""
    records = [
        call(lens=lens, cost=cost)
        for lens, cost in [("b", "0.1"), ("a", "0.15"), ("b", "0.2"), ("a", "0.15")]
    ]
    assert [row.key["lens"] for row in summarise(write(tmp_path / "log.jsonl", records)).rows] == ["a", "b"]


def test_json_output_refuses_non_finite_values_by_name() -> None:
    """A NaN the API was handed (never one read from a log) is an error naming where it is."""
    report = summarise_records([call(extra={"score": float("nan")})], by="score")
    with pytest.raises(
        ConfigError, match=r"cannot write rows\.0\.key\.score as JSON: it is not a finite number"
    ):
        render(report, "json")
    assert "NaN" in render(report, "text")  # a table may show it


_values = st.one_of(
    st.none(),
    st.sampled_from(["alice", 'quote"d', "ünï}{code", 'a, "b": {', "null", "1"]),
    st.integers(-3, 3),
    st.booleans(),
    st.dictionaries(st.sampled_from(["x", "usage"]), st.integers(0, 2), max_size=2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(
        st.tuples(_values, _values, st.sampled_from(["ok", "error"]), st.integers(0, 5000), st.booleans()),
        max_size=12,
    ),
    by=st.sampled_from(["lens", "user_id", "lens,user_id", "status"]),
)
def test_sums_match_a_plain_grouping_of_the_records(
    tmp_path: Path, specs: list[tuple[Any, ...]], by: str
) -> None:
    """Whatever the context values (quotes, braces, objects, "1" beside 1), a row per distinct value
    with the sums a plain loop over the records gives."""
    records = []
    for lens, user, status, prompt, priced in specs:
        ok = status == "ok"
        records.append(
            call(
                lens=lens,
                status=status,
                prompt=prompt if ok else None,
                completion=prompt // 7 if ok else None,
                cost=f"0.000{prompt % 9 + 1}" if ok and priced else None,
                extra={"user_id": user},
            )
        )
    report = summarise(write(tmp_path / "log.jsonl", records), by=by)
    names = by.split(",")
    expected: dict[str, list[Any]] = {}
    for record in records:
        values = {"lens": record["context"]["lens_key"], "user_id": record["context"]["user_id"]}
        values["status"] = record["status"]
        key = json.dumps([values[name] for name in names], sort_keys=True)
        sums = expected.setdefault(key, [0, 0, Decimal(0), 0])
        cost = record["cost"]["total_cost_usd"]
        sums[0] += 1
        sums[1] += record["usage"]["total_tokens"] or 0
        sums[2] += Decimal(repr(cost)) if cost is not None else 0
        sums[3] += cost is None and record["status"] == "ok"
    got = {
        json.dumps([row.key[name] for name in names], sort_keys=True): [
            row.calls, row.total_tokens, row.cost_usd, row.unpriced_calls
        ]
        for row in report.rows
    }  # fmt: skip
    assert got == expected
    assert report.total.calls == len(records) and report.malformed == 0


def test_records_handed_over_with_unusable_numbers_are_counted_not_summed() -> None:
    """summarise_records: a call whose token count is text is left out, and the report says so."""
    bad = call()
    bad["usage"] = {**bad["usage"], "prompt_tokens": "100"}
    report = summarise_records([call(), bad])
    assert (report.total.calls, report.rejected) == (1, 1)
    assert render(report, "text").splitlines()[-1] == "1 call, 0 lens runs, 1 with unusable numbers left out"


def test_summaries_of_nested_lenses_count_each_call_once_as_the_calls_do(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens nested in another: its calls are in both summaries, but from_summaries counts them once,
    under the innermost run, so an app's table of summaries gives what the log's calls give."""
    ask: Any = [{"role": "user", "content": "summarise the quarter"}]
    with monitor.lens("outer", user_id="alice", source_id="doc-1"):
        client.chat.completions.create(model="gpt-4o-mini", messages=ask)
        with monitor.lens("inner", source_id="doc-2"):
            client.chat.completions.create(model="gpt-4o", messages=ask)
            with monitor.lens("innermost"):
                client.chat.completions.create(model="gpt-4o", messages=ask)
        client.chat.completions.create(model="gpt-4o-mini", messages=ask)
    summaries = [r for r in records if r["event"] == "lens_summary"]
    figures = ("lens_runs", "calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
    for by in ("user_id", "source_id", "lens"):
        from_calls = summarise_records(list(records), by=by)
        from_runs = summarise_records(summaries, by=by, from_summaries=True)
        assert [(r.key, *(getattr(r, f) for f in figures)) for r in from_runs.rows] == [
            (r.key, *(getattr(r, f) for f in figures)) for r in from_calls.rows
        ], by
        assert from_runs.total.cost_usd == from_calls.total.cost_usd
        assert from_runs.total.calls == 4
    where = summarise_records(summaries, by="lens", where={"source_id": "doc-1"}, from_summaries=True)
    assert [(r.key["lens"], r.calls) for r in where.rows] == [("outer", 2)]


def test_summaries_count_each_call_once_in_any_order(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An app's table gives its summaries back in its own order (newest first, by user...), and a nested
    run whose stream is read after the blocks ends after its parent: a parent read before its nested
    runs still counts each call once, under the innermost run."""
    ask: Any = [{"role": "user", "content": "summarise the quarter"}]
    with monitor.lens("outer"):
        client.chat.completions.create(model="gpt-4o-mini", messages=ask)
        with monitor.lens("inner"):
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=ask, stream=True)
        with monitor.lens("sibling"):
            client.chat.completions.create(model="gpt-4o", messages=ask)
    for _ in stream:
        pass
    summaries = [r for r in records if r["event"] == "lens_summary"]
    from_calls = summarise_records(list(records), by="lens")
    expected = {r.key["lens"]: (r.calls, r.total_tokens, r.cost_usd) for r in from_calls.rows}
    for order in (summaries, summaries[::-1]):
        from_runs = summarise_records(order, by="lens", from_summaries=True)
        got = {r.key["lens"]: (r.calls, r.total_tokens, r.cost_usd) for r in from_runs.rows}
        assert got == expected, [r["context"]["lens_key"] for r in order]
        assert (from_runs.total.calls, from_runs.total.cost_usd) == (3, from_calls.total.cost_usd)


def test_day_and_hour_of_a_timestamp_stored_in_another_spelling_are_utc(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An application stores each run's summary with its own timestamp (local time with an offset, a
    database's "YYYY-MM-DD HH:MM:SS"): --by day and hour read it in UTC, as --since and --until do, so
    the same hour is one row whatever the spelling."""
    ask: Any = [{"role": "user", "content": "summarise the quarter"}]
    for lens in ("morning", "night"):
        with monitor.lens(lens):
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)
    morning, night = [dict(r) for r in records.lenses]
    morning["timestamp"] = "2025-11-24 16:00:00.250"  # naive: UTC
    night["timestamp"] = "2025-11-25T00:30:00+02:00"  # 2025-11-24T22:30Z
    ledger = {**morning, "timestamp": "2025-11-24T16:59:59.999Z"}
    summaries = [morning, night, ledger]
    days = summarise_records(summaries, by="day", from_summaries=True)
    assert [(r.key["day"], r.lens_runs) for r in days.rows] == [("2025-11-24", 3)]
    hours = summarise_records(summaries, by="hour", from_summaries=True)
    assert [(r.key["hour"], r.lens_runs) for r in hours.rows] == [("2025-11-24T16", 2), ("2025-11-24T22", 1)]
    since = summarise_records(summaries, by="day", since="2025-11-24T22:00", from_summaries=True)
    assert since.total.lens_runs == 1


def test_a_timestamp_outside_the_years_utc_can_hold_groups_under_null(tmp_path: Path) -> None:
    """A record stamped at the edge of what a datetime holds (a hand-edited or corrupt line) counts, by
    day under null and outside every --since / --until range, rather than stopping the report."""
    edges = ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59.9999"]
    record = call()
    stamped = [
        {**record, "timestamp": stamp, "timing": {**record["timing"], "start_time": stamp}}
        for stamp in [*edges, None]
    ]  # a call counts at its start
    log = write(tmp_path / "llm_calls.jsonl", stamped)
    assert [(r.key["day"], r.calls) for r in summarise(log, by="day").rows] == [(None, 3)]
    assert summarise(log, since="2025-01-01").total.calls == 0


def test_cached_tokens_are_summed_apart_as_a_usage_dashboard_shows_them(
    tmp_path: Path, sdk: Sdk, capsys: pytest.CaptureFixture[str]
) -> None:
    """The part of the prompt the provider's cache served is summed per row (JSON, Python, a table
    column shown when some prompt was cached), from the calls and from the lens summaries alike."""
    path = tmp_path / "llm_calls.jsonl"
    ask: Any = [{"role": "user", "content": "summarise the quarter for the board " * 20}]
    with logging_to(path, sdk) as (monitor, client):
        for user, cached in (("alice", "128"), ("alice", "0"), ("bob", "64")):
            with monitor.lens("digest", user_id=user), monitor.lens("tags"):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=ask, extra_headers={"x-fake-cached-tokens": cached}
                )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    report = summarise(path, by="user_id")
    assert {row.key["user_id"]: row.cached_tokens for row in report.rows} == {"alice": 128, "bob": 64}
    assert (
        report.total.cached_tokens == sum(r["usage"]["cached_tokens"] for r in records if "usage" in r) == 192
    )
    assert report.to_json()["rows"][0]["cached_tokens"] in (128, 64)
    summaries = [r for r in records if r["event"] == "lens_summary"]
    from_runs = summarise_records(summaries, by="user_id", from_summaries=True)
    assert {row.key["user_id"]: row.cached_tokens for row in from_runs.rows} == {"alice": 128, "bob": 64}
    assert main(["report", str(path), "--by", "user_id"]) == 0
    header, _, *rows = capsys.readouterr().out.splitlines()
    assert header.split("  ")[:5] == ["user_id", "lens runs", "calls", "errors", "prompt tokens"]
    assert "prompt tokens  cached tokens  completion tokens" in header
    total = next(row for row in rows if row.startswith("total"))
    assert total.split()[:6] == ["total", "6", "3", "0", f"{report.total.prompt_tokens:,}", "192"]
    without = summarise_records(
        [r for r in records if r["event"] == "llm_api_call" and not r["usage"]["cached_tokens"]]
    )
    assert "cached tokens" not in render(without, "text")  # a column only where some prompt was cached
