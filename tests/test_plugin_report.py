"""Per-lens reports: the --llm-report JSON, `llm-ledger diff`, --llm-baseline and xdist totals."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger._cli import main as cli_main
from tests.plugin_helpers import (
    INI,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (recorded_fixture, server_fixture, with_key_fixture)  # used by name


def report(totals: dict[str, dict[str, Any]], total: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "llm-ledger-report", "version": 1, "lenses": totals, "tests": {}, "total": total}


def test_report_json_has_lenses_tests_and_total(recorded: pytest.Pytester) -> None:
    """--llm-report writes the versioned per-lens, per-test and session aggregates."""
    result = run(recorded, "--llm-report=out/report.json")

    assert result.ret == 0
    result.stdout.fnmatch_lines(["llm-ledger: report written to out/report.json"])
    data = json.loads((recorded.path / "out" / "report.json").read_text())
    assert (data["schema"], data["version"]) == ("llm-ledger-report", 1)
    assert set(data["lenses"]) == {"digest", "summary"}
    summary = data["lenses"]["summary"]
    assert (summary["runs"], summary["api_calls"], summary["errors"], summary["cost_complete"]) == (
        2,
        2,
        0,
        True,
    )
    assert summary["total_tokens"] == summary["prompt_tokens"] + summary["completion_tokens"] > 0
    assert 0 < summary["cost_usd"] < 0.01
    assert set(data["tests"]) == {
        f"tests/test_app.py::{name}" for name in ("test_chat", "test_stream", "test_async")
    }
    assert data["tests"]["tests/test_app.py::test_chat"]["lens_runs"] == 1
    assert data["total"]["api_calls"] == 3
    assert data["total"]["tests"] == 3
    assert data["total"]["total_tokens"] == sum(t["total_tokens"] for t in data["tests"].values())


BASE = report(
    {
        "summary": {"runs": 2, "api_calls": 2, "total_tokens": 100, "errors": 0, "cost_usd": 0.0004},
        "gone": {"runs": 1, "api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.00001},
    },
    {"api_calls": 3, "total_tokens": 110, "errors": 0, "cost_usd": 0.00041},
)
HEAD = report(
    {
        "summary": {"runs": 2, "api_calls": 3, "total_tokens": 150, "errors": 0, "cost_usd": 0.0006},
        "fresh": {"runs": 1, "api_calls": 1, "total_tokens": 20, "errors": 0, "cost_usd": 0.00002},
    },
    {"api_calls": 4, "total_tokens": 170, "errors": 0, "cost_usd": 0.00062},
)


@pytest.fixture
def reports(tmp_path: Path) -> tuple[str, str]:
    base, head = tmp_path / "base.json", tmp_path / "head.json"
    base.write_text(json.dumps(BASE))
    head.write_text(json.dumps(HEAD))
    return str(base), str(head)


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("out", "is a directory"),
        ("notes.txt/report.json", "is a file"),
        # a FIFO or a device (--llm-report=/dev/stdout): the report, written beside it and renamed, would
        # replace it (as root, /dev/stdout itself)
        ("pipe", "is not a regular file (a device, FIFO or socket), which the written report would replace"),
    ],
)
def test_a_report_path_that_cannot_be_written_is_a_usage_error(
    recorded: pytest.Pytester, given: str, problem: str
) -> None:
    """--llm-report naming a directory, a FIFO (or a path under a file) is refused before any test
    runs, naming the path and the fix, not an internal error after the whole run nor a FIFO replaced."""
    (recorded.path / "out").mkdir()
    (recorded.path / "notes.txt").write_text("not a directory\n")
    os.mkfifo(recorded.path / "pipe")

    result = run(recorded, f"--llm-report={given}")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*llm-ledger: --llm-report {given}: *{problem}*; give the path of a JSON file*"]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert stat.S_ISFIFO((recorded.path / "pipe").stat().st_mode)


def test_diff_markdown_table_per_lens(reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger diff` prints base, head, delta and % per lens, marking new and removed lenses."""
    assert cli_main(["diff", *reports]) == 0
    out = capsys.readouterr().out
    assert "## llm-ledger: cost diff" in out
    assert "### `fresh` (new)" in out
    assert "### `gone` (removed)" in out
    section = out.split("### `summary`")[1].split("###")[0]
    assert "| metric | base | head | delta | % |" in section
    assert "| calls | 2 | 3 | +1 | +50.0% |" in section
    assert "| tokens | 100 | 150 | +50 | +50.0% |" in section
    assert "| cost (USD) | $0.000400 | $0.000600 | +$0.000200 | +50.0% |" in section
    assert "| calls | — | 1 | — | — |" in out.split("### `fresh`")[1]
    assert "| cost (USD) | $0.000410 | $0.000620 | +$0.000210 | +51.2% |" in out.split("### Total")[1]


