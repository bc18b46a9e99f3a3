"""Markdown output keeps the `*` its notes explain: a line starting "* " is a list item there, which
hides the mark the table's costs carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_ledger._cli import main
from tests.report_helpers import call, write

pytestmark = pytest.mark.sdk_independent


@pytest.mark.parametrize("command", ["report", "reprice"])
def test_the_notes_under_a_markdown_table_keep_their_mark(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call that reported no usage and has no cost: each note saying what a cost leaves out starts
    with an escaped `*` in Markdown, as in the report's footer, so a PR comment shows the mark."""
    log = write(tmp_path / "llm_calls.jsonl", [call(), call(cost=None, prompt=None, completion=None)])

    assert main([command, str(log), "--format", "markdown"]) == 0

    notes = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "leaves out" in line or "no known cost" in line
    ]
    assert notes and all(line.startswith("\\* ") for line in notes), notes
