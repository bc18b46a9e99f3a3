"""A YAML alias in a cassette is refused in the form of every other cassette error: ``file:line: what``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_ledger import CassetteError
from pytest_llm_ledger._cassette import LedgerCassette
from tests.plugin_helpers import run, write_project

pytest_plugins = ["pytester"]

CASSETTE = Path("cassettes", "tests", "test_app", "test_chat.yaml")
# a hand-made cassette that shares one request body between two interactions through an anchor
ALIASED = """\
version: 1
interactions:
- request:
    method: POST
    url: https://api.openai.com/v1/chat/completions
    json: &question {model: gpt-4o-mini, messages: [{role: user, content: hi}]}
  response: {status: 200, json: {}}
- request:
    method: POST
    url: https://api.openai.com/v1/chat/completions
    json: *question
  response: {status: 200, json: {}}
"""
DUPLICATE_KEY = "version: 1\nversion: 1\ninteractions: []\n"


def test_an_alias_fails_its_test_naming_the_file_and_line(pytester: pytest.Pytester) -> None:
    """The test errors with ``file:11: YAML alias *question is not allowed: ...`` and the fix."""
    write_project(pytester)
    (pytester.path / CASSETTE).parent.mkdir(parents=True)
    (pytester.path / CASSETTE).write_text(ALIASED)

    result = run(pytester, "-k", "test_chat")

    result.assert_outcomes(errors=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            f"*{CASSETTE}:11: YAML alias [*]question is not allowed: llm-ledger cassettes never contain "
            "anchors or aliases*not a valid llm-ledger cassette*",
            "  to replace it with a fresh recording: "
            "pytest tests/test_app.py::test_chat --llm-record-mode=rewrite",
        ]
    )
    assert "line 11" not in result.stdout.str()


def test_an_alias_and_a_yaml_error_are_worded_in_one_form(tmp_path: Path) -> None:
    """An alias and a key written twice both start ``file:line: `` (no ``file: line N:``)."""
    messages = []
    for name, text in (("aliased.yaml", ALIASED), ("twice.yaml", DUPLICATE_KEY)):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(CassetteError) as raised:
            LedgerCassette(path, "none", "t.py::t")
        messages.append(str(raised.value))
    for message, (name, line) in zip(messages, (("aliased.yaml", 11), ("twice.yaml", 2)), strict=True):
        assert re.match(rf"{re.escape(str(tmp_path / name))}:{line}: \S", message), message