def test_diff_markdown_shows_lens_names_with_backticks_and_pipes_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens key holding a backtick or a pipe keeps its heading and table rows whole in the PR
    comment: a lone backtick in a code span would end it early, a pipe would split the row; a colon
    stays in the name --fail-on-increase gives."""
    odd = "ns:sum`mary|v2"
    entry = {"runs": 1, "api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.0001}
    for side, cost in (("base", 0.0001), ("head", 0.0002)):
        lenses = {odd: {**entry, "cost_usd": cost}}
        (tmp_path / f"{side}.json").write_text(json.dumps(report(lenses, {**entry, "cost_usd": cost})))
    assert cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json")]) == 0
    out = capsys.readouterr().out
    assert "### `` ns:sum`mary|v2 ``" in out
    assert "| `` ns:sum`mary\\|v2 `` | $0.000100 | $0.000200 | +$0.000100 | +100.0% |" in out
    assert (
        cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json"), "--fail-on-increase=50"])
        == 1
    )
    assert "% in 'ns:sum`mary|v2' (+100.0%)" in capsys.readouterr().err  # the whole name, colon and all


def test_diff_markdown_keeps_a_lens_key_with_a_line_break_on_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens key holding a line break (a key built from a title) shows it as ``\\n``: a line break
    would end its table row, and its heading, halfway through the name."""
    entry = {"runs": 1, "api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.0001}
    for side, cost in (("base", 0.0001), ("head", 0.0002)):
        lenses = {"weekly\r\ndigest": {**entry, "cost_usd": cost}}
        (tmp_path / f"{side}.json").write_text(json.dumps(report(lenses, {**entry, "cost_usd": cost})))
    assert cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| `weekly\\r\\ndigest` | $0.000100 | $0.000200 | +$0.000100 | +100.0% |" in lines
    assert "### `weekly\\r\\ndigest`" in lines


def test_diff_markdown_shows_a_lens_key_with_angle_brackets_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lens key such as `<no lens>` is a code span in the PR comment: GitHub shows it as written
    there (a backslash before its `<` would show too)."""
    entry = {"runs": 1, "api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.0001}
    for side in ("base", "head"):
        (tmp_path / f"{side}.json").write_text(json.dumps(report({"<no lens>": entry}, entry)))
    assert cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json")]) == 0
    out = capsys.readouterr().out
    assert "| `<no lens>` (unchanged) | $0.000100 |" in out and "\\<" not in out


def test_diff_text_and_json_formats(reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """--format text is aligned plain text; --format json is the machine-readable diff."""
    assert cli_main(["diff", *reports, "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "lens gone (removed)" in text
    assert any(line.split() == ["calls", "2", "3", "+1", "+50.0%"] for line in text.splitlines())
    assert cli_main(["diff", *reports, "--format=json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lenses"]["fresh"]["status"] == "new"
    assert data["lenses"]["summary"]["metrics"]["api_calls"] == {
        "base": 2,
        "head": 3,
        "delta": 1,
        "pct": 50.0,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ('{"schema": "other"}', "not an llm-ledger report (no \"schema\": 'llm-ledger-report'); write one"),
        ('{"schema": "llm-ledger-report", "version": 9, "lenses": {}, "total": {}}', "report version 9"),
        (json.dumps(report({"s": {"cost_usd": float("nan")}}, {})), "not JSON (NaN is not a number JSON"),
        (json.dumps(report({}, {"cost_usd": float("inf")})), "not JSON (Infinity is not a number JSON"),
        (json.dumps(report({}, {})).replace("{}}", '{"cost_usd": 1e400}}'), "not JSON (1e400 is too large"),
        ('{"schema": "llm-ledger-report", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (
            json.dumps(report({"s": {"cost_usd": "0.5"}}, {})),
            "lenses.s.cost_usd: expected a number >= 0, got '0.5'",
        ),
        (
            json.dumps(report({}, {"api_calls": True})),
            "total.api_calls: expected a whole number >= 0, got True",
        ),
        (
            json.dumps(report({}, {"api_calls": 10**400})),
            "total.api_calls: expected a whole number >= 0, got 1000",
        ),
        (json.dumps(report({"s": {"runs": -3}}, {})), "lenses.s.runs: expected a whole number >= 0, got -3"),
        (json.dumps(report({}, {"errors": 1.5})), "total.errors: expected a whole number >= 0, got 1.5"),
        (json.dumps(report({}, {"cost_usd": -0.1})), "total.cost_usd: expected a number >= 0, got -0.1"),
        (
            json.dumps({**report({}, {}), "failed_tests": "tests/test_a.py::test_x"}),
            "failed_tests: expected a list of test ids, got 'tests/test_a.py::test_x'",
        ),
        (json.dumps({**report({}, {}), "tests": 5}), "'tests' must be an object"),
        (json.dumps({**report({}, {}), "usage": {}}), "'usage' must be a list"),
        (json.dumps({**report({}, {}), "exit_status": [2]}), "exit_status: expected pytest's exit status"),
        (
            json.dumps(
                {**report({}, {}), "budgets": {"file": "budgets.yaml", "exceeded": [{}], "no_budget": []}}
            ),
            "budgets: expected what --llm-budget found, as pytest --llm-report writes it ('file', "
            "'exceeded', 'no_budget'), got {'file': 'budgets.yaml', ",
        ),
        ('{"schema": "llm-ledger-report", "version": 1}', "no 'lenses': not a whole report; write one with"),
        ('{"schema": "llm-ledger-report", "version": 1, "lenses": {}}', "no 'total': not a whole report"),
    ],
    ids=[
        "not-json",
        "wrong-schema",
        "future-version",
        "nan",
        "infinity",
        "1e400",
        "deep",
        "string-metric",
        "bool-metric",
        "huge-int",
        "negative-count",
        "fractional-count",
        "negative-cost",
        "failed-tests-string",
        "tests-not-object",
        "usage-not-list",
        "exit-status-list",
        "budgets-shape",
        "no-lenses",
        "no-total",
    ],
)
def test_diff_rejects_bad_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    """A file that is not a supported report exits 2 with a message naming the file."""
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert cli_main(["diff", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"llm-ledger diff: error: {bad}: {message}" in err
    assert "Traceback" not in err


def test_diff_refuses_endless_input_and_writes_strict_json(
    reports: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/zero as a report ends in an error after a bounded read; --format json output is strict JSON."""
    assert cli_main(["diff", "/dev/zero", reports[1]]) == 2
    assert "/dev/zero: is over 67,108,864 bytes, too big for a report" in capsys.readouterr().err

    def refuse(text: str) -> None:
        raise AssertionError(f"non-standard JSON constant {text}")

    assert cli_main(["diff", *reports, "--format=json", "--fail-on-increase=0"]) == 1
    json.loads(capsys.readouterr().out, parse_constant=refuse)


def test_baseline_diff_in_terminal_summary(recorded: pytest.Pytester) -> None:
    """--llm-baseline shows the per-lens diff between a saved report and this session."""
    base = report(
        {"summary": {"runs": 2, "api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.0}},
        {"api_calls": 1, "total_tokens": 10, "errors": 0, "cost_usd": 0.0},
    )
    recorded.path.joinpath("base.json").write_text(json.dumps(base))

    result = run(recorded, "--llm-baseline=base.json")

    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: cost diff against base.json*",
            "lens summary",  # the largest change in cost first
            "*calls *1 *2 *+1 *+100.0%",
            "lens digest (new; gpt-4o-mini)",  # the model a new lens's calls ask for
        ]
    )


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("missing.json", "missing.json: report not found; write one with `pytest --llm-report=missing.json`"),
        ("saved", "saved: is a directory, expected a report"),
        ("-", "./-: report not found; write one with `pytest --llm-report=./-`"),  # a file, not stdin
        ("tests/test_app.py", "tests/test_app.py: not JSON *expected a file written by pytest --llm-report"),
        ("other.json", 'other.json: not an llm-ledger report (no "schema": *'),
    ],
)
def test_a_baseline_that_cannot_be_read_is_a_usage_error_before_any_test_runs(
    recorded: pytest.Pytester, given: str, problem: str
) -> None:
    """--llm-baseline naming no file, a directory or a file that is not a report printed a red line
    after the run, which passed: it compared nothing. It is a usage error (exit 4) before any test runs,
    naming the path, what is wrong and how to write a report."""
    (recorded.path / "saved").mkdir()
    (recorded.path / "other.json").write_text('{"lenses": {}}\n')

    result = run(recorded, f"--llm-baseline={given}")

    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"*llm-ledger: --llm-baseline: {problem}"])
    assert "passed" not in result.stdout.str()


