"""The diff's "(no lens)" row says how many calls outside any lens failed and in which tests, as a
lens's rows do, in text, Markdown and JSON; a report written before usage rows counted failed calls
says the count is unknown rather than 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger._cli import main as cli_main
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    once_per_process,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytestmark = pytest.mark.sdk_independent

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

OUTSIDE_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

PROMPT = os.environ.get("LEDGER_TEST_PROMPT", "Say hello")


def client():
    return ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


@pytest.mark.llm
def test_outside():
    with client() as c:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])


@pytest.mark.llm
def test_lens():
    with client() as c, ledger.lens("summary"):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Sum it up"}])
"""
OUTSIDE = "tests/test_app.py::test_outside"


def diff(path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> str:
    capsys.readouterr()
    status = cli_main(["diff", "--format", fmt, str(path / "base.json"), str(path / "head.json")])
    assert status == 0
    return capsys.readouterr().out


@pytest.fixture
def reports(
    pytester: pytest.Pytester,
    server: FakeOpenAI,
    with_key: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """base.json of a recorded run; head.json of a run whose call outside any lens missed its cassette
    (made once per process: see once_per_process)."""

    def make() -> None:
        write_project(pytester, OUTSIDE_TESTS)
        assert run(pytester, "--llm-record-mode=once").ret == 0
        server.stop()
        assert run(pytester, "--llm-report=base.json").ret == 0
        with monkeypatch.context() as patch:
            patch.setenv("LEDGER_TEST_PROMPT", "Say goodbye")
            head = run(pytester, "--llm-report=head.json")
        assert head.ret == pytest.ExitCode.TESTS_FAILED
        (pytester.path / "head.out").write_text(head.stdout.str())

    once_per_process("no-lens reports", pytester, tmp_path_factory, make)
    server.stop()
    return pytester.path


def test_the_terminal_summary_names_the_tests_whose_calls_outside_any_lens_failed(reports: Path) -> None:
    """The per-lens table's "failed:" line names the tests of the failed calls outside any lens, as it
    does a lens's: the test to look at, or re-record."""
    (line,) = [x for x in (reports / "head.out").read_text().splitlines() if x.startswith("failed: ")]
    assert line.endswith(f"no tokens or cost: (no lens) (1, in {OUTSIDE})")


def test_the_no_lens_row_names_its_failed_calls_and_their_tests(
    reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call outside any lens that missed its cassette: the "(no lens)" row says so under its table
    in text and Markdown, and the JSON has its failed_calls and failed_call_tests, as a lens has."""
    note = (
        "1 failed call(s) (cassette misses or API errors) in {}; one that got no answer counts no tokens "
        "or cost"
    )
    (usage,) = [
        r for r in json.loads((reports / "head.json").read_text())["usage"] if r["lens"] == "<no lens>"
    ]
    assert (usage["failed_calls"], usage["tests_with_failed_calls"]) == (1, [OUTSIDE])

    text = diff(reports, capsys, "text").split("(no lens): calls outside any lens")[1].split("\ntotal")[0]
    assert text.rstrip().splitlines()[-1] == f"  head: {note.format(OUTSIDE)}"

    markdown = diff(reports, capsys, "markdown")
    section = markdown.split("### (no lens): calls outside any lens")[1].split("\n### ")[0]
    assert section.rstrip().splitlines()[-1] == f"head: {note.format(f'`{OUTSIDE}`')}"

    no_lens = json.loads(diff(reports, capsys, "json"))["no_lens"]
    assert (no_lens["failed_calls"], no_lens["failed_call_tests"]) == ({"head": 1}, {"head": [OUTSIDE]})


def test_a_report_that_did_not_count_failed_calls_outside_lenses_says_unknown(
    reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head report from before usage rows counted failed calls, of a run with failed calls: the
    "(no lens)" row says its failed calls are unknown (JSON null), not that none failed; a base
    report of a run without failed calls needs no count."""
    for name in ("base.json", "head.json"):
        path = reports / name
        data: dict[str, Any] = json.loads(path.read_text())
        for row in data["usage"]:
            del row["failed_calls"], row["tests_with_failed_calls"]
        path.write_text(json.dumps(data))

    text = diff(reports, capsys, "text").split("(no lens): calls outside any lens")[1].split("\ntotal")[0]
    assert text.rstrip().splitlines()[-1] == (
        "  head: failed calls unknown: its report, from an older llm-ledger, does not count them outside "
        "lenses, and its run had some (see the total)"
    )
    no_lens = json.loads(diff(reports, capsys, "json"))["no_lens"]
    assert (no_lens["failed_calls"], no_lens["failed_call_tests"]) == ({"head": None}, {})
