"""One reading of a call record for the plugin's per-lens table and for its report's usage rows:
a record with only ``total_tokens``, negative counts or a failed call's partial usage gives the same
figures in both (the diff and ``llm-ledger reprice`` read the rows)."""

from __future__ import annotations

from typing import Any

import pytest

from llm_ledger._records import LensTotals
from pytest_llm_ledger._report import SessionLedger, render_lens_table
from tests.report_helpers import call, lens_run

pytestmark = pytest.mark.sdk_independent


def odd(usage: dict[str, Any], *, status: str = "ok") -> dict[str, Any]:
    """A call outside any lens with no cost and this usage."""
    record = call(lens=None, cost=None, status=status)
    record["usage"] = {
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "prompt_audio_tokens": 0,
        "completion_audio_tokens": 0,
        **usage,
    }
    return record


# shape -> (record, (prompt, completion, tokens) in the table and the row, why its cost is unknown or
# None, the row's uncosted_calls, no_usage_calls, failed_calls)
SHAPES = {
    "only total_tokens": (
        odd({"prompt_tokens": None, "completion_tokens": None, "total_tokens": 30}),
        (0, 0, 30),
        "only a total of tokens reported (no prompt and completion tokens, so no price applied) by calls "
        "to 'gpt-4o-mini' (1 call)",
        (1, 1, 0),
    ),
    "negative counts": (
        odd({"prompt_tokens": -5, "completion_tokens": 7, "total_tokens": -3}),
        (0, 7, 0), "no usage reported by calls to 'gpt-4o-mini' (1 call)", (1, 1, 0),
    ),
    "failed, prompt tokens only": (
        odd({"prompt_tokens": 50, "completion_tokens": None, "total_tokens": None}, status="error"),
        (50, 0, 0), None, (0, 0, 1),
    ),
    "failed, billed": (
        odd({"prompt_tokens": 50, "completion_tokens": 0, "total_tokens": 50}, status="error"),
        (50, 0, 50), "no known price for model 'gpt-4o-mini' (1 call)", (1, 0, 1),
    ),
    "failed, only total_tokens": (
        odd({"prompt_tokens": None, "completion_tokens": None, "total_tokens": 30}, status="error"),
        (0, 0, 30), "no known price for model 'gpt-4o-mini' (1 call)", (1, 0, 1),
    ),
    "counts as booleans": (
        odd({"prompt_tokens": True, "completion_tokens": 3, "total_tokens": None}),
        (0, 3, 0), "no usage reported by calls to 'gpt-4o-mini' (1 call)", (1, 1, 0),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("record", "tokens", "gaps", "counts"), SHAPES.values(), ids=SHAPES.keys())
def test_an_odd_call_record_reads_the_same_in_the_table_and_the_usage_rows(
    record: dict[str, Any], tokens: tuple[int, int, int], gaps: str | None, counts: tuple[int, int, int]
) -> None:
    """The "(no lens)" row of the per-lens table and the report's usage row of the same call show
    the same tokens, the same failed call and the same reason its cost is unknown."""
    ledger = SessionLedger()
    ledger.add_call("tests/test_x.py::test_y", record)

    lines = render_lens_table(ledger)
    row = next(line.split() for line in lines if line.startswith("(no lens)"))
    prompt, completion, total = (int(cell.replace(",", "")) for cell in row[3:6])
    (usage,) = ledger.report()["usage"]

    assert (prompt, completion, total) == tokens
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == tokens
    assert (usage["uncosted_calls"], usage["no_usage_calls"], usage["failed_calls"]) == counts
    assert row[6] == ("$0.000000*" if gaps else "$0.000000")
    if gaps:
        assert f"* the cost shown leaves out calls with no known cost: {gaps}" in lines
    failed = ["tests/test_x.py::test_y"] if counts[2] else []
    assert (row[7:], usage["tests_with_failed_calls"]) == (["1"] if failed else [], failed)


@pytest.mark.parametrize(("record", "counts"), [(s[0], s[3]) for s in SHAPES.values()], ids=SHAPES.keys())
def test_a_lens_summary_and_a_usage_row_agree_on_whether_a_call_left_its_cost_out(
    record: dict[str, Any], counts: tuple[int, int, int]
) -> None:
    """The lens summary's ``cost_complete`` and the usage row's ``uncosted_calls`` apply one rule: a
    call without a cost leaves it out when it did not fail, or when it failed after using tokens."""
    totals = LensTotals()
    totals.begin()
    totals.add(record, None)  # type: ignore[arg-type]

    assert totals.summary(0.0)["cost_complete"] is (counts[0] == 0)


def lens_names(keys: list[str]) -> tuple[list[str], list[str], SessionLedger]:
    """The per-lens table of one run of each lens (its lines, and the lens column of its rows)."""
    ledger = SessionLedger()
    for key in keys:
        record = call(lens=key)
        ledger.add_call("tests/test_x.py::test_y", record)
        ledger.add_lens("tests/test_x.py::test_y", lens_run([record]))
    lines = render_lens_table(ledger)
    return lines, [line[: line.index("  ")] for line in lines[2 : 2 + len(keys)]], ledger


def test_the_per_lens_table_shortens_a_long_lens_key_in_the_middle() -> None:
    """One very long lens key made every row of the terminal's table as wide, so every row wrapped: a
    key past the width is cut in the middle with an ellipsis, its start and its end shown. The report
    keeps it whole."""
    key = "pipeline:" + "summarise_the_quarterly_report_" * 4 + "v2"
    lines, names, ledger = lens_names([key, "tags"])

    assert all(len(line) <= 100 for line in lines)
    (short,) = set(names) - {"tags"}
    assert short.startswith("pipeline:summarise") and short.endswith("report_v2") and "…" in short
    assert set(ledger.report()["lenses"]) == {key, "tags"}


def test_two_long_lens_keys_that_would_read_alike_keep_their_own_rows() -> None:
    """Two keys that differ only in the middle would cut to the same text: each keeps enough of
    itself to differ."""
    keys = [f"pipeline:{'a' * 30}:{step}:{'b' * 30}" for step in ("draft", "final")]
    _, names, _ = lens_names(keys)

    assert len(set(names)) == 2 and all("…" in name for name in names)