def test_a_baseline_that_this_run_reports_over_is_the_earlier_report(recorded: pytest.Pytester) -> None:
    """`--llm-report=last.json --llm-baseline=last.json` compares this run with the last one, whose report
    this one then replaces: the baseline is read before the run, not after the report replaced it (a diff
    of the run against itself, which shows no change whatever changed)."""
    assert run(recorded, "--llm-report=last.json", "-k", "test_chat").ret == 0

    result = run(recorded, "--llm-report=last.json", "--llm-baseline=last.json")

    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["lens digest (new; gpt-4o-mini)"])


def test_baseline_diff_warnings_name_the_baseline_file_and_this_run(recorded: pytest.Pytester) -> None:
    """The warnings of --llm-baseline's diff say which file is the base and that the head is this
    run, not "the base report (base)", which names no file."""
    run(recorded, "--llm-report=saved/base.json").assert_outcomes(passed=3)

    result = run(recorded, "--llm-baseline=saved/base.json", "-k", "not test_stream")

    result.stdout.fnmatch_lines(
        [
            "warning: 1 test(s) of the base report made no call in the head report (this run): "
            "tests/test_app.py::test_stream *",
        ]
    )
    assert "(head)" not in result.stdout.str()


def test_a_report_path_after_a_space_outside_the_project_is_refused_naming_the_equals_form(
    recorded: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`pytest --llm-baseline ../base.json` (a space, not `=`): pytest picks the rootdir and ini file
    before it knows any plugin's options, and an existing path given that way counts as a test path
    there, so the run used another directory's settings (the ini's llm_budget and llm_strict lost), test
    ids and cassette names. It is a usage error naming the `=` form, which runs as asked."""
    saved = tmp_path_factory.mktemp("elsewhere") / "base.json"
    assert run(recorded, f"--llm-report={saved}").ret == 0
    for option in ("--llm-baseline", "--llm-report"):
        result = run(recorded, option, str(saved))
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        assert f"write {option}={saved}" in result.stderr.str()
    result = run(recorded, f"--llm-baseline={saved}")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"rootdir: {recorded.path}"])


def test_xdist_totals_equal_a_serial_run(recorded: pytest.Pytester) -> None:
    """With -n 2 the workers' records are merged on the controller: the same report as a serial run."""
    assert run(recorded, "--llm-report=serial.json").ret == 0
    result = run(recorded, "-n", "2", "--llm-report=parallel.json")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*llm-ledger: per-lens totals*", "summary *2 *2 *"])
    serial = json.loads((recorded.path / "serial.json").read_text())
    parallel = json.loads((recorded.path / "parallel.json").read_text())
    assert parallel == serial


