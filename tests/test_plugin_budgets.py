"""budgets.yaml as users meet it: enforced with --llm-budget, clear errors, a breach table."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_ledger  # noqa: F401
from llm_ledger import BudgetError, Limits, parse_budgets
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger._report import SessionLedger, Totals, notices
from tests.plugin_helpers import (
    FAST_ARGS,
    INI,
    LEAK_A_STREAM,
    PLUGIN_ARGS,
    cli,
    notice_fails_strict,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)
from tests.report_helpers import call, lens_run

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (recorded_fixture, server_fixture, with_key_fixture)  # used by name

REPO = Path(__file__).resolve().parent.parent


def budgets(pytester: pytest.Pytester, text: str, name: str = "budgets.yaml") -> None:
    pytester.path.joinpath(name).write_text(textwrap.dedent(text))


def test_budgets_met_pass(recorded: pytest.Pytester) -> None:
    """A session within every limit passes and says so."""
    budgets(
        recorded, "lenses:\n  summary: {max_api_calls: 1, max_cost_usd: 0.01}\ntotal: {max_api_calls: 3}\n"
    )

    result = run(recorded, "--llm-budget")

    assert result.ret == 0
    result.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml was met"])


def test_budgets_met_by_a_run_whose_calls_failed_say_those_count_nothing(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that missed its cassette got no answer and counts no tokens or cost: the line saying the
    budgets were met says so, so a run that failed for it is not read as within budget."""
    budgets(recorded, "total: {max_api_calls: 3}\n")
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise the annual report")

    result = run(recorded, "--llm-budget", "-k", "test_chat")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: every budget in budgets.yaml was met (1 call(s) failed: one that got no answer "
            "counts no tokens or cost)"
        ]
    )


def test_a_budget_for_a_test_that_did_not_run_is_named(recorded: pytest.Pytester) -> None:
    """A test budget whose node id never ran (a typo, or a subset run) is listed as not checked."""
    budgets(recorded, 'tests:\n  "tests/test_app.py::test_typo": {max_api_calls: 1}\n')

    result = run(recorded, "--llm-budget")

    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["llm-ledger: no run of 1 test(s) with a budget, not checked: tests/test_app.py::test_typo"]
    )


def test_breach_fails_a_green_run_with_a_table(recorded: pytest.Pytester) -> None:
    """Exceeded limits make pytest exit 1 although every test passed, and the table names the worst run."""
    budgets(
        recorded,
        """
        lenses:
          summary: {max_total_tokens: 5}
        default: {max_api_calls: 0}
        tests:
          "tests/test_app.py::test_stream": {max_completion_tokens: 1}
        total: {max_cost_usd: 0.0000001}
        """,
    )

    result = run(recorded, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: 4 budget limit(s) exceeded*",
            "lens / test / total *limit *max *actual *worst run (test id)",
            "lens digest *max_api_calls *0 *1 *tests/test_app.py::test_stream",
            "lens summary *max_total_tokens *5 *2? *tests/test_app.py::test_* (+1 more runs)",
            "test tests/test_app.py::test_stream *max_completion_tokens *1 *10 *test_app.py::test_stream",
            "total *max_cost_usd *$0.000000100 *$0.0000* *tests/test_app.py::test_*",
            "limits from budgets.yaml: "
            "bring each back within its limit, or raise the limit there if the increase is intended",
        ]
    )


def test_without_the_flag_budgets_never_fail(recorded: pytest.Pytester) -> None:
    """Without --llm-budget the totals are summarised but a breach does not fail the run."""
    budgets(recorded, "total: {max_api_calls: 0}\n")

    result = run(recorded)

    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: record mode 'none', cassettes cassettes, budgets budgets.yaml not enforced (add *)",
            "*llm-ledger: per-lens totals*",
            "lens *runs *calls *prompt *completion *tokens *cost",
            "digest *1 *1 *12 *10 *22 *$0.0000*",
            "summary *2 *2 *",
            "(session total) *3 *",
        ]
    )
    assert "exceeded" not in result.stdout.str()


def test_the_header_says_when_there_is_no_budgets_file(recorded: pytest.Pytester) -> None:
    """A project with no budgets.yaml is not told to add --llm-budget to enforce a file it lacks (which
    would then fail the run, not found): the header says the file is not there."""
    result = run(recorded)

    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["llm-ledger: record mode 'none', cassettes cassettes, budgets budgets.yaml not found (create it, "
         "then add --llm-budget)"]
    )  # fmt: skip


