"""`llm-ledger diff` over a test suite split across CI jobs: each side a directory or a glob of the
shards' --llm-report files, merged into the report of one unsharded run; a test in two shards, or a
file there that is not a report, is an error naming it."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import cli, recorded_fixture, run, server_fixture, with_key_fixture, write_project
from tests.test_diff_comment_size import write
from tests.test_diff_fail_on_increase import report
from tests.test_report_cut_short import CUT_SHORT_TESTS, KEEP_CONFTEST

pytestmark = pytest.mark.sdk_independent

pytest_plugins = ["pytester"]
_FIXTURES = (recorded_fixture, server_fixture, with_key_fixture)  # used by name

CHAT = "tests/test_app.py::test_chat"


@pytest.fixture(name="shards")
def shards_fixture(recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recorded project's base run whole (base.json) and in two shards (base-1.json, base-2.json);
    then, its prompt changed so test_chat misses its cassette, the head run whole (head.json) and in
    two shards, each in a folder of its own as CI artifacts download (heads/1/, heads/2/). The lens
    summary runs in both shards."""
    for name in ("base", "head"):
        if name == "head":
            monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise it in three lines")
        first, second = ("heads/1/head", "heads/2/head") if name == "head" else ("base-1", "base-2")
        run(recorded, f"--llm-report={name}.json")
        run(recorded, "-k", "test_chat", f"--llm-report={first}.json")
        run(recorded, "-k", "not test_chat", f"--llm-report={second}.json")
    return recorded.path