def test_an_xdist_worker_lost_before_sending_its_records_fails_the_run(recorded: pytest.Pytester) -> None:
    """A worker that dies after its tests passed (a plugin or thread ending the process) never sends its
    records: xdist still says every test passed, and the run passed with a report, totals and budgets
    that left out every call the worker's tests made. The run fails, naming the worker and why."""
    (recorded.path / "budgets.yaml").write_text("total: {max_api_calls: 3}\n")
    recorded.makeconftest(
        """
        import os

        import pytest


        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            if hasattr(session.config, "workerinput"):
                os._exit(3)
        """
    )

    # one worker: a second would only die the same way, its records lost the same way
    result = run(recorded, "-n", "1", "--max-worker-restart=0", "--llm-budget", "--llm-report=r.json")

    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["llm-ledger: xdist worker gw? went down before it sent its llm-ledger records (*), so the totals, *"]
    )
    assert json.loads((recorded.path / "r.json").read_text())["exit_status"] == 1


OWN_MONITOR_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

MONITOR = ledger.LLMCallMonitor(logger=None)  # the application's own, e.g. for its own price table


@pytest.mark.llm
def test_own_monitor(llm_ledger):
    client = MONITOR.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, MONITOR.lens("own", source_id="doc-1"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert llm_ledger.api_calls == 1 and llm_ledger.lens("own")[0]["summary"]["total_api_calls"] == 1
"""


@pytest.mark.usefixtures("with_key")
def test_calls_of_the_applications_own_monitor_count_too(pytester: pytest.Pytester, server: Any) -> None:
    """Budgets and reports see every monitor, not only the default one (else they would pass on 0)."""
    write_project(pytester, OWN_MONITOR_TESTS)
    result = run(pytester, "--llm-record-mode=once", "--llm-report=out/report.json")

    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out" / "report.json").read_text())
    assert data["lenses"]["own"]["api_calls"] == 1 and data["total"]["api_calls"] == 1
    assert data["lenses"]["own"]["cost_usd"] > 0


APP_CONFTEST = """
import llm_ledger

llm_ledger.configure()  # the application's start-up: log_dir from LLM_LEDGER_LOG_DIR, else logs/


def pytest_sessionfinish():
    llm_ledger.flush()
"""


@pytest.mark.usefixtures("fresh_config")
def test_test_runs_stay_out_of_the_applications_log_unless_asked(recorded: pytest.Pytester) -> None:
    """An application that configures llm-ledger at start-up writes no logs/llm_calls.jsonl during
    a test run; ini llm_log_dir names a directory that gets the run's records instead."""
    recorded.makeconftest(APP_CONFTEST)

    assert run(recorded).ret == 0
    assert not (recorded.path / "logs").exists()

    recorded.makefile(".ini", pytest=INI + "llm_log_dir = test-logs\n")
    assert run(recorded).ret == 0
    assert not (recorded.path / "logs").exists()
    lines = (recorded.path / "test-logs" / "llm_calls.jsonl").read_text().splitlines()
    events = sorted(json.loads(line)["event"] for line in lines)
    assert events == ["lens_summary"] * 3 + ["llm_api_call"] * 3


@pytest.mark.usefixtures("fresh_config")
def test_an_llm_log_dir_that_is_a_file_is_named_as_the_ini_setting(recorded: pytest.Pytester) -> None:
    """ini llm_log_dir naming a file is a usage error naming the setting, not the application's
    configure() failing on LLM_LEDGER_LOG_DIR, a variable the user never set."""
    recorded.makeconftest(APP_CONFTEST)
    recorded.makefile(".ini", pytest=INI + "llm_log_dir = notes.txt\n")
    (recorded.path / "notes.txt").write_text("not a directory\n")

    result = run(recorded)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: llm-ledger: llm_log_dir = notes.txt: */notes.txt is a file, not a directory; give the *"]
    )
    assert "LLM_LEDGER_LOG_DIR" not in result.stdout.str() + result.stderr.str()