ABANDONED_STREAM = (
    LEAK_A_STREAM
    + """

@pytest.mark.llm
def test_abandoned():
    leak_a_stream("abandoned")
    gc.disable()  # no collection happens to run before the session ends
"""
)


@pytest.mark.usefixtures("with_key")
def test_a_lens_left_open_by_an_abandoned_stream_is_checked_and_reported(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A stream left unread ends (and its lens with it) only when garbage-collected: the session
    collects before checking budgets and writing the report, so that lens is neither passed
    unchecked nor missing from the report."""
    write_project(pytester, ABANDONED_STREAM)
    pytester.makeconftest("import gc\n\ndef pytest_unconfigure(config):\n    gc.enable()\n")
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(pytester, "lenses:\n  abandoned: {max_api_calls: 0}\n")

    result = run(pytester, "--llm-budget", "--llm-report=report.json")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["lens abandoned *max_api_calls *0 *1 *"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert (report["lenses"]["abandoned"]["api_calls"], report["total"]["api_calls"]) == (1, 1)


LEAKED_STREAM = (
    LEAK_A_STREAM
    + """

@pytest.mark.llm
def test_leaks():
    leak_a_stream("leaky")
    gc.disable()  # it stays open until the next test collects


def test_collects(llm_ledger):
    gc.collect()  # the collector happens to run here, and ends the stream of test_leaks
    gc.enable()
    assert llm_ledger.calls == []
"""
)


@pytest.mark.usefixtures("with_key")
def test_a_stream_a_test_leaks_counts_in_that_test_not_where_it_is_collected(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A stream left open by one test and garbage-collected while a later test runs counts in the test
    that started it (its budget, its lens run, the report), not in the test the collector ran in: a
    test that makes no call never breaches a budget for another test's leak."""
    write_project(pytester, LEAKED_STREAM)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(
        pytester,
        """
        tests:
          "tests/test_app.py::test_leaks": {max_api_calls: 1}
          "tests/test_app.py::test_collects": {max_api_calls: 0}
        """,
    )

    result = run(pytester, "--llm-budget", "--llm-report=report.json")

    result.assert_outcomes(passed=2)
    assert result.ret == 0, result.stdout.str()
    report = json.loads((pytester.path / "report.json").read_text())
    tests = {nodeid.split("::")[1]: test for nodeid, test in report["tests"].items()}
    assert {name: (test["api_calls"], test["lens_runs"]) for name, test in tests.items()} == {
        "test_leaks": (1, 1),
        "test_collects": (0, 0),
    }


BAD_BUDGETS = {
    "unknown key": ("lenses:\n  summary:\n    max_cost: 1\n",
                    "budgets.yaml:3: lenses.summary.max_cost: unknown key (did you mean 'max_cost_usd'?); "
                    "valid keys: max_api_calls, max_completion_tokens, max_cost_usd, *"),
    "wrong type": ("total:\n  max_api_calls: many\n", "budgets.yaml:2: total.max_api_calls: "
                   "expected a non-negative whole number, got 'many'"),
    "fraction": ("total:\n  max_api_calls: 2.5\n", "budgets.yaml:2: total.max_api_calls: "
                 "expected a non-negative whole number, got 2.5"),
    "negative": ("default: {max_cost_usd: -0.5}\n", "budgets.yaml:1: default.max_cost_usd: "
                 "expected a non-negative number of USD, got -0.5"),
    "too big": ("default: {max_cost_usd: 1e400}\n", "budgets.yaml:1: default.max_cost_usd: "
                "expected a non-negative number of USD (at most 1000000000), got '1e400'"),
    "unknown section": ("limits: {}\n", "budgets.yaml:1: limits: unknown key; "
                        "valid keys: default, lenses, tests, total"),
    "not yaml": ("total: {max_api_calls: 1\n", "budgets.yaml:2: invalid YAML: *"),
    "not a mapping": ("- total\n", "budgets.yaml:1: expected a mapping of sections, got a list"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_BUDGETS.values(), ids=BAD_BUDGETS.keys())
def test_malformed_budgets_are_a_usage_error(pytester: pytest.Pytester, text: str, message: str) -> None:
    """Each kind of bad budgets file stops the run with the file, line, key path and valid keys."""
    write_project(pytester)
    budgets(pytester, text)

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*llm-ledger: {message}"])


def test_missing_budgets_file_with_the_flag_is_an_error(pytester: pytest.Pytester) -> None:
    """--llm-budget without a budgets file is an error, not a silent pass."""
    write_project(pytester)

    result = run(pytester, "--llm-budget", "--llm-budget-file=ci/limits.yaml")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ci/limits.yaml: budgets file not found; create it*"])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "budgets.yaml:1: default.max_cost_usd: expected a non-negative number of USD, got -0.5"),
        (["--llm-budget-file=ci/limits.yaml"], "ci/limits.yaml: budgets file not found; create it*"),
    ],
)
def test_a_bad_budgets_file_is_a_usage_error_without_the_flag_too(
    pytester: pytest.Pytester, given: list[str], message: str
) -> None:
    """A run that does not enforce the budgets still checks them, to say what enforcing would fail: a
    file with an error, or one named by --llm-budget-file that is not there, was passed over in silence,
    and the run said nothing of budgets it could not read. Each is the usage error --llm-budget gives."""
    write_project(pytester)
    budgets(pytester, "default: {max_cost_usd: -0.5}\n")

    result = run(pytester, *given)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*llm-ledger: {message}"])


