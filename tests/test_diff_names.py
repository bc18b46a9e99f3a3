"""How `llm-ledger diff` names lenses and tests: code spans in the Markdown (a PR comment), plain text
in the text output and on stderr (a terminal or a CI log, where backticks are noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_ledger._cli import main as cli_main

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
