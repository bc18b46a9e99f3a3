"""A cost reads the same wherever it is shown: the pytest plugin's terminal table and budget table, and
``llm-ledger report``, ``diff`` and ``reprice`` (one reviewer reads the PR comment and the CLI for the
same run)."""

from __future__ import annotations

import re

import pytest

from llm_ledger.report import render, summarise_records
from pytest_llm_ledger._report import Breach, SessionLedger, render_breaches, render_lens_table
from tests.report_helpers import call

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

_DOLLARS = re.compile(r"[-+]?\$[\d,.]+[*+]?")


def _row_cells(lines: list[str], name: str) -> list[str]:
    return next(line.split() for line in lines if line.split()[:1] == [name])


def _row_cost(lines: list[str], name: str) -> str:
    (row,) = [line for line in lines if line.startswith(f"{name} ")]
    (cost,) = _DOLLARS.findall(row)
    return str(cost)


@pytest.mark.parametrize("cost", ["1234.5", "0.5", "0.0001", "0.00000012345", "0.000000000004"])
def test_the_plugins_table_shows_a_cost_as_llm_ledger_report_does(cost: str) -> None:
    """Small, sub-micro-dollar and large costs: the same digits in the plugin's table and the report."""
    record = call(lens="summary", cost=cost)
    ledger = SessionLedger()
    ledger.add_call("tests/test_app.py::test_summary", record)
    plugin = _row_cost(render_lens_table(ledger), "(session total)")
    report = _row_cost(render(summarise_records([record])).splitlines(), "total")
    assert plugin == report


def test_a_budget_limit_reads_as_a_cost_does() -> None:
    """The limit and the figure of a cost budget in the plugin's breach table read as the report's costs."""
    breach = Breach("lens", "summary", "max_cost_usd", 0.00000012345, 1234.5, "tests/test_app.py::test_a")
    (row,) = [line for line in render_breaches([breach]) if line.startswith("lens summary")]
    report = [render(summarise_records([call(cost=cost)])) for cost in ("0.00000012345", "1234.5")]
    assert _DOLLARS.findall(row) == [_row_cost(text.splitlines(), "total") for text in report]


def test_a_cost_that_leaves_calls_out_is_marked_alike() -> None:
    """A cost that leaves out a call with no known cost is a lower bound: the plugin's table, ``llm-ledger
    report`` mark it with the ``*`` of ``diff`` and ``reprice``, which a note under the table explains."""
    records = [call(cost="0.0001"), call(model="acme-7b", cost=None)]
    ledger = SessionLedger()
    for record in records:
        ledger.add_call("tests/test_app.py::test_summary", record)
    plugin = _row_cost(render_lens_table(ledger), "(session total)")
    report = render(summarise_records(records)).splitlines()
    assert plugin == _row_cost(report, "total") == "$0.000100*"
    assert any(line.startswith("* 1 billed call has no known cost") for line in report)


def test_the_markdown_report_keeps_the_mark_of_its_note() -> None:
    """In Markdown the note under the table starts with an escaped ``*``: a bare one would start a list
    item, and the note would no longer show the mark it explains."""
    report = render(summarise_records([call(model="acme-7b", cost=None)]), "markdown").splitlines()
    assert any(line.startswith("\\* 1 billed call has no known cost") for line in report)


def test_the_plugins_table_writes_counts_as_llm_ledger_report_does() -> None:
    """A run of over a thousand calls: the plugin's table writes the count with a thousands separator,
    as ``llm-ledger report`` does, for calls and tokens alike."""
    records = [call(cost="0.0001") for _ in range(1200)]
    ledger = SessionLedger()
    for record in records:
        ledger.add_call("tests/test_app.py::test_summary", record)
    (plugin,) = [line.split() for line in render_lens_table(ledger) if line.startswith("(session total)")]
    (report,) = [
        line.split() for line in render(summarise_records(records)).splitlines() if line.startswith("total")
    ]
    assert plugin[2:5] == ["1,200", "120,000", "24,000"]
    assert report[2] == plugin[2]


def test_a_failed_call_is_explained_alike_by_the_plugin_and_the_diff() -> None:
    """What a failed call is and what it counts reads the same in the plugin's per-lens table and in
    ``llm-ledger diff``: the words of :mod:`llm_ledger.report`, written once."""
    from llm_ledger.report import NO_ANSWER, diff_reports, failed_calls, render_diff

    assert failed_calls(2) == "2 failed call(s) (cassette misses or API errors)"
    assert failed_calls() == "calls that failed (cassette misses or API errors)"
    assert NO_ANSWER == "one that got no answer counts no tokens or cost"
    ledger = SessionLedger()
    test = "tests/test_app.py::test_summary"
    ledger.add_call(test, call(lens=None, status="error", cost=None))
    assert render_lens_table(ledger)[-1] == f"failed: {failed_calls()}; {NO_ANSWER}: (no lens) (1, in {test})"
    diff = render_diff(diff_reports(SessionLedger().report(), ledger.report()), "text")
    assert f"head: {failed_calls(1)} in {test}; {NO_ANSWER}" in diff


def test_a_figure_that_cannot_be_given_reads_alike() -> None:
    """A figure with nothing to give it (the average duration of a lens that made no call, the change
    of a lens that has no price after, a lens absent from a side of a diff) reads "—" in every report."""
    from llm_ledger._records import LensTotals, lens_record
    from llm_ledger.report import diff_reports, render_diff

    idle = lens_record(context={"lens_key": "idle"}, summary=LensTotals().summary(1.0), end_epoch=1e9)
    report = render(summarise_records([dict(idle)])).splitlines()
    assert _row_cells(report, "idle")[-1] == "—"
    ledger = SessionLedger()
    ledger.add_call("tests/test_app.py::test_summary", call(lens=None))
    diff = render_diff(diff_reports(SessionLedger().report(), ledger.report()), "text").splitlines()
    assert _row_cells(diff, "calls")[1] == "—"  # no base