def test_a_budgets_file_that_is_not_one_is_never_printed(pytester: pytest.Pytester) -> None:
    """--llm-budget-file at a password file: a usage error that does not quote the file's lines."""
    write_project(pytester)
    budgets(pytester, "root:$6$saltsalt$hashhashhash:19700:0:99999:7:::\n", "shadow")

    result = run(pytester, "--llm-budget", "--llm-budget-file=shadow")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*llm-ledger: shadow:1: <a key of 47 characters>: unknown key; valid keys: default, *"]
    )
    assert "$6$" not in result.stderr.str() and "root" not in result.stderr.str()


def test_budget_file_from_ini(recorded: pytest.Pytester) -> None:
    """ini llm_budget_file points at the budgets, relative to the ini file."""
    recorded.makefile(".ini", pytest=INI + "llm_budget_file = ci/budgets.yaml\n")
    recorded.path.joinpath("ci").mkdir()
    budgets(recorded, "total: {max_api_calls: 1}\n", "ci/budgets.yaml")

    result = run(recorded, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "total *max_api_calls *1 *3 *",
            "limits from ci/budgets.yaml: "
            "bring each back within its limit, or raise the limit there if the increase is intended",
        ]
    )


FAKE_LLM_COST = """
def pytest_addoption(parser):
    parser.addoption("--llm-budget", type=float, default=None, dest="llm_cost_budget", help="USD")
"""


@pytest.mark.parametrize("first", [True, False], ids=["other-plugin-first", "llm-ledger-first"])
def test_a_plugin_owning_llm_budget_gets_a_clear_message(recorded: pytest.Pytester, first: bool) -> None:
    """When another plugin owns --llm-budget the header says so and --llm-ledger-budget still works."""
    budgets(recorded, "total: {max_api_calls: 0}\n")
    recorded.makepyfile(fake_llm_cost=FAKE_LLM_COST)  # stands in for pytest-llm-cost
    recorded.syspathinsert()
    other = ["-p", "fake_llm_cost"]
    order = [*other, *PLUGIN_ARGS] if first else [*PLUGIN_ARGS, *other]

    result = recorded.runpytest(*order, *FAST_ARGS, "--llm-budget", "0.5", "--llm-ledger-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: --llm-budget is defined by another plugin, so it is not llm-ledger's switch here; "
            "use --llm-ledger-budget to enforce the budgets file",
            "total *max_api_calls *0 *3 *",
        ]
    )


def test_parse_budgets_outside_pytest() -> None:
    """parse_budgets is a plain function: limits per lens, the default, tests and the total."""
    parsed = parse_budgets(
        "lenses: {s: {max_cost_usd: 0.25, max_api_calls: 2}}\ndefault: {max_total_tokens: 1_000}\n"
        "tests: {'t.py::x': {max_prompt_tokens: 5}}\ntotal: {max_cost_usd: 1}\n",
        "b.yaml",
    )
    assert parsed.for_lens("s") == Limits(max_cost_usd=0.25, max_api_calls=2)
    assert parsed.for_lens("other") == Limits(max_total_tokens=1000)
    assert parsed.tests == {"t.py::x": Limits(max_prompt_tokens=5)}
    assert parsed.total == Limits(max_cost_usd=1)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["lenses", "default", "tests", "total", "max_cost_usd", "max_api_calls", "x"]) | st.text(max_size=5),
        inner, max_size=3),
    max_leaves=12,
).map(repr)))  # fmt: skip
def test_any_input_ends_in_budgets_or_a_clear_error(text: str | bytes) -> None:
    """Whatever the bytes, parse_budgets returns budgets or raises BudgetError naming the file."""
    error: BudgetError | None = None
    try:
        parse_budgets(text, "fuzz.yaml")
    except BudgetError as exc:
        error = exc
    assert error is None or str(error).startswith("fuzz.yaml")


