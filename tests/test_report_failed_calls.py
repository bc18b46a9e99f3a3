"""The per-lens table's "failed:" line names every failed call the session counts: one made in a lens
whose summary never came (a lens still open at the session's end) too, under that lens's row, which is
marked cut short."""

from __future__ import annotations

import pytest

from pytest_llm_ledger._report import SessionLedger, render_lens_table
from tests.report_helpers import call, lens_run

pytestmark = pytest.mark.sdk_independent

TEST = "tests/test_x.py::test_y"


def failed_line(ledger: SessionLedger) -> str:
    (line,) = [line for line in render_lens_table(ledger) if line.startswith("failed: ")]
    return line


def test_a_failed_call_of_a_lens_with_no_summary_is_named_under_its_lens() -> None:
    """A failed call whose lens never summarised: its lens has a row, and the line names the lens, the
    count and the test, rather than ending at its colon."""
    ledger = SessionLedger()
    ledger.add_call(TEST, call(lens="summary", status="error", prompt=None, completion=None, cost=None))

    line = failed_line(ledger)

    assert line.endswith(f": summary (1, in {TEST})")
    assert any(row.startswith("summary  ") and "1 (1 cut short)" in row for row in render_lens_table(ledger))


def test_failed_calls_with_and_without_a_lens_summary_are_each_named() -> None:
    """A lens that summarised keeps its entry; the one that did not follows it, with its own count."""
    ledger = SessionLedger()
    done = call(lens="digest", status="error", prompt=None, completion=None, cost=None)
    ledger.add_call(TEST, done)
    ledger.add_lens(TEST, lens_run([done]))
    for _ in range(2):
        ledger.add_call("tests/test_x.py::test_z", call(lens="summary", status="error", cost=None))

    line = failed_line(ledger)

    assert line.endswith(f": digest (1, in {TEST}), summary (2, in tests/test_x.py::test_z)")


def test_a_lens_partly_summarised_counts_the_failed_calls_of_its_cut_short_run() -> None:
    """One run of the lens summarised, another cut short: its row and the line count the failed calls
    of both, in both tests, and the row says one run was cut short."""
    ledger = SessionLedger()
    done = call(lens="summary", status="error", prompt=None, cost=None, extra={"lens_run_id": "run-1"})
    ledger.add_call(TEST, done)
    ledger.add_lens(TEST, lens_run([done]))
    other = "tests/test_x.py::test_z"
    ledger.add_call(other, call(lens="summary", status="error", cost=None, extra={"lens_run_id": "run-2"}))

    assert failed_line(ledger).endswith(f": summary (2, in {TEST}, {other})")
    (row,) = [row for row in render_lens_table(ledger) if row.startswith("summary ")]
    assert row.split()[1:5] == ["2", "(1", "cut", "short)"] and row.split()[-1] == "2"