DOCUMENTED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger
from llm_ledger.testing import capture


@pytest.mark.llm
def test_documented(llm_ledger):
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with capture(every_monitor=True) as captured, client, ledger.lens("doc"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(captured) == 2 and [r["event"] for r in captured] == ["llm_api_call", "lens_summary"]
    assert captured.calls == [r for r in captured if r["event"] == "llm_api_call"] == llm_ledger.calls
    assert captured.lenses == llm_ledger.lenses == llm_ledger.lens("doc") and llm_ledger.lens("x") == []
    assert llm_ledger.nodeid == "tests/test_app.py::test_documented"
    totals = llm_ledger.totals()
    assert (llm_ledger.api_calls, llm_ledger.cost_complete, totals.api_calls) == (1, True, 1)
    assert llm_ledger.prompt_tokens + llm_ledger.completion_tokens == llm_ledger.total_tokens > 0
    assert 0 < llm_ledger.cost_usd == totals.cost_usd
"""


@pytest.mark.usefixtures("with_key")
def test_fixture_and_capture_attributes_as_documented(pytester: pytest.Pytester, server: Any) -> None:
    """Every documented attribute of the llm_ledger fixture and of capture()'s Captured (sized,
    iterable) holds for one recorded call in a lens."""
    write_project(pytester, DOCUMENTED_TESTS)

    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)


SHADOWED_TESTS = """
import openai
import pytest