UNKNOWN_COST_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def ask(model, **options):
    client = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(client) as c:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **options)


@pytest.mark.llm
def test_local():
    with ledger.lens("local"):
        ask("acme-local-7b")


@pytest.mark.llm
def test_quiet():
    with ledger.lens("quiet"):
        ask("gpt-4o-mini", extra_headers={"x-fake-fault": "no-usage"})
"""


@pytest.mark.usefixtures("with_key")
def test_a_cost_limit_that_cannot_be_evaluated_is_a_breach(pytester: pytest.Pytester, server: Any) -> None:
    """A model with no known price, or a call without usage, breaches max_cost_usd (never $0 that
    passes), naming the model and the fix; the totals' footnote names them too."""
    write_project(pytester, UNKNOWN_COST_TESTS)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(
        pytester,
        "lenses:\n  local: {max_cost_usd: 1}\n  quiet: {max_cost_usd: 1, max_api_calls: 1}\n"
        "total: {max_cost_usd: 1}\n",
    )

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: 3 budget limit(s) exceeded*",
            "lens local *max_cost_usd *$1.000000 *unknown *tests/test_app.py::test_local",
            "lens quiet *max_cost_usd *$1.000000 *unknown *tests/test_app.py::test_quiet",
            "total *max_cost_usd *$1.000000 *unknown *tests/test_app.py::test_*",
            "lens local: max_cost_usd cannot be checked: no known price for model 'acme-local-7b' (1 call); "
            "add the model to a price file (USD per 1M tokens) and point LLM_LEDGER_PRICE_FILE at it*",
            "lens quiet: max_cost_usd cannot be checked: no usage reported by calls to 'gpt-4o-mini' "
            "(1 call); re-record it with usage*",
            "total: max_cost_usd cannot be checked: no known price for model 'acme-local-7b' (1 call); "
            "no usage reported by calls to 'gpt-4o-mini' (1 call); *",
        ]
    )
    assert "every budget" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        ["llm-ledger: calls with no known cost count as $0: no known price for model 'acme-local-7b'*"]
    )


RUNS_OF_AN_UNPRICED_LENS = """
import os

import openai
import pytest

import llm_ledger as ledger


def ask():
    client = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(client) as c:
        c.chat.completions.create(model="acme-local-7b", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.llm
def test_batch():
    with ledger.lens("batch"):
        for _ in range(2):
            with ledger.lens("local"):
                ask()
    ask()  # outside any lens
"""


@pytest.mark.usefixtures("with_key")
def test_a_cost_limit_that_cannot_be_checked_counts_the_calls_of_its_own_runs(
    pytester: pytest.Pytester, server: Any
) -> None:
    """The calls with no known cost a lens's breach names are those of its runs (a nested lens's
    included), not every such call its test had made when each run ended."""
    write_project(pytester, RUNS_OF_AN_UNPRICED_LENS)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(pytester, "lenses:\n  batch: {max_cost_usd: 1}\n  local: {max_cost_usd: 1}\n")

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    gaps = "max_cost_usd cannot be checked: no known price for model 'acme-local-7b' (2 calls); *"
    result.stdout.fnmatch_lines([f"lens batch: {gaps}", f"lens local: {gaps}"])


