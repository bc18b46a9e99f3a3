"""A lens run whose ``lens_summary`` never came (the process was killed, the log was cut short, a lens
left open at the session's end) has a row of its own, made from its call records and marked cut
short: in ``llm-ledger report``, the plugin's per-lens table and ``--llm-report``, and ``llm-ledger
diff``; a lens with one such run among summarised ones counts that run's calls too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam

from llm_ledger import parse_budgets
from llm_ledger._cli import main
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger._report import SessionLedger, notices
from tests import warm_python
from tests.conftest import Sdk
from tests.plugin_helpers import (
    cli,
    notice_fails_strict,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)
from tests.report_helpers import call, lens_run, logging_to

pytestmark = pytest.mark.sdk_independent

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name
TEST = "tests/test_app.py::test_x"

# a lens whose second call, a stream, is still open when the session ends: its summary never comes
CUT_SHORT_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

from conftest import KEEP

HI = [{"role": "user", "content": "Hi"}]


def client():
    KEEP.append(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    return ledger.instrument(KEEP[-1])


def one_call_then_an_open_stream(lens_key):
    with ledger.lens(lens_key):
        chat = client().chat.completions
        chat.create(model="gpt-4o-mini", messages=HI)
        stream = chat.create(model="gpt-4o-mini", messages=HI, stream=True)
        next(iter(stream))
        KEEP.insert(0, stream)


@pytest.mark.llm
def test_summarised():
    with ledger.lens("partly"):
        client().chat.completions.create(model="gpt-4o-mini", messages=HI)


@pytest.mark.llm
def test_partly_cut_short():
    one_call_then_an_open_stream("partly")


@pytest.mark.llm
def test_cut_short():
    one_call_then_an_open_stream("cut")
"""

# the streams end once the session is over, after the report and the table; then their clients close
KEEP_CONFTEST = """
KEEP = []


def pytest_unconfigure(config):
    for stream_or_client in KEEP:
        stream_or_client.close()
"""


