"""A Markdown diff of hundreds of changed lenses still fits in one GitHub comment (65,536
characters): the largest changes first, then a line saying what was left out and where the whole
diff is."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_ledger._cli import main as cli_main
from tests.test_diff_fail_on_increase import lens, report, unlensed

pytestmark = pytest.mark.sdk_independent

GITHUB_COMMENT_LIMIT = 65_536


def write(tmp_path: Path, count: int, name: str = "lens-{:04d}") -> tuple[str, str]:
    """Reports of ``count`` lenses, lens i costing (i + 1) micro-dollars more per run in the head."""
    base = {name.format(i): lens(1, 0.001, tokens=100) for i in range(count)}
    head = {name.format(i): lens(1, 0.001 + (i + 1) * 1e-6, calls=2, tokens=150) for i in range(count)}
    paths = str(tmp_path / "base.json"), str(tmp_path / "head.json")
    for path, data in zip(paths, (report(base), report(head)), strict=True):
        Path(path).write_text(json.dumps(data))
    return paths


def test_hundreds_of_changed_lenses_fit_in_one_comment_largest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 changed lenses: the comment stays under GitHub's limit with every lens in the table, the
    details of those whose cost changed most first, a line saying how many were left out and the
    command that prints the whole diff."""
    base, head = write(tmp_path, 400)

    assert cli_main(["diff", base, head]) == 0
    out = capsys.readouterr().out

    assert len(out) < GITHUB_COMMENT_LIMIT
    shown = re.findall(r"^\| `(lens-\d{4})` \|", out, flags=re.MULTILINE)
    assert shown == [f"lens-{i:04d}" for i in reversed(range(400))]  # the largest changes first
    details = re.findall(r"^### `(lens-\d{4})`", out, flags=re.MULTILINE)
    assert details == shown[: len(details)] and 50 < len(details) < 400
    note = (
        f"_To fit in a GitHub comment, this leaves out the details of {400 - len(details)} of 400 lenses "
        f"(the smallest changes). The whole diff: `llm-ledger diff --format json {base} {head}`._"
    )
    assert note in out.splitlines()
    assert "### Total" in out  # the total is never left out
    assert json.loads(_json(base, head, capsys))["lenses"].keys() == {f"lens-{i:04d}" for i in range(400)}


def test_what_failed_comes_before_the_table_when_even_the_table_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,500 changed lenses, 1,400 of them over --fail-on-increase: the list of what failed is kept
    first (the largest changes first), then as much of the table as fits; the note counts both."""
    base, head = write(tmp_path, 1500)

    assert cli_main(["diff", base, head, "--fail-on-increase", "10"]) == 1
    out = capsys.readouterr().out

    assert len(out) < GITHUB_COMMENT_LIMIT
    failed = re.findall(r"^- `(lens-\d{4})`: cost per run", out, flags=re.MULTILINE)
    assert failed[:2] == ["lens-1499", "lens-1498"] and 0 < len(failed) < 1400
    shown = re.findall(r"^\| `(lens-\d{4})` \|", out, flags=re.MULTILINE)
    assert shown == [f"lens-{i:04d}" for i in reversed(range(1500))][: len(shown)]
    assert not re.findall(r"^### `lens-", out, flags=re.MULTILINE)
    left = (
        f"this leaves out {1400 - len(failed)} of 1401 items of the list of increases, "
        f"{1500 - len(shown)} of 1500 lenses from the table and the details of 1500 of 1500 lenses"
    )
    assert left in out
    assert "- Total: $1.500000 -> " in out  # the total's increase is not left out either


def _json(base: str, head: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli_main(["diff", base, head, "--format", "json"]) == 0
    return capsys.readouterr().out


def test_long_and_wide_lens_names_are_counted_as_github_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lens keys of long non-ASCII names take more room per row: the comment still fits."""
    base, head = write(tmp_path, 300, name="résumé-des-tickets-clients-très-longs-🧾-" * 3 + "{:04d}")

    assert cli_main(["diff", base, head]) == 0
    out = capsys.readouterr().out
    assert len(out.encode("utf-16-le")) // 2 < GITHUB_COMMENT_LIMIT
    assert "leaves out" in out


def test_a_diff_that_fits_leaves_nothing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A diff of a few lenses is whole: every lens in the table and in the details, no note."""
    base, head = write(tmp_path, 20)

    assert cli_main(["diff", base, head]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^### `lens-", out, flags=re.MULTILINE)) == 20
    assert "leaves out" not in out


def test_warnings_naming_very_long_lens_keys_and_test_ids_still_fit_in_one_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warnings at the top, which are always kept, name lenses and tests: one lens key of 70,000
    characters with no known cost (a key built from an application's input) made the comment longer
    than GitHub takes. Each name there is cut, with an ellipsis; the JSON keeps it whole."""
    long_lens, long_test = "k" * 70_000, "tests/test_x.py::test_x[" + "p" * 70_000 + "]"
    head = report({long_lens: lens(1, 0.001, cost_complete=False)})
    head["failed_tests"] = [long_test]
    paths = str(tmp_path / "base.json"), str(tmp_path / "head.json")
    Path(paths[0]).write_text(json.dumps(report({})))
    Path(paths[1]).write_text(json.dumps(head))

    assert cli_main(["diff", *paths]) == 0
    out = capsys.readouterr().out

    assert len(out) < GITHUB_COMMENT_LIMIT
    warnings = [line for line in out.splitlines() if line.startswith("> **Warning:**")]
    assert len(warnings) == 2 and all(len(line) < 1_000 for line in warnings)
    assert "`" + "k" * 100 in warnings[1] and "…`" in warnings[1]
    assert json.loads(_json(*paths, capsys))["lenses"].keys() == {long_lens}


def test_the_note_of_what_was_left_out_counts_lenses_not_the_no_lens_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three lenses and calls outside any lens, one lens key too long for a comment: the note counted
    the `(no lens)` row as a fourth lens ("4 of 4 lenses from the table"); it names that row apart."""
    names = ["k" * 70_000, "summary", "tags"]
    base = report({name: lens(1, 0.001) for name in names}, [unlensed(1, 0.0005)])
    head = report({name: lens(1, 0.002) for name in names}, [unlensed(1, 0.0005)])
    paths = str(tmp_path / "base.json"), str(tmp_path / "head.json")
    for path, data in zip(paths, (base, head), strict=True):
        Path(path).write_text(json.dumps(data))

    assert cli_main(["diff", *paths]) == 0
    out = capsys.readouterr().out

    assert len(out) < GITHUB_COMMENT_LIMIT
    assert (
        "this leaves out 3 of 3 lenses from the table, the (no lens) row of the table and the details of 3 "
        "of 3 lenses"
    ) in out
