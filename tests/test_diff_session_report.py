"""What the plugin leaves for the diff: the per-lens table and the --llm-report file marking lenses
whose calls failed (a cassette miss reads as a cheaper lens otherwise), and a report file that a
killed or failed write never leaves half-written for a later `llm-ledger diff` to read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger._cli import main as cli_main
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    FAST_ARGS,
    PLUGIN_ARGS,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytestmark = pytest.mark.sdk_independent

pytest_plugins = ["pytester"]
_FIXTURES = (recorded_fixture, server_fixture, with_key_fixture)  # used by name

CHAT = "tests/test_app.py::test_chat"  # the test of the recorded project whose prompt changes below


def test_a_lens_whose_call_missed_its_cassette_is_marked_in_the_table_and_the_report(
    recorded: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed prompt replayed without re-recording: the lens's cost drops, and the per-lens table
    says why in a "failed" column and a line naming the lens and the test; the report lists the test
    under the lens, so a diff can name it too."""
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise it in three lines")

    result = run(recorded, "--llm-report=head.json")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    table = result.stdout.str().split("llm-ledger: per-lens totals")[1].splitlines()[1:7]
    assert table[0].split() == ["lens", "runs", "calls", "prompt", "completion", "tokens", "cost", "failed"]
    assert table[2].split()[:3] == ["digest", "1", "1"] and len(table[2].split()) == 7  # none failed
    assert table[3].split()[:3] == ["summary", "2", "2"] and table[3].split()[-1] == "1"
    assert table[4].split()[0] == "(session" and table[4].split()[-1] == "1"
    assert table[5] == (
        "failed: calls that failed (cassette misses or API errors); one that got no answer counts no "
        f"tokens or cost: summary (1, in {CHAT})"
    )
    lenses = json.loads((recorded.path / "head.json").read_text())["lenses"]
    assert (lenses["summary"]["errors"], lenses["summary"]["tests_with_failed_calls"]) == (1, [CHAT])
    assert (lenses["digest"]["errors"], lenses["digest"]["tests_with_failed_calls"]) == (0, [])


def test_the_diff_names_the_test_whose_calls_failed_under_the_lens(
    recorded: pytest.Pytester, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a lens whose calls failed in the head, the diff says how many and in which test: the
    one to re-record."""
    run(recorded, "--llm-report=base.json")
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise it in three lines")
    run(recorded, "--llm-report=head.json")
    capsys.readouterr()

    status = cli_main(["diff", str(recorded.path / "base.json"), str(recorded.path / "head.json")])

    assert status == 0
    summary = capsys.readouterr().out.split("### `summary`")[1].split("\n### ")[0]
    assert summary.rstrip().splitlines()[-1] == (
        f"head: 1 failed call(s) (cassette misses or API errors) in `{CHAT}`; one that got no answer "
        "counts no tokens or cost"
    )


BILLED_FAILURE = """
import os

import openai
import pydantic
import pytest

import llm_ledger as ledger


class Digest(pydantic.BaseModel):
    summary: str


@pytest.mark.llm
def test_cut():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("digest"), pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Digest the weekly report"}],
            response_format=Digest,
            max_completion_tokens=2,
        )
"""


@pytest.mark.usefixtures("with_key")
def test_a_failed_call_that_was_billed_is_not_said_to_be_left_out(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call that failed after a billed answer (parse() cut by max_completion_tokens) counts its
    tokens and cost: the table's "failed:" line, and the diff's note and warning, say that only a
    call with no answer (a cassette miss) counts none, not that the failed calls are left out."""
    write_project(pytester, BILLED_FAILURE)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()

    result = run(pytester, "--llm-report=head.json")

    assert result.ret == 0
    table = result.stdout.str().split("llm-ledger: per-lens totals")[1].splitlines()
    row, line = table[3], table[5]
    assert row.split() == ["digest", "1", "1", "10", "2", "12", "$0.00000270", "1"]  # its tokens, counted
    assert line == (
        "failed: calls that failed (cassette misses or API errors); one that got no answer counts no "
        "tokens or cost: digest (1, in tests/test_app.py::test_cut)"
    )
    head = str(pytester.path / "head.json")
    assert cli_main(["diff", head, head]) == 0
    out, err = capsys.readouterr()
    assert out.split("### `digest`")[1].split("\n### ")[0].rstrip().splitlines()[-1] == (
        "head: 1 failed call(s) (cassette misses or API errors) in `tests/test_app.py::test_cut`; one "
        "that got no answer counts no tokens or cost"
    )
    assert (
        f"the head report ({head}) counts 1 failed call(s) (cassette misses or API errors): one "
        "that got no answer counts no tokens or cost" in err
    )


# the file system refuses to grow a file past 600 bytes from the end of the session on (a full
# disk, a quota); a tryfirst hook runs before the plugin writes the report
FULL_DISK = """
import resource
import signal

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""


def test_a_report_that_cannot_be_written_whole_leaves_the_previous_one_intact(
    recorded: pytest.Pytester,
) -> None:
    """A write of the report that fails halfway (here the disk fills up) leaves the report of the
    previous run as it was, and no half-written JSON or temporary file: a later `llm-ledger diff`
    reads a whole report or none. The run fails, naming the cause."""
    assert run(recorded, "--llm-report=out/report.json").ret == 0
    report = recorded.path / "out" / "report.json"
    previous = report.read_text()
    assert len(previous) > 600
    (recorded.path / "conftest.py").write_text(textwrap.dedent(FULL_DISK))

    # a pipe, not a file, takes the output: the limit applies to every file the process writes
    args = [sys.executable, "-m", "pytest", *PLUGIN_ARGS, *FAST_ARGS, "--llm-report=out/report.json"]
    result = subprocess.run(args, cwd=recorded.path, capture_output=True, text=True, timeout=120)

    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert (
        "llm-ledger: could not write the report out/report.json: File too large; give --llm-report a path "
        "in a writable directory"
    ) in result.stdout.splitlines()
    assert report.read_text() == previous
    assert [path.name for path in report.parent.iterdir()] == ["report.json"]


OUTSIDE_A_LENS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_triage():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client:
        with ledger.lens("triage"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Go"}])
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Log"}])
"""


def test_calls_outside_any_lens_have_a_row_in_the_per_lens_table(
    pytester: pytest.Pytester, server: FakeOpenAI, with_key: None
) -> None:
    """A call made outside any lens shows as "(no lens)" in the per-lens table, so the lens rows and
    it add up to the session total."""
    write_project(pytester, OUTSIDE_A_LENS)
    assert run(pytester, "--llm-record-mode=once").ret == 0

    result = run(pytester)

    assert result.ret == 0
    table = result.stdout.str().split("llm-ledger: per-lens totals")[1].splitlines()[3:6]
    # name, then the figures from the right: calls, prompt, completion, tokens, cost (no runs but a lens's)
    rows = {
        name: figures.split()[-5:]
        for name, figures in (re.split(r"\s{2,}", r, maxsplit=1) for r in table if "  " in r)
    }
    assert list(rows) == ["triage", "(no lens)", "(session total)"]
    assert rows["(no lens)"][0] == "1"
    for column in range(4):  # calls and tokens add up
        assert int(rows["triage"][column]) + int(rows["(no lens)"][column]) == int(
            rows["(session total)"][column]
        )