@pytest.mark.usefixtures("with_key")
def test_a_token_limit_over_calls_without_usage_is_a_breach(pytester: pytest.Pytester, server: Any) -> None:
    """A call that reported no usage has unknown tokens: a token limit over it is a breach with an
    unknown actual and the fix (never 0 tokens that pass); a call limit can still be checked."""
    write_project(pytester, UNKNOWN_COST_TESTS)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(
        pytester,
        "lenses:\n  quiet: {max_total_tokens: 1000, max_api_calls: 1}\n  local: {max_total_tokens: 1000}\n"
        'tests:\n  "tests/test_app.py::test_quiet": {max_completion_tokens: 1000}\n'
        "total: {max_prompt_tokens: 1000}\n",
    )

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: 3 budget limit(s) exceeded*",
            "lens quiet *max_total_tokens *1,000 *unknown *tests/test_app.py::test_quiet",
            "test tests/test_app.py::test_quiet *max_completion_tokens *1,000 *unknown *",
            "total *max_prompt_tokens *1,000 *unknown *tests/test_app.py::test_*",
            "lens quiet: max_total_tokens cannot be checked: no usage reported by calls to 'gpt-4o-mini' "
            "(1 call); re-record it with usage*",
        ]
    )
    assert "every budget" not in result.stdout.str()
    assert "lens local" not in result.stdout.str()  # its tokens are known; only its price is not


TOTAL_ONLY_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_split():
    client = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(client) as c, ledger.lens("split"):
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-usage-style": "total-only"},
        )
"""


@pytest.mark.usefixtures("with_key")
def test_calls_whose_usage_gave_only_a_total_are_named_so_not_as_reporting_no_usage(
    pytester: pytest.Pytester, server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call whose server gave only ``total_tokens`` did report usage: the session's line, a cost or
    prompt-token limit that cannot be checked and ``llm-ledger diff`` say only a total was reported, so
    no price applied (not "no usage reported", nor a fix about streams); a total-token limit is checked."""
    write_project(pytester, TOTAL_ONLY_TESTS)
    recorded = run(pytester, "--llm-record-mode=once", "--llm-report=report.json")
    assert recorded.ret == 0, recorded.stdout.str()
    said = (
        "only a total of tokens reported (no prompt and completion tokens, so no price applied) by calls "
        "to 'gpt-4o-mini' (1 call)"
    )
    recorded.stdout.fnmatch_lines(
        [f"llm-ledger: calls with no known cost count as $0: {said}; have the server*"]
    )
    assert "no usage reported" not in recorded.stdout.str()
    server.stop()
    budgets(
        pytester, "lenses:\n  split: {max_total_tokens: 1000, max_prompt_tokens: 1000, max_cost_usd: 1}\n"
    )

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: 2 budget limit(s) exceeded*",
            f"lens split: max_cost_usd cannot be checked: {said}; have the server*",
            f"lens split: max_prompt_tokens cannot be checked: {said}; have the server*",
        ]
    )
    assert "max_total_tokens cannot be checked" not in result.stdout.str()
    assert "no usage reported" not in result.stdout.str()
    diff = json.loads(cli(capsys, "diff", "report.json", "report.json", "--format", "json").stdout)
    assert diff["lenses"]["split"]["cost_gaps"] == dict.fromkeys(("base", "head"), said)


CLOSED_STREAM = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_first_words():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("preview"):
        with client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Preview it"}], stream=True
        ) as stream:
            next(iter(stream))  # the first words only: the usage chunk at the end is never read
"""


@pytest.mark.usefixtures("with_key")
def test_a_stream_closed_early_is_told_to_read_to_the_end(pytester: pytest.Pytester, server: Any) -> None:
    """A stream the code closes after its first chunk reports no usage however it is recorded: the
    breach of a cost limit over it says so, not only to re-record it with usage."""
    write_project(pytester, CLOSED_STREAM)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(pytester, "lenses:\n  preview: {max_cost_usd: 1}\n")

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "lens preview: max_cost_usd cannot be checked: no usage reported by calls to 'gpt-4o-mini' "
            "(1 call); *a stream closed before its end reports none: read it to the end*"
        ]
    )


WORST_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def ask(model, times):
    client = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(client) as c:
        for _ in range(times):
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.llm
def test_chatty():
    ask("gpt-4o-mini", 3)


@pytest.mark.llm
def test_costly():
    ask("gpt-4o", 1)
"""


@pytest.mark.usefixtures("with_key")
def test_a_session_total_breach_names_the_test_worst_on_that_limit(
    pytester: pytest.Pytester, server: Any
) -> None:
    """The total's "worst run" column points at the test that did most of what went over: the one
    with the most calls for max_api_calls, the costliest for max_cost_usd."""
    write_project(pytester, WORST_TESTS)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    budgets(pytester, "total: {max_api_calls: 1, max_cost_usd: 0.000001}\n")

    result = run(pytester, "--llm-budget")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "total *max_api_calls *1 *4 *tests/test_app.py::test_chatty",
            "total *max_cost_usd *$0.00000100 *tests/test_app.py::test_costly",
        ],
        consecutive=False,
    )