@pytest.mark.usefixtures("with_key")
def test_lens_runs_whose_summary_never_came_have_rows_in_the_table_the_report_and_the_diff(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The per-lens table, the --llm-report lenses and the diff show the lens with no summary and count
    the cut-short run of the partly summarised lens, each marked; the lenses add up to the total."""
    write_project(pytester, CUT_SHORT_TESTS)
    pytester.makeconftest(KEEP_CONFTEST)

    result = run(pytester, "--llm-record-mode=once", "--llm-report=head.json")

    assert result.ret == 0, result.stdout.str()
    data = json.loads((pytester.path / "head.json").read_text())
    lenses = data["lenses"]
    assert set(lenses) == {"partly", "cut"}
    assert (lenses["partly"]["runs"], lenses["partly"]["cut_short_runs"], lenses["partly"]["api_calls"]) == (
        2,
        1,
        2,
    )
    assert (lenses["cut"]["runs"], lenses["cut"]["cut_short_runs"], lenses["cut"]["api_calls"]) == (1, 1, 1)
    assert lenses["cut"]["tests"] == ["tests/test_app.py::test_cut_short"]
    assert data["total"]["api_calls"] == 3 == sum(entry["api_calls"] for entry in lenses.values())
    assert sum(entry["cost_usd"] for entry in lenses.values()) == pytest.approx(data["total"]["cost_usd"])
    result.stdout.re_match_lines([r"^cut +1 \(1 cut short\) +1 ", r"^partly +2 \(1 cut short\) +2 "])
    result.stdout.fnmatch_lines(["cut short: * lens_summary never came*"])

    diff = json.loads(cli(capsys, "diff", "missing.json", "head.json", "--format", "json").stdout)
    assert diff["lenses"]["cut"]["cut_short_runs"] == {"head": 1}
    assert diff["lenses"]["partly"]["cut_short_runs"] == {"head": 1}
    assert diff["lenses"]["cut"]["metrics"]["api_calls"]["head"] == 1
    markdown = cli(capsys, "diff", "missing.json", "head.json").stdout
    assert "| `cut` (new; `gpt-4o-mini`; cut short) |" in markdown
    assert "head: 1 of 1 runs cut short" in markdown


def test_an_xdist_worker_sends_its_open_runs_to_the_controller() -> None:
    """A worker's lens run still open at its session's end is in the controller's report, as it would be
    in a serial run's."""
    worker = SessionLedger()
    calls = [call(lens="partly", extra={"lens_run_id": run_id}) for run_id in ("run-1", "run-2")]
    for record in calls:
        worker.add_call(TEST, record)
    worker.add_lens(TEST, lens_run(calls[:1]))
    controller = SessionLedger()

    controller.merge_wire(json.loads(json.dumps(worker.to_wire())))

    assert controller.report()["lenses"] == worker.report()["lenses"]
    assert controller.report()["lenses"]["partly"]["cut_short_runs"] == 1


def test_a_log_cut_short_before_a_lens_summary_gives_its_lens_a_marked_row(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-ledger report` counts a run whose summary the log lost among its lens's runs, says how many
    were cut short in the row, the total and the JSON, and counts no call twice."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for lens in ("done", "partly", "partly", "cut"):
            with monitor.lens(lens):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
    lines = path.read_text().splitlines(keepends=True)
    summaries = [n for n, text in enumerate(lines) if '"lens_summary"' in text]
    path.write_text("".join(text for n, text in enumerate(lines) if n not in summaries[2:]))  # cut short

    assert main(["report", str(path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["key"]["lens"]: row for row in report["rows"]}
    got = {lens: (row["lens_runs"], row["cut_short_runs"], row["calls"]) for lens, row in rows.items()}
    assert got == {"done": (1, 0, 1), "partly": (2, 1, 2), "cut": (1, 1, 1)}
    assert (report["lens_runs"], report["total"]["cut_short_runs"], report["calls"]) == (4, 2, 4)

    assert main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert any(line.startswith("cut ") and " 1 (1 cut short) " in line for line in text.splitlines())
    assert "cut short: 2 lens runs whose lens_summary never came" in text


def test_a_run_whose_summary_was_rotated_into_the_newer_file_is_not_cut_short(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logrotate moved a run's calls to `llm_calls.jsonl.1` and its summary is in the live file, which
    a directory lists first: the summary read before the calls still counts the run as summarised."""
    live = tmp_path / "llm_calls.jsonl"
    with logging_to(live, sdk) as (monitor, client), monitor.lens("rotated"):
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    *calls, summary = live.read_text().splitlines(keepends=True)
    (tmp_path / "llm_calls.jsonl.1").write_text("".join(calls))
    live.write_text(summary)

    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["lens_runs"], row["cut_short_runs"], row["calls"]) == (1, 0, 2)


def test_a_run_that_logrotate_split_between_two_files_is_not_cut_short(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logrotate renamed the file in the middle of a run, nested runs included: its first calls are in
    `llm_calls.jsonl.1`, its last call and summary in the live file, read first. Each run counts once,
    summarised, not once more as cut short."""
    live = tmp_path / "llm_calls.jsonl"
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with logging_to(live, sdk) as (monitor, client):
        with monitor.lens("outer"):
            with monitor.lens("inner"):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
            for _ in range(3):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        with monitor.lens("flat"):
            for _ in range(3):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    lines = live.read_text().splitlines(keepends=True)
    # inner call, inner summary, 3 outer calls, outer summary, 3 flat calls, flat summary
    assert [json.loads(text)["event"] for text in lines[4:6]] == ["llm_api_call", "lens_summary"]
    rotated = lines[:4] + lines[6:8]  # the rename came before each run's last call
    (tmp_path / "llm_calls.jsonl.1").write_text("".join(rotated))
    live.write_text("".join(lines[4:6] + lines[8:]))

    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["key"]["lens"]: row for row in report["rows"]}
    got = {lens: (row["lens_runs"], row["cut_short_runs"], row["calls"]) for lens, row in rows.items()}
    assert got == {"outer": (1, 0, 3), "inner": (1, 0, 1), "flat": (1, 0, 3)}
    assert (report["lens_runs"], report["total"]["cut_short_runs"], report["calls"]) == (3, 0, 7)


@pytest.mark.usefixtures("with_key")
def test_a_cut_short_run_over_its_lens_limit_is_a_breach_said_to_be_a_lower_bound(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """`--llm-budget` checks a run whose summary never came on its ended calls: more than the limit
    already is a breach, whose line says the run was cut short, so its figures are at least those."""
    write_project(pytester, CUT_SHORT_TESTS)
    pytester.makeconftest(KEEP_CONFTEST)
    pytester.path.joinpath("budgets.yaml").write_text("lenses:\n  cut: {max_api_calls: 0}\n")

    result = run(pytester, "--llm-record-mode=once", "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.re_match_lines(
        [r"^lens cut +max_api_calls +0 +at least 1 +tests/test_app.py::test_cut_short \(cut short\)$"]
    )
    result.stdout.fnmatch_lines(["cut short: * lens_summary never came*so its figures are at least *"])


@pytest.mark.usefixtures("with_key")
def test_a_cut_short_run_within_its_lens_limits_is_a_notice_it_went_unchecked(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A run whose summary never came, within its limits on the calls that ended, was not checked: a
    notice names it, whether it is the lens's only run or one of several (--llm-strict fails); the run says
    every budget that could be checked was met, not every budget, and never that the lens did not run."""
    write_project(pytester, CUT_SHORT_TESTS)
    pytester.makeconftest(KEEP_CONFTEST)
    pytester.path.joinpath("budgets.yaml").write_text(
        "lenses:\n  cut: {max_api_calls: 1}\ndefault: {max_api_calls: 1}\n"
    )

    lenient, _ = notice_fails_strict(
        pytester,
        "--llm-record-mode=once",
        "--llm-budget",
        notice=[
            "llm-ledger: 2 lens run(s) with a budget were cut short (their lens_summary never came), so "
            "not checked: cut (tests/test_app.py::test_cut_short), partly "
            "(tests/test_app.py::test_partly_cut_short); *"
        ],
    )

    lenient.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml that could be checked was met"])
    assert "no run of" not in lenient.stdout.str()


def test_a_lens_with_no_budget_whose_every_run_was_cut_short_is_named() -> None:
    """With no default budget, a lens that ran only cut short is named as running with no budget, as a
    summarised one is: with --llm-strict it fails the run until it has limits."""
    ledger = SessionLedger()
    ledger.add_call(TEST, call(lens="cut", extra={"lens_run_id": "run-1"}))

    found, _ = notices(ledger, parse_budgets("lenses:\n  other: {max_api_calls: 1}\n"))

    assert any("ran with no budget" in notice and "\n  cut: {max_api_calls: 1," in notice for notice in found)


@pytest.mark.usefixtures("with_key")
def test_fail_on_increase_cannot_check_a_lens_with_runs_cut_short_on_either_side(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head whose lens runs were cut short counts only their ended calls, which can hide an increase
    (it reads as cheaper); a base cut short reads as cheaper, so the head reads as grown: either way
    --fail-on-increase fails closed with the lens as cannot be checked, saying which side and why."""
    write_project(pytester, CUT_SHORT_TESTS)
    pytester.makeconftest(KEEP_CONFTEST)
    assert run(pytester, "--llm-record-mode=rewrite", "--llm-report=cut.json").ret == 0
    write_project(pytester, CUT_SHORT_TESTS.replace("next(iter(stream))", "list(stream)"))
    assert run(pytester, "--llm-record-mode=rewrite", "--llm-report=whole.json").ret == 0

    for base, head, side in (("whole.json", "cut.json", "head"), ("cut.json", "whole.json", "base")):
        got = cli(capsys, "diff", base, head, "--fail-on-increase", "10", "--format", "json")
        increases = {i["lens"]: i for i in json.loads(got.stdout)["increases"] if i["scope"] == "lens"}
        assert got.returncode == 1
        assert {lens: i["reason"] for lens, i in increases.items()} == {
            "cut": "unchecked",
            "partly": "unchecked",
        }
        assert increases["cut"]["cost_gaps"] == (
            f"{side}: 1 of 1 runs cut short (their lens_summary never came), which count only their "
            "ended calls"
        )
        assert "partly (" + side + ": 1 of 2 runs cut short" in got.stderr
        # the total leaves out the calls those runs still had open: it cannot be checked either
        (total,) = [i for i in json.loads(got.stdout)["increases"] if i["scope"] == "total"]
        assert (total["reason"], total["cost_gaps"]) == (
            "unchecked",
            f"{side}: 2 lens run(s) cut short, whose calls still open count nowhere",
        )


# a child forked inside a lens makes its call once the parent's lens summary is written
FORKED_AFTER_THE_SUMMARY = """
import os, openai, llm_ledger
llm_ledger.configure(log_dir={log_dir!r})
client = llm_ledger.instrument(openai.OpenAI(api_key="sk-x", base_url={base_url!r}, max_retries=0))
hi = [{{"role": "user", "content": "hi"}}]
summarised, tell_child = os.pipe()
with llm_ledger.lens("forks"):
    client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    pid = os.fork()
    if pid == 0:
        os.read(summarised, 1)
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        llm_ledger.flush()
        os._exit(0)
llm_ledger.flush()  # the summary is in the file
os.write(tell_child, b"x")
os.waitpid(pid, 0)
"""


def test_a_childs_call_logged_after_its_parents_lens_summary_opens_no_cut_short_run(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process forked inside a lens (a worker pool) whose child calls after the parent's run ended:
    its call carries the run's context but counts in no run of the parent's, so `llm-ledger report`
    counts the call in the lens and the run as summarised, not as a second run cut short."""
    script = FORKED_AFTER_THE_SUMMARY.format(log_dir=str(tmp_path), base_url=fake_openai.base_url)
    warm_python.run([sys.executable, "-c", script], check=True, timeout=60)
    events = [json.loads(line)["event"] for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert events == ["llm_api_call", "lens_summary", "llm_api_call"]

    assert main(["report", str(tmp_path / "llm_calls.jsonl"), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["lens_runs"], row["cut_short_runs"], row["calls"]) == (1, 0, 2)


@pytest.mark.parametrize(
    ("budgets", "named"),
    [
        (f"tests:\n  '{TEST}': {{max_api_calls: 5}}\n", f"test {TEST}"),
        ("total: {max_api_calls: 5}\n", "the session total"),
    ],
)
def test_a_test_or_total_budget_over_a_run_cut_short_is_a_notice_it_went_unchecked(
    budgets: str, named: str
) -> None:
    """A test's or the session's figures leave out the calls its cut-short runs still had open: within
    the limits, they were not checked (--llm-strict fails); over them, the breach stands as it is."""
    ledger = SessionLedger()
    ledger.add_call(TEST, call(lens="cut", extra={"lens_run_id": "run-1"}))

    found, unchecked = notices(ledger, parse_budgets(budgets))

    assert unchecked
    assert [n for n in found if "cover lens runs cut short" in n] == [
        f"llm-ledger: 1 budget(s) cover lens runs cut short, so not checked: {named}; their figures are "
        "within the limits but leave out the calls still open: end each lens inside its test (read its "
        "streams to the end or close them, join its threads)"
    ]
    over = parse_budgets(budgets.replace("5", "0"))
    assert [b.limit_key for b in ledger.check(over)] == ["max_api_calls"]
    assert not [n for n in notices(ledger, over)[0] if "cover lens runs cut short" in n]