def test_the_diff_of_a_sharded_run_is_the_diff_of_the_run_whole(
    shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens run in two shards sums, the failed call of one shard is named under its lens and in the
    warnings, and every figure, cost to the last digit, is the unsharded run's: the Markdown and the
    JSON of `diff 'base-*.json' heads/` are those of `diff base.json head.json`, but for the paths."""
    whole = json.loads((shards / "head.json").read_text())
    assert whole["lenses"]["summary"]["runs"] == 2 and whole["lenses"]["summary"]["errors"] == 1
    for fmt in ("markdown", "json"):
        one = cli(capsys, "diff", "base.json", "head.json", "--format", fmt, "--fail-on-increase", "25")
        sharded = cli(capsys, "diff", "base-*.json", "heads", "--format", fmt, "--fail-on-increase", "25")

        said = (sharded.returncode, _paths(sharded.stdout), _paths(sharded.stderr))
        assert said == (one.returncode, one.stdout, one.stderr)
    summary = json.loads(one.stdout)["lenses"]["summary"]
    assert (summary["metrics"]["runs"]["head"], summary["failed_call_tests"]) == (2, {"head": [CHAT]})


def _paths(said: object) -> object:
    """What the sharded diff said, its paths as the whole runs' diff names them."""
    return (
        said.replace("base-*.json", "base.json").replace("heads", "head.json")
        if isinstance(said, str)
        else said
    )


def test_a_test_in_two_shards_is_an_error_naming_it_and_the_files(
    shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard whose report is there twice (a job run again, its artifact kept) would count its calls
    twice: an error naming the test and both files, exit 2."""
    shutil.copy(shards / "heads/1/head.json", shards / "heads/again.json")

    result = cli(capsys, "diff", "base.json", "heads")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"llm-ledger diff: error: test '{CHAT}' is in two shard reports, heads/1/head.json and "
        "heads/again.json: a shard run twice, or shards that overlap, whose calls would count twice; give "
        "each test's shard once (remove the older report)\n"
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"passed": 3}\n', "not an llm-ledger report (no \"schema\": 'llm-ledger-report')"),
        (
            '{"schema": "llm-ledger-report", "version": 2, "lenses": {}, "total": {}}\n',
            "report version 2 is not supported; this llm-ledger reads version(s) 1",
        ),
    ],
    ids=["not-a-report", "another-version"],
)
def test_a_file_among_the_shards_that_is_no_report_is_an_error_naming_it(
    shards: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    """Another tool's JSON, or a report of another version, in the shards' folder is an error naming
    that file, not a shard left out."""
    (shards / "heads/2/results.json").write_text(content)

    result = cli(capsys, "diff", "base.json", "heads")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"llm-ledger diff: error: heads/2/results.json: {why}")


def test_a_folder_or_glob_with_no_report_is_no_base_but_an_error_for_the_head(
    shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base's shards that wrote nothing read as a missing base (every lens new; --require-base
    fails); a head with none is an error naming the folder."""
    (shards / "empty").mkdir()

    no_base = cli(capsys, "diff", "old-*.json", "heads", "--format", "text")
    no_head = cli(capsys, "diff", "base.json", "empty")

    assert no_base.returncode == 0 and "warning: no base report at old-*.json" in no_base.stdout
    assert cli(capsys, "diff", "old-*.json", "heads", "--require-base").returncode == 2
    assert (no_head.returncode, no_head.stderr) == (
        2,
        "llm-ledger diff: error: 'empty' holds no report (no *.json file); give a report, or the reports "
        "of a sharded run's shards as a directory or a quoted glob, written by `pytest "
        "--llm-report=FILE.json`\n",
    )


def test_a_comment_cut_to_fit_gives_the_command_for_the_whole_diff_with_the_glob_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 changed lenses over two shards: the line saying what the comment leaves out gives the
    command that prints the whole diff with the shards' glob quoted, so a shell runs it as given."""
    monkeypatch.chdir(tmp_path)
    base, head = write(tmp_path, 400)
    lenses = json.loads(Path(head).read_text())["lenses"]
    for shard, names in enumerate((list(lenses)[:200], list(lenses)[200:]), start=1):
        Path(f"head-{shard}.json").write_text(json.dumps(report({n: lenses[n] for n in names})))

    result = cli(capsys, "diff", base, "head-*.json")

    assert result.returncode == 0
    assert f"The whole diff: `llm-ledger diff --format json {base} 'head-*.json'`._" in result.stdout
    whole = cli(capsys, *shlex.split(f"diff --format json {base} 'head-*.json'"))
    assert json.loads(whole.stdout)["lens_count"] == 400


# a lens on a model no price table knows: its cost leaves its calls out
UNPRICED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_unpriced():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("partly"):
        client.chat.completions.create(model="acme-7b", messages=[{"role": "user", "content": "Hi"}])
"""


@pytest.mark.usefixtures("with_key")
def test_runs_cut_short_and_calls_with_no_known_cost_are_carried_from_the_shards(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens with a run cut short in one shard and a call with no known cost in the other: the sharded
    head is marked, flagged and checked as the whole run is (its runs cut short counted, its cost's
    gap named)."""
    write_project(pytester, CUT_SHORT_TESTS)
    write_project(pytester, UNPRICED_TESTS, name="test_unpriced")
    pytester.makeconftest(KEEP_CONFTEST)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    run(pytester, "--llm-report=whole.json")
    run(pytester, "-k", "cut_short", "--llm-report=shards/1.json")
    run(pytester, "-k", "not cut_short", "--llm-report=shards/2.json")

    one = cli(capsys, "diff", "whole.json", "whole.json", "--format", "json", "--fail-on-increase", "0")
    sharded = cli(capsys, "diff", "whole.json", "shards", "--format", "json", "--fail-on-increase", "0")

    assert sharded.returncode == one.returncode == 1  # the lens cut short cannot be checked
    assert (
        sharded.stdout.replace('"shards"', '"whole.json"').replace("(shards)", "(whole.json)") == one.stdout
    )
    partly = json.loads(sharded.stdout)["lenses"]["partly"]
    assert partly["metrics"]["runs"]["head"] == 3 and partly["cut_short_runs"] == {"base": 1, "head": 1}
    assert "no known price for model 'acme-7b' (1 call)" in partly["cost_gaps"]["head"]


def test_the_budgets_each_shard_enforced_are_shown_together(
    recorded: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """Budgets are enforced per shard: the head's budgets in the comment are each shard's limits
    exceeded, one after the other, and the lenses that ran with no budget in any shard."""
    (recorded.path / "budgets.yaml").write_text("lenses:\n  summary: {max_total_tokens: 5}\n")
    run(recorded, "--llm-report=base.json")
    for shard, select in ((1, "test_chat"), (2, "not test_chat")):
        assert run(recorded, "--llm-budget", "-k", select, f"--llm-report=heads/{shard}.json").ret == 1

    result = cli(capsys, "diff", "base.json", "heads")

    budgets = result.stdout.split("**Budgets")[1].split("\n### ")[0].strip().splitlines()
    assert budgets == [
        "(budgets.yaml) in the head run: 2 limit(s) exceeded, 1 lens(es) with no budget:**",
        "",
        f"- lens `summary`: max_total_tokens 5, actual 28 (worst run `{CHAT}`)",
        "- lens `summary`: max_total_tokens 5, actual 16 (worst run `tests/test_app.py::test_async`)",
        "- lens `digest`: no budget (no entry under lenses, no default)",
    ]
