"""Cassette errors in :mod:`llm_ledger.loading`'s form, ``file:line: key.path: what is wrong``: a YAML
alias, invalid YAML and a cassette whose structure is wrong all name the line."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
import vcr

from llm_ledger import CassetteError
from llm_ledger.testing import FakeOpenAI
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
            f"{CASSETTE}:11: YAML alias [*]question is not allowed: llm-ledger cassettes never contain "
            "anchors or aliases*not a valid llm-ledger cassette*",
            "  to replace it with a fresh recording: "
            "pytest tests/test_app.py::test_chat --llm-record-mode=rewrite",
        ]
    )
    assert "line 11" not in result.stdout.str()


# hand edits gone wrong: (cassette, the line named, the key path and what is wrong)
REQUEST = "- request:\n    method: POST\n    url: https://api.openai.com/v1/chat/completions\n"
INTEGER = "written as an integer (digits, no decimal point or exponent), got"
# an integer field's hint shows integers only (no 0.5 or 1e-3, refused there)
DIGITS = "write the number in decimal digits (e.g. 1, 200)"
STRUCTURE = {
    "status": (
        f"version: 1\ninteractions:\n{REQUEST}  response:\n    status: 99\n",
        7, "interactions[0].response.status: expected an HTTP status code (at least 100), got 99",
    ),
    "misspelt key": (
        f"version: 1\ninteractions:\n{REQUEST}  response:\n    status: 200\n    headrs: {{}}\n",
        8, "interactions[0].response.headrs: unknown key (did you mean 'headers'?); "
        "valid keys: status, headers, json, sse, text, base64",
    ),
    "not a mapping": (
        f"version: 1\ninteractions:\n{REQUEST}  response: {{status: 200}}\n- 1\n",
        7, "interactions[1]: expected a mapping with keys 'request' and 'response', got 1",
    ),
    "two bodies": (
        f"version: 1\ninteractions:\n{REQUEST}    json: {{}}\n    text: hi\n  response: {{status: 200}}\n",
        7, "interactions[0].request.text: a second body (after 'json'); keep one of: json, sse, text, base64",
    ),
    "version": ("interactions: []\nversion: 2\n", 2, "version: expected 1, got 2"),
    "version true": ("version: true\ninteractions: []\n", 1, "version: expected 1, got True"),  # == 1
    # a status code and the format version are integers, recorded as digits: a decimal, an exponent or
    # another base is a hand edit, refused (a price or a budget may be written 1e3; these may not)
    "status 200.0": (f"version: 1\ninteractions:\n{REQUEST}  response:\n    status: 200.0\n", 7,
                     f"interactions[0].response.status: expected an HTTP status code {INTEGER} 200.0"),
    "status 2e2": (f"version: 1\ninteractions:\n{REQUEST}  response:\n    status: 2e2\n", 7,
                   f"interactions[0].response.status: expected an HTTP status code {INTEGER} '2e2'"),
    "status !!float": (f"version: 1\ninteractions:\n{REQUEST}  response: {{status: !!float 200}}\n", 6,
                       f"interactions[0].response.status: expected an HTTP status code {INTEGER} 200.0"),
    "version 1.0": ("version: 1.0\ninteractions: []\n", 1, f"version: expected 1 {INTEGER} 1.0"),
    "version octal": ("interactions: []\nversion: 01\n", 2,
                      f"version: 01 is not a plain decimal number: YAML 1.1 reads it as 1 (octal); {DIGITS}"),
    "version 0x1": ("version: 0x1\ninteractions: []\n", 1,
                    "version: 0x1 is not a plain decimal number: YAML 1.1 reads it as 1 (hexadecimal); "
                    f"{DIGITS}"),
    "status 0x1F4": (f"version: 1\ninteractions:\n{REQUEST}  response: {{status: 0x1F4}}\n", 6,
                     "interactions[0].response.status: 0x1F4 is not a plain decimal number: YAML 1.1 reads "
                     f"it as 500 (hexadecimal); {DIGITS}"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "line", "problem"), STRUCTURE.values(), ids=STRUCTURE.keys())
def test_a_structure_error_names_the_line_and_the_key_path(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    """A wrong status, a misspelt key, an interaction that is not a mapping, two bodies, a wrong
    version, a status or version not written as an integer: ``file:line: key.path: what is wrong``, the
    line where it is."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CassetteError) as raised:
        LedgerCassette(path, "none", "t.py::t")
    assert str(raised.value).startswith(f"{path}:{line}: {problem}"), str(raised.value)


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


def test_a_vcrpy_older_than_the_floor_fails_the_marked_test_naming_the_version(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install that skipped pyproject's bound (``--no-deps``, a pinned lock file) gets the version
    it needs, the same as pyproject's, not replays with empty aiohttp bodies."""
    import vcr

    monkeypatch.setattr(vcr, "__version__", "8.4.0")
    write_project(pytester)
    result = run(pytester, "-k", "test_chat")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*vcrpy 8.4.0 is installed; llm-ledger needs vcrpy >= 8.5.0*"])


def test_a_vcrpy_cassette_is_named_as_one_with_both_ways_on(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """A cassette pytest-recording wrote, copied where llm-ledger looks by a team moving over, is named
    as vcrpy's, with the two ways on (record anew, or keep the test on pytest-recording), not as a
    list of keys llm-ledger does not know."""
    path = tmp_path / "test_chat.yaml"
    with vcr.use_cassette(str(path)), openai.OpenAI(base_url=fake_openai.base_url, max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(CassetteError) as raised:
        LedgerCassette(path, "none", "t.py::t")
    assert str(raised.value).startswith(
        f"{path}:1: a vcrpy (pytest-recording) cassette (requests with 'uri' and 'body'), not an llm-ledger "
        "one: llm-ledger reads only the cassettes it records; record this test's anew, or keep the test on "
        "pytest-recording (@pytest.mark.vcr without llm) and its cassette where that looks for it. "
    ), str(raised.value)
