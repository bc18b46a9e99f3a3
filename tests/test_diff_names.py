"""How `llm-ledger diff` names lenses and tests: code spans in the Markdown (a PR comment), plain text
in the text output and on stderr (a terminal or a CI log, where backticks are noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_ledger._cli import main as cli_main
from pytest_llm_ledger._report import SessionLedger
from tests.report_helpers import call, lens_run

pytestmark = pytest.mark.sdk_independent

ODD_LENS = "tags|v2 `x"  # a space and a backtick: quoted in text, a longer fence in Markdown
ODD_TEST = "tests/test_app.py::test_tags[a b]"


def lens(cost: float, **extra: Any) -> dict[str, Any]:
    return {"runs": 1, "api_calls": 1, "total_tokens": 10, "cost_usd": cost, "errors": 0, **extra}


def report(lenses: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    cost = sum(e["cost_usd"] for e in lenses.values())
    total = {"api_calls": len(lenses), "total_tokens": 10 * len(lenses), "cost_usd": cost, "errors": 0}
    return {"schema": "llm-ledger-report", "version": 1, "lenses": lenses, "tests": {}, "total": total,
            "usage": [], **extra}  # fmt: skip


@pytest.fixture
def reports(tmp_path: Path) -> list[str]:
    """A head with a new lens that costs money (an increase), and a failed test that is flagged."""
    paths = [str(tmp_path / "base.json"), str(tmp_path / "head.json")]
    base = report({"summary": lens(0.001)})
    head = report({"summary": lens(0.001), ODD_LENS: lens(0.002)}, failed_tests=[ODD_TEST])
    for path, data in zip(paths, (base, head), strict=True):
        Path(path).write_text(json.dumps(data))
    return paths


def test_the_text_output_and_stderr_name_lenses_and_tests_in_plain_text(
    reports: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The text's tables, warnings and increases, and stderr's warnings and exit message, name a lens
    the same way: plain, quoted when it has a space or a quote in it; never as a Markdown code span."""
    assert cli_main(["diff", *reports, "--format=text", "--fail-on-increase=10"]) == 1

    out, err = capsys.readouterr()
    for text in (out, err):
        assert repr(ODD_LENS) in text
        assert repr(ODD_TEST) in text
        # no backtick but the one inside the lens's name: no code spans
        assert "`" not in text.replace(repr(ODD_LENS), "")
    assert f"lens {ODD_LENS!r} (new)" in out.splitlines()
    assert "lens summary (unchanged)" in out.splitlines()


def test_the_markdown_keeps_names_as_code_spans(
    reports: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["diff", *reports, "--fail-on-increase=10"]) == 1

    out, err = capsys.readouterr()
    assert f"### `` {ODD_LENS} `` (new)" in out
    assert f"`{ODD_TEST}`" in out
    assert repr(ODD_LENS) in err  # stderr is a log, whatever the format


def renamed(tmp_path: Path, head_tests: list[str]) -> list[str]:
    """A base whose test ran lens "tags", and a head in which ``head_tests`` ran "labels" instead."""
    paths = [str(tmp_path / "base.json"), str(tmp_path / "head.json")]
    base = report({"tags": lens(0.001, tests=["tests/test_app.py::test_tags"])})
    head = report({"labels": lens(0.001, tests=head_tests)})
    for path, data in zip(paths, (base, head), strict=True):
        Path(path).write_text(json.dumps(data))
    return paths


def test_a_lens_renamed_in_the_same_tests_is_hinted_and_still_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens gone from the base and one new in the head, run by the same tests, reads as a rename:
    each output asks "renamed from tags?". The new lens still fails --fail-on-increase: whether it
    is the same work at the same cost is the reviewer's call."""
    paths = renamed(tmp_path, ["tests/test_app.py::test_tags"])

    assert cli_main(["diff", *paths, "--format=text", "--fail-on-increase=10"]) == 1
    out, err = capsys.readouterr()
    assert "lens labels (new; renamed from tags?)" in out.splitlines()
    assert "renamed from tags?" in err
    assert cli_main(["diff", *paths, "--fail-on-increase=10"]) == 1
    assert "| `labels` (new; renamed from `tags`?) |" in capsys.readouterr().out
    assert cli_main(["diff", *paths, "--format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["lenses"]["labels"]["renamed_from"] == "tags"


def test_a_new_lens_in_other_tests_is_not_called_a_rename(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = renamed(tmp_path, ["tests/test_app.py::test_labels"])

    assert cli_main(["diff", *paths, "--format=text"]) == 0
    assert "renamed" not in capsys.readouterr().out


def test_the_report_names_the_tests_that_ran_each_lens() -> None:
    """The plugin's report says which tests ran each lens: what tells a rename from a new lens."""
    ledger = SessionLedger()
    for nodeid in ("tests/test_b.py::test_two", "tests/test_a.py::test_one", "tests/test_b.py::test_two"):
        record = call(lens="tags")
        ledger.add_call(nodeid, record)
        ledger.add_lens(nodeid, lens_run([record]))

    assert ledger.report()["lenses"]["tags"]["tests"] == [
        "tests/test_a.py::test_one",
        "tests/test_b.py::test_two",
    ]
