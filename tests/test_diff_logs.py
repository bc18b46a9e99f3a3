"""``llm-ledger diff --logs BASE HEAD``: the per-lens cost diff of two sets of production logs (last week
and this week, before and after a prompt change), as `llm-ledger report --by lens` sums each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_ledger._cli import main
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

SHORT = "summarise the quarter"
LONG = "summarise the quarter, citing every figure and each region's numbers " * 20


def _logs(sdk: Sdk, directory: Path, prompt: str, lenses: list[str], outside: int) -> Path:
    """A log directory of real SDK calls: a run of each lens in ``lenses`` (``summary`` asks ``prompt``),
    and ``outside`` calls outside any lens."""
    directory.mkdir()
    with logging_to(directory / "llm_calls.jsonl", sdk) as (monitor, client):
        for lens in lenses:
            with monitor.lens(lens):
                content = prompt if lens == "summary" else SHORT
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
                )
        for _ in range(outside):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": SHORT}])
    return directory


@pytest.fixture
def logs(sdk: Sdk, tmp_path: Path) -> tuple[Path, Path]:
    """Before a prompt change (`summary` asks briefly) and after it (`summary` asks at length, a new
    lens `extract` runs, one more call outside any lens); `tags` is the same in both."""
    before = _logs(sdk, tmp_path / "before", SHORT, ["summary"] * 3 + ["tags"] * 2, 1)
    after = _logs(sdk, tmp_path / "after", LONG, ["summary"] * 3 + ["tags"] * 2 + ["extract"], 2)
    return before, after


def _report(capsys: pytest.CaptureFixture[str], logs: Path) -> dict[str, Any]:
    assert main(["report", str(logs), "--by", "lens", "--format", "json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_the_diff_of_two_log_sets_holds_the_reports_figures_lens_by_lens(
    logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each lens's runs, calls, tokens and cost on each side are what `llm-ledger report --by lens` gives
    for that side; the changed lens is changed, the same one unchanged, the new one new, and the calls
    outside any lens have their row."""
    before, after = logs
    sides = {"base": _report(capsys, before), "head": _report(capsys, after)}
    assert main(["diff", "--logs", str(before), str(after), "--format", "json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert {name: row["status"] for name, row in diff["lenses"].items()} == {
        "summary": "changed",
        "tags": "unchanged",
        "extract": "new",
    }
    for side, report in sides.items():
        rows = {row["key"]["lens"]: row for row in report["rows"]}
        for lens, row in diff["lenses"].items():
            shown = [row["metrics"][m][side] for m in ("runs", "api_calls", "total_tokens", "cost_usd")]
            summed = rows.get(lens, dict.fromkeys(("lens_runs", "calls", "total_tokens", "cost_usd")))
            assert shown == [summed["lens_runs"], summed["calls"], summed["total_tokens"], summed["cost_usd"]]
        assert diff["no_lens"]["metrics"]["api_calls"][side] == rows[None]["calls"]
        assert diff["total"]["metrics"]["cost_usd"][side] == report["total"]["cost_usd"]
    calls_outside = diff["no_lens"]["metrics"]["api_calls"]
    assert (calls_outside["base"], calls_outside["head"]) == (1, 2)
    assert diff["logs"] is True and diff["reports"] == {"base": str(before), "head": str(after)}


def test_the_log_set_diff_is_the_pr_comment_and_fails_on_an_increase(
    logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The Markdown of a pull request's diff (cost per run per lens first), and --fail-on-increase
    naming the lens whose cost per run grew and the new one, for a staging check."""
    before, after = logs
    assert main(["diff", "--logs", str(before), str(after)]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("## llm-ledger: cost diff\n\n3 lens(es), 2 with changes.\n")
    assert "| `extract` (new) | — |" in markdown and "| `tags` (unchanged) |" in markdown
    assert "### (no lens): calls outside any lens" in markdown
    assert main(["diff", "--logs", str(before), str(after), "--fail-on-increase", "10"]) == 1
    err = capsys.readouterr().err
    assert "cost per run grew by more than 10% in summary (+" in err
    assert "new lens(es) that cost money (an increase from nothing): extract ($" in err


def test_what_makes_a_log_sets_figures_untrustworthy_is_flagged_naming_the_logs(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed call, and a call with no known price, in the head logs: the warnings name the log set,
    and its cost is marked as a lower bound, as a report's is."""
    before = _logs(sdk, tmp_path / "before", SHORT, ["summary"], 0)
    after = tmp_path / "after"
    after.mkdir()
    with logging_to(after / "llm_calls.jsonl", sdk) as (monitor, client), monitor.lens("summary"):
        client.chat.completions.create(model="my-own-model", messages=[{"role": "user", "content": SHORT}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": SHORT}],
                extra_headers={"x-fake-status": "400"},
            )  # fmt: skip
    assert main(["diff", "--logs", str(before), str(after), "--format", "text"]) == 0
    captured = capsys.readouterr()
    assert f"warning: the head log set ({after}) counts 1 failed call(s)" in captured.err
    assert (
        f"warning: the head log set ({after}) has calls with no known cost in 1 lens(es): summary"
        in captured.err
    )
    assert "  * head: calls with no known cost: counted as $0" in captured.out