def test_the_report_of_a_run_failed_by_its_budget_has_the_exit_status_pytest_exits_with(
    recorded: pytest.Pytester,
) -> None:
    """--llm-report's exit_status is the status the run ends with: a breach fails a green run, and
    the report says so, not 0."""
    budgets(recorded, "total: {max_api_calls: 1}\n")

    result = run(recorded, "--llm-budget", "--llm-report=head.json")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert json.loads((recorded.path / "head.json").read_text())["exit_status"] == result.ret


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_the_total_worst_test_is_the_same_whichever_worker_reports_first(order: tuple[str, str]) -> None:
    """Under xdist the controller merges the workers' totals in the order they finish: tests that tie
    on the breached limit (the parametrizations of one test) name the same worst test in every run,
    serial or -n 2, as the lens and test scopes do."""
    controller = SessionLedger()
    for param in order:  # one worker each
        worker = SessionLedger()
        worker.tests[f"tests/test_app.py::test_x[{param}]"] = Totals(api_calls=1)
        controller.merge_wire(worker.to_wire())

    (breach,) = controller.check(parse_budgets("total: {max_api_calls: 1}"))

    assert breach.worst_test == "tests/test_app.py::test_x[a]"


def test_a_misspelt_lens_key_is_named(recorded: pytest.Pytester) -> None:
    """A lens budget whose key never ran is a notice with the closest key that did run; when no limit
    applied at all, the run does not say every budget was met (it said so of none)."""
    budgets(recorded, "lenses:\n  summry: {max_api_calls: 1}\n")

    result = run(recorded, "--llm-budget")

    assert result.ret == 0
    assert "was met" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: no limit in budgets.yaml applied to this run (no lens, test or total it limits "
            "ran), so --llm-budget checked nothing",
            "llm-ledger: no run of 1 lens(es) with a budget, not checked: 'summry' (did you mean "
            "'summary'?); lens keys that ran: digest, summary",
        ]
    )


# a plugin that splits a suite into shards (pytest-split, pytest-shard) deselects the other shards' tests
SHARD = """
def pytest_collection_modifyitems(config, items):
    other = [item for item in items if item.name != "test_chat"]
    items[:] = [item for item in items if item.name == "test_chat"]
    config.hook.pytest_deselected(items=other)
"""


@pytest.mark.parametrize("selection", ["node id", "-k", "shard", "shard under xdist"])
def test_a_strict_run_of_some_tests_is_not_failed_by_the_budgets_of_the_others(
    recorded: pytest.Pytester, selection: str
) -> None:
    """A run of some tests (a node id, -k, a CI shard) cannot run every lens budgets.yaml limits: the
    budgets of the lenses and tests it did not select are no notice, so ``--llm-strict`` (ini, as CI.md
    advises) does not fail a green run for them. A whole-suite run still names a budget that never ran."""
    budgets(
        recorded,
        "lenses:\n  summary: {max_api_calls: 1}\n  digest: {max_api_calls: 1}\n"
        'tests:\n  "tests/test_app.py::test_stream": {max_api_calls: 1}\n',
    )
    args = {
        "node id": ["tests/test_app.py::test_chat"],
        "-k": ["-k", "test_chat"],
        "shard under xdist": ["-n", "2"],
    }
    if selection.startswith("shard"):
        recorded.makeconftest(SHARD)

    result = run(recorded, "--llm-budget", "--llm-strict", *args.get(selection, []))

    result.assert_outcomes(passed=1, deselected=2 * (selection in ("-k", "shard")))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "no run of" not in result.stdout.str()
    result.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml that could be checked was met"])


STRICT = {
    "flag": ("", ["--llm-budget", "--llm-strict"]),
    "ini": ("llm_budget = true\nllm_strict = true\n", []),
}