import llm_ledger


@pytest.mark.llm
def test_instrument(llm_ledger):
    llm_ledger.instrument(openai.OpenAI())


@pytest.mark.llm
def test_lens(llm_ledger):
    with llm_ledger.lens("summary"):
        pass
"""


def test_the_fixture_hiding_the_module_says_so_and_how_to_import_it(pytester: pytest.Pytester) -> None:
    """A test that imports llm_ledger and takes the llm_ledger fixture reaches the fixture by that name:
    the module's functions (instrument, lens as a context manager) fail naming the clash and the fix."""
    write_project(pytester, SHADOWED_TESTS)

    result = run(pytester)

    result.assert_outcomes(failed=2)
    fix = "import the module under another name (import llm_ledger as ledger)"
    out = result.stdout.str()
    assert "AttributeError: 'instrument': llm_ledger here is the pytest fixture (the test's records)" in out
    assert "TypeError: llm_ledger.lens(...) here is the pytest fixture's list of lens records" in out
    assert out.count(fix) == 2


def test_diff_against_a_missing_base_shows_every_lens_as_new(
    tmp_path: Path, reports: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A base branch that wrote no report: exit 0, every lens new, and a note that says why."""
    missing = str(tmp_path / "nowhere" / "base.json")
    assert cli_main(["diff", missing, reports[1]]) == 0
    out, err = capsys.readouterr()
    assert f"> **Warning:** no base report at {missing}: every lens is shown as new" in out
    assert "### `fresh` (new)" in out and "### `summary` (new)" in out and "### Total (new)" in out
    assert f"llm-ledger diff: warning: no base report at {missing}" in err


def test_diff_flags_reports_with_failed_tests_or_calls(
    tmp_path: Path, reports: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A base run whose tests failed (e.g. every changed prompt missed) is flagged, naming the tests."""
    broken = {**BASE, "failed_tests": ["tests/test_a.py::test_x"], "total": {**BASE["total"], "errors": 2}}
    base = tmp_path / "broken.json"
    base.write_text(json.dumps(broken))
    assert cli_main(["diff", str(base), reports[1], "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"warning: the base report ({base}) has 1 failed test(s): tests/test_a.py::test_x; its numbers "
        "leave out what those tests did not get to do\n"
        f"warning: the base report ({base}) counts 2 failed call(s) (cassette misses or API errors)"
    )


def test_diff_only_changed_and_fail_on_increase(
    tmp_path: Path, reports: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--only-changed drops unchanged lenses; --fail-on-increase exits 1 naming each lens that grew or
    is new, and the total when it grew."""
    same = {"runs": 1, "api_calls": 1, "total_tokens": 5, "errors": 0, "cost_usd": 0.00000045}
    base, head = json.loads(Path(reports[0]).read_text()), json.loads(Path(reports[1]).read_text())
    base["lenses"]["same"] = head["lenses"]["same"] = same
    for path, data in zip(reports, (base, head), strict=True):
        Path(path).write_text(json.dumps(data))

    assert cli_main(["diff", *reports]) == 0
    assert "| cost (USD) | $0.000000450 | $0.000000450 | $0.000000 | 0.0% |" in capsys.readouterr().out
    assert cli_main(["diff", *reports, "--only-changed", "--fail-on-increase", "60"]) == 1
    out, err = capsys.readouterr()
    assert "4 lens(es), 3 with changes (only those are shown)." in out and "`same`" not in out
    # a lens new in the head costs money: an increase from nothing, whatever the threshold
    assert err.strip() == (
        "llm-ledger diff: new lens(es) that cost money (an increase from nothing): fresh ($0.0000200 per run)"
    )

    assert cli_main(["diff", *reports, "--fail-on-increase=49.5"]) == 1
    out, err = capsys.readouterr()
    assert "- `summary`: cost per run $0.000200 -> $0.000300 (+50.0%)" in out
    assert err.strip() == (
        "llm-ledger diff: cost per run grew by more than 49.5% in summary (+50.0%); new lens(es) that "
        "cost money (an increase from nothing): fresh ($0.0000200 per run); the total cost grew by more "
        "than 49.5% ($0.000410 -> $0.000620, +51.2%)"
    )

    with pytest.raises(SystemExit) as excinfo:
        cli_main(["diff", *reports, "--fail-on-increase", "ten"])
    assert excinfo.value.code == 2
    assert (
        "argument --fail-on-increase: 'ten' is not a number (a percentage, e.g. 20)"
        in capsys.readouterr().err
    )
    for bad in ("-5", "nan", "inf"):  # a threshold no increase can be measured against
        with pytest.raises(SystemExit) as excinfo:
            cli_main(["diff", *reports, f"--fail-on-increase={bad}"])
        assert excinfo.value.code == 2
        assert (
            f"argument --fail-on-increase: {bad!r} must be a percentage of 0 or more, e.g. 20"
            in capsys.readouterr().err
        )


FAILING_TESTS = """
def test_ok():
    pass


def test_broken():
    assert False
"""


def test_report_names_failed_tests(pytester: pytest.Pytester) -> None:
    """--llm-report lists the failed tests, so a diff of that report can say its numbers are partial."""
    write_project(pytester, FAILING_TESTS)
    run(pytester, "--llm-report=r.json").assert_outcomes(passed=1, failed=1)
    data = json.loads((pytester.path / "r.json").read_text())
    assert data["failed_tests"] == ["tests/test_app.py::test_broken"]


def test_session_totals_sum_costs_exactly_in_dollars() -> None:
    """A session of many calls each costing a fraction of a pico-dollar totals what they cost, and the
    order records arrive in (xdist) changes nothing: costs are summed as exact decimals."""
    from pytest_llm_ledger._report import SessionLedger, Totals

    def call(cost: float) -> dict[str, Any]:
        return {"status": "ok", "usage": {"total_tokens": 1}, "cost": {"total_cost_usd": cost}}

    costs = [1e-13] * 30 + [0.1, 0.2]
    forward, backward = Totals(), Totals()
    for cost in costs:
        forward.add(Totals.of_call(call(cost)))
    for cost in reversed(costs):
        backward.add(Totals.of_call(call(cost)))
    assert forward.cost_usd == backward.cost_usd == 0.300000000003
    worker, controller = SessionLedger(), SessionLedger()  # an xdist worker sends its totals
    worker.tests["tests/test_x.py::test_x"] = forward
    controller.merge_wire(worker.to_wire())
    assert controller.total().cost_usd == 0.300000000003


def test_a_report_that_cannot_be_written_fails_the_run_with_the_reason(recorded: pytest.Pytester) -> None:
    """A report path in a directory no file can be made in (/proc here; a read-only checkout, a full
    disk in CI) fails the run with the path and the reason after the usual totals, not a traceback
    in place of the summary."""
    result = run(recorded, "--llm-report=/proc/llm-report.json")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: per-lens totals*",
            "*",
            "llm-ledger: could not write the report /proc/llm-report.json: No such file or directory; "
            "give --llm-report a path in a writable directory",
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "report written" not in output


PRICED_APART = """
import os

import openai
import pytest

import llm_ledger as ledger

HI = [{"role": "user", "content": "summarise the quarterly numbers for the board please"}]


@pytest.mark.llm
def test_priced_apart():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with ledger.lens("answers"):
        client.chat.completions.create(model="gpt-5-mini", messages=HI)
        client.chat.completions.create(model="gpt-5-mini", messages=HI, service_tier="flex")
        client.chat.completions.create(
            model="gpt-audio",
            messages=HI,
            extra_headers={"x-fake-prompt-audio-tokens": "9", "x-fake-completion-audio-tokens": "12"},
        )
        client.chat.completions.create(
            model="gpt-6-sol", messages=HI, extra_headers={"x-fake-cache-write-tokens": "8"}
        )
"""


@pytest.mark.usefixtures("server", "with_key")
def test_a_report_reprices_to_its_live_cost_across_tiers_audio_and_cache_writes(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recorded session's report keeps each call's service tier, audio and cache-write tokens (a flex
    call is not summed into a standard one), so repricing it with nothing changed gives its live cost;
    so does the same session replayed offline."""
    write_project(pytester, PRICED_APART)
    for args in (["--llm-record-mode=once", "--llm-report=recorded.json"], ["--llm-report=replayed.json"]):
        run(pytester, *args).assert_outcomes(passed=1)
    for name in ("recorded.json", "replayed.json"):
        data = json.loads((pytester.path / name).read_text())
        rows = {(row["model"], row["service_tier"]): row for row in data["usage"]}
        assert set(rows) == {
            ("gpt-5-mini", "default"),
            ("gpt-5-mini", "flex"),
            ("gpt-audio", "default"),
            ("gpt-6-sol", "default"),
        }
        audio, written = rows["gpt-audio", "default"], rows["gpt-6-sol", "default"]
        assert (audio["prompt_audio_tokens"], audio["completion_audio_tokens"]) == (9, 12)
        assert written["cache_write_tokens"] == 8
        # the order a row's fields are written in: a report regenerated by a newer version diffs clean
        assert list(audio) == [
            "lens", "provider", "server", "model", "served_model", "cost_source", "service_tier", "at",
            "calls", "prompt_tokens", "cached_tokens", "cache_write_tokens", "prompt_audio_tokens",
            "completion_tokens", "completion_audio_tokens", "cached_audio_tokens", "prompt_image_tokens",
            "cached_image_tokens", "total_tokens", "uncosted_calls", "no_usage_calls", "unpriced_unit_calls",
            "total_only_calls", "failed_calls", "tool_fee_calls", "pending_calls", "lost_answer_calls",
            "tool_uses", "tests_with_failed_calls", "cost_usd",
        ]  # fmt: skip
        assert all(row["at"] is None for row in rows.values())  # prices the time of day does not change
        capsys.readouterr()  # the inner sessions' output
        assert cli_main(["reprice", str(pytester.path / name), "--format", "json"]) == 0
        total = json.loads(capsys.readouterr().out)["total"]
        assert total["calls"] == 4
        assert total["before_usd"] == data["total"]["cost_usd"] > 0
        assert (total["after_usd"], total["change_usd"]) == (total["before_usd"], 0)


def test_a_report_regenerated_from_the_same_cassettes_is_byte_identical(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reviewers diff reports: replaying unchanged cassettes against a local server on another port, at
    another minute, writes the same bytes. A usage row names a loopback server's host without its
    passing port, and keeps when its calls started only where their price depends on the time."""
    run(recorded, "--llm-report=first.json").assert_outcomes(passed=3)
    monkeypatch.setenv("LEDGER_TEST_BASE_URL", "http://127.0.0.1:54321/v1")  # another passing port
    run(recorded, "--llm-report=second.json").assert_outcomes(passed=3)

    first = (recorded.path / "first.json").read_bytes()
    assert first == (recorded.path / "second.json").read_bytes()
    rows = json.loads(first)["usage"]
    assert {(row["lens"], row["server"], row["model"], row["at"]) for row in rows} == {
        ("digest", "127.0.0.1", "gpt-4o-mini", None),
        ("summary", "127.0.0.1", "gpt-4o-mini", None),
    }


DEEPSEEK_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

# the application's own price table: its local gateway forwards to DeepSeek, priced by time of day
MONITOR = ledger.LLMCallMonitor(
    logger=None, prices=ledger.PriceTable(hosts={"127.0.0.1": ledger.HostPrice("deepseek")})
)


@pytest.mark.llm
def test_off_peak():
    client = MONITOR.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, MONITOR.lens("nightly"):
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "Hi"}])
"""


@pytest.mark.usefixtures("server", "with_key")
def test_a_row_priced_by_time_of_day_keeps_its_minute_and_reprices_to_its_live_cost(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call whose price depends on the time of day (DeepSeek's off-peak discount) keeps the minute it
    started in its usage row, so repricing the report gives its live cost whenever it is repriced."""
    write_project(pytester, DEEPSEEK_TESTS)
    run(pytester, "--llm-record-mode=once", "--llm-report=report.json").assert_outcomes(passed=1)

    data = json.loads((pytester.path / "report.json").read_text())
    [row] = data["usage"]
    assert (row["model"], row["provider"], row["server"]) == ("deepseek-chat", "deepseek", "127.0.0.1")
    assert row["at"].endswith(":00+00:00")
    capsys.readouterr()  # the inner session's output
    assert cli_main(["reprice", str(pytester.path / "report.json"), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["before_usd"] == data["total"]["cost_usd"] > 0
    assert (total["after_usd"], total["change_usd"]) == (total["before_usd"], 0)