@pytest.mark.parametrize(("ini", "args"), STRICT.values(), ids=STRICT.keys())
def test_strict_mode_fails_the_run_on_any_notice(
    recorded: pytest.Pytester, ini: str, args: list[str]
) -> None:
    """--llm-strict (or ini llm_strict) turns notices into a failed run; ini llm_budget enforces
    budgets.yaml without --llm-budget."""
    recorded.makefile(".ini", pytest=INI + ini)
    budgets(recorded, 'lenses:\n  summry: {max_api_calls: 1}\ntests:\n  "tests/test_app.py::gone": {}\n')

    result = run(recorded, *args)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: record mode 'none', cassettes cassettes, budgets budgets.yaml enforced, strict",
            "*",
            "llm-ledger: no run of 1 test(s) with a budget, not checked: tests/test_app.py::gone",
            "llm-ledger: no run of 1 lens(es) with a budget, not checked: 'summry'*",
            "llm-ledger: 2 lens(es) ran with no budget in budgets.yaml *",
            "  digest: {*",
            "  summary: {*",
            "llm-ledger: strict mode (--llm-strict / ini llm_strict): 3 notice(s) above fail the run",
        ]
    )


@pytest.mark.parametrize("text", ["# limits to come\n", "lenses: {}\n", "lenses:\n  summary: {}\n"])
def test_a_budgets_file_with_no_limit_is_a_notice_not_a_pass(recorded: pytest.Pytester, text: str) -> None:
    """--llm-budget over a file that sets no limit checks nothing: the run says so (a failure under
    --llm-strict) and never prints that every budget was met."""
    budgets(recorded, text)

    lenient, strict = notice_fails_strict(
        recorded,
        "--llm-budget",
        notice=[
            "llm-ledger: budgets.yaml sets no limit, so --llm-budget checked nothing; add limits "
            "(max_api_calls, max_completion_tokens, max_cost_usd, max_prompt_tokens, max_total_tokens) "
            "under its sections: default, lenses, tests, total"
        ],
    )

    assert "every budget" not in strict.stdout.str() + lenient.stdout.str()


def test_budgets_enforced_from_ini_alone(recorded: pytest.Pytester) -> None:
    """ini llm_budget = true enforces the budgets file with no flag on the command line."""
    recorded.makefile(".ini", pytest=INI + "llm_budget = true\n")
    budgets(recorded, "total: {max_api_calls: 0}\n")

    result = run(recorded)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["total *max_api_calls *0 *3 *"])


def test_true_and_false_in_pyproject_toml_are_toml_booleans(recorded: pytest.Pytester) -> None:
    """In pyproject.toml the switches are written as TOML booleans (`llm_budget = true`), also in pytest
    9's own [tool.pytest] table (from pytest 9.2), which types its values: they are read, not refused
    as "expects a string"."""
    table = "tool.pytest" if pytest.version_tuple >= (9, 2) else "tool.pytest.ini_options"
    (recorded.path / "pytest.ini").unlink()
    recorded.makepyprojecttoml(
        f'[{table}]\nasyncio_mode = "strict"\nasyncio_default_fixture_loop_scope = "function"\n'
        'filterwarnings = ["error"]\nllm_budget = true\nllm_strict = false\nllm_block_network = false\n'
        "llm_match_host = false\n"
    )
    budgets(recorded, "total: {max_api_calls: 0}\n")

    result = run(recorded)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*budgets budgets.yaml enforced*", "total *max_api_calls *0 *3 *"])


@pytest.mark.parametrize("value", ["maybe", ""])
@pytest.mark.parametrize("key", ["llm_strict", "llm_budget", "llm_block_network", "llm_match_host"])
def test_a_bad_boolean_in_the_ini_is_a_usage_error(pytester: pytest.Pytester, key: str, value: str) -> None:
    """llm_strict = maybe (or any boolean setting) is one usage error before any test runs, naming
    the key, the value, the ini file and the valid values; so is an empty one (llm_budget = left
    blank read as false: the budgets went unenforced without a word)."""
    write_project(pytester)
    pytester.makefile(".ini", pytest=INI + f"{key} = {value}\n")

    result = run(pytester)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{key} = {value!r} in *pytest.ini is not a boolean; use true or false"])


def test_a_lens_with_no_budget_is_named_with_the_yaml_to_add(recorded: pytest.Pytester) -> None:
    """A lens that ran with no entry in budgets.yaml and no default was checked against nothing: the run
    names it with the YAML to add (its largest run's figures), --llm-strict fails on it, and the YAML
    shown, added under lenses, makes the same strict run pass."""
    budgets(recorded, "lenses:\n  summary: {max_api_calls: 1}\n")

    _, strict = notice_fails_strict(
        recorded,
        "--llm-budget",
        notice=[
            "llm-ledger: 1 lens(es) ran with no budget in budgets.yaml (no entry under lenses, no "
            "default), so --llm-budget checked nothing for them: digest; add under lenses (their "
            "largest run's figures, raise them for headroom):",
            "  digest: {max_api_calls: 1, max_total_tokens: *, max_cost_usd: 0.0*}",
        ],
    )

    strict.assert_outcomes(passed=3)
    shown = next(line for line in strict.outlines if line.startswith("  digest: {"))
    budgets(recorded, f"lenses:\n  summary: {{max_api_calls: 1}}\n{shown}\n")

    assert run(recorded, "--llm-budget", "--llm-strict").ret == pytest.ExitCode.OK


def test_the_yaml_shown_for_an_unbudgeted_lens_reads_back_as_that_lens_whatever_its_key() -> None:
    """The lines shown under "add under lenses" are pasted into budgets.yaml: a key YAML reads as
    something else unquoted (`yes`, `on`, `null` read as true and none, refused by the loader) is
    quoted, so each line budgets the lens it names."""
    keys = ["summary", "yes", "On", "null", "off", "a: b", "#tag", "tags|v2 `x`", "1e3"]
    ledger = SessionLedger()
    for key in keys:
        calls = [call(lens=key)]
        ledger.add_call("tests/test_x.py::test_x", calls[0])
        ledger.add_lens("tests/test_x.py::test_x", lens_run(calls))

    shown, _ = notices(ledger, parse_budgets("total: {max_api_calls: 100}", source="budgets.yaml"))

    lines = [line for line in shown[-1].splitlines() if line.startswith("  ")]
    assert set(parse_budgets("lenses:\n" + "\n".join(lines), source="budgets.yaml").lenses) == set(keys)


def test_a_default_budget_covers_every_lens(recorded: pytest.Pytester) -> None:
    """With a default, no lens is unbudgeted; a lens listed with no limit ({}) is deliberately unlimited."""
    budgets(recorded, "lenses:\n  summary: {}\ndefault: {max_api_calls: 1}\n")

    result = run(recorded, "--llm-budget", "--llm-strict")

    assert result.ret == pytest.ExitCode.OK
    assert "no budget" not in result.stdout.str()
    result.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml was met"])


def _ci_commands() -> dict[str, list[str]]:
    """The pytest options of the CI commands the docs give: the README's and the Actions recipe's."""
    readme = (REPO / "README.md").read_text()
    recipe = (REPO / "docs" / "CI.md").read_text()
    found = {
        "README": re.search(r"^pytest (--llm-budget[^#\n]*)# in CI", readme, re.M),
        "recipe": re.search(r"^ +python -m pytest (--llm-budget.*)$", recipe, re.M),
    }
    return {
        name: [a for a in shlex.split(m[1]) if not a.startswith("--llm-report")]
        for name, m in found.items()
        if m
    }


@pytest.mark.parametrize("where", ["README", "recipe"])
def test_the_ci_command_the_docs_give_fails_closed_on_a_lens_with_no_budget(
    recorded: pytest.Pytester, where: str
) -> None:
    """The CI command of the README and of the GitHub Actions recipe, run as written, fails a run whose
    lenses have no budget (a lens a pull request adds) and whose budgets.yaml misspells a lens key,
    although every test passes and no limit is exceeded."""
    args = _ci_commands()[where]
    budgets(recorded, "lenses:\n  summry: {max_api_calls: 1}\n")

    result = run(recorded, *args)

    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, args
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: no run of 1 lens(es) with a budget, not checked: 'summry' "
            "(did you mean 'summary'?)*",
            "llm-ledger: 2 lens(es) ran with no budget in budgets.yaml *",
        ]
    )


def test_a_run_without_the_budget_flag_says_which_limits_it_let_by(recorded: pytest.Pytester) -> None:
    """A run that does not enforce budgets.yaml (a CI that forgot --llm-budget) passes, but its end says
    which limits enforcing it would have failed, and how to enforce it; within them, nothing is said."""
    budgets(recorded, "lenses:\n  summary: {max_api_calls: 0}\ntotal: {max_api_calls: 1}\n")

    result = run(recorded)

    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: budgets.yaml is not enforced (add --llm-budget); enforced, this run would exceed 2 "
            "of its limit(s): lens summary max_api_calls, total max_api_calls"
        ]
    )
    budgets(recorded, "total: {max_api_calls: 3}\n")
    assert "not enforced (add" not in run(recorded).stdout.str().split("per-lens totals")[1]
