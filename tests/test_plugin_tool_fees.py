"""Built-in tools billed per use in a marked test: the fixture, the terminal summary and the report
say the cost leaves their fees out, recording and replaying alike."""

from __future__ import annotations

import json

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import cli, run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

TOOL_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_research(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with raw, ledger.lens("research"):
        c = ledger.instrument(raw)
        c.responses.create(model="gpt-4.1", input="news?", tools=[{"type": "web_search"}])
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert llm_ledger.api_calls == 2
    assert llm_ledger.cost_usd == pytest.approx(sum(r["cost"]["total_cost_usd"] for r in llm_ledger.calls))
    assert llm_ledger.cost_usd > 0
    assert llm_ledger.cost_complete is False
    assert llm_ledger.lens("research")[0]["summary"]["cost_complete"] is False
"""


@pytest.mark.usefixtures("with_key")
def test_a_call_whose_tool_fees_are_left_out_makes_the_session_cost_incomplete(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """The test's totals and lens say incomplete, the summary names the model and why, and the
    report's row counts the call in ``tool_fee_calls``; the same again replayed offline."""
    write_project(pytester, TOOL_TESTS)
    for mode in ("--llm-record-mode=once", "--llm-record-mode=none"):
        result = run(pytester, mode, "--llm-report=report.json")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([
            "llm-ledger: calls with no known cost count as $0: no price for the built-in tools' fees "
            "(web search...) of calls to 'gpt-4.1' (1 call); give their fees in USD per use in the price "
            "file's tool_fees*"
        ])  # fmt: skip
        report = json.loads((pytester.path / "report.json").read_text())
        rows = {row["model"]: row for row in report["usage"]}
        assert (rows["gpt-4.1"]["tool_fee_calls"], rows["gpt-4o-mini"]["tool_fee_calls"]) == (1, 0)
        assert rows["gpt-4.1"]["uncosted_calls"] == 0 and rows["gpt-4.1"]["cost_usd"] > 0
        assert report["total"]["cost_complete"] is False
        server.stop()  # the replay runs offline


@pytest.mark.usefixtures("with_key")
def test_a_lens_cost_budget_blind_to_tool_fees_names_them(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A lens's ``max_cost_usd`` over a call whose tool fees are left out cannot be checked: the breach
    says it is the tools' fees, and their fix, not a missing price."""
    write_project(pytester, TOOL_TESTS)
    pytester.makefile(".yaml", budgets="lenses:\n  research:\n    max_cost_usd: 1.0\n")
    result = run(pytester, "--llm-record-mode=once", "--llm-budget")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*lens research: max_cost_usd cannot be checked: no price for the built-in tools' fees"
        " (web search...) of calls to 'gpt-4.1' (1 call)*"
    ])  # fmt: skip


PRICED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_research(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with raw, ledger.lens("research"):
        c = ledger.instrument(raw)
        thrice, web = {"x-fake-tool-uses": "3"}, [{"type": "web_search"}]
        c.responses.create(model="gpt-4.1", input="news?", tools=web, extra_headers=thrice)
    (call,) = llm_ledger.calls
    assert call["cost"]["tool_fees_usd"] == pytest.approx(0.09)
    assert llm_ledger.cost_complete is True
"""
# the application's start-up: configure() reads LLM_LEDGER_PRICE_FILE
CONFIGURE = "import llm_ledger\n\nllm_ledger.configure(log_dir=None)\n"


@pytest.mark.usefixtures("fresh_config", "with_key")  # the inner session configures this process's ledger
def test_a_price_file_with_tool_fees_lets_a_cost_budget_be_checked(
    pytester: pytest.Pytester,
    server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the fees in the session's price file, a tool-using lens's max_cost_usd is checked on the
    real total: three searches at $0.03 pass $0.10 and break $0.05, which the tokens alone stay under;
    recording and replaying alike. The report's row counts the uses, and repricing the report with other
    fees prices them."""
    write_project(pytester, PRICED_TESTS)
    pytester.makeconftest(CONFIGURE)
    pytester.path.joinpath("prices.yaml").write_text('version: 1\ntool_fees:\n  "*": {web_search: 0.03}\n')
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", "prices.yaml")
    budgets = pytester.path / "budgets.yaml"
    for mode in ("--llm-record-mode=once", "--llm-record-mode=none"):
        budgets.write_text("lenses:\n  research: {max_cost_usd: 0.10}\n")
        result = run(pytester, mode, "--llm-budget", "--llm-report=report.json")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml was met"])
        report = json.loads((pytester.path / "report.json").read_text())
        [row] = report["usage"]
        assert (row["tool_uses"], row["tool_fee_calls"]) == ({"web_search": 3}, 0)
        assert report["lenses"]["research"]["cost_complete"] is True
        tokens = row["cost_usd"] - 0.09
        assert 0 < tokens < 0.05
        budgets.write_text("lenses:\n  research: {max_cost_usd: 0.05}\n")
        result = run(pytester, mode, "--llm-budget")
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
        result.stdout.fnmatch_lines(
            ["lens research *max_cost_usd *$0.050000 *$0.09* *test_app.py::test_research"]
        )
        server.stop()  # the replay runs offline
    pytester.path.joinpath("other.yaml").write_text(
        'version: 1\ntool_fees:\n  "gpt-4.1": {web_search: 0.01}\n'
    )
    done = cli(capsys, "reprice", "report.json", "--price-file", "other.yaml", "--format", "json")
    total = json.loads(done.stdout)["total"]
    assert total["before_usd"] == row["cost_usd"]
    assert total["after_usd"] == pytest.approx(tokens + 0.03, rel=1e-12)
    assert (total["before_complete"], total["after_complete"]) == (True, True)


@pytest.mark.usefixtures("with_key")
def test_the_fix_named_for_unpriced_fees_says_configure_must_read_the_price_file(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM_LEDGER_PRICE_FILE is read by configure(): a test session that never runs it leaves the fees
    unpriced however the variable is set, so the fix the summary names says where to call it, rather
    than sending the user to set a variable that changes nothing."""
    write_project(pytester, TOOL_TESTS)
    pytester.path.joinpath("prices.yaml").write_text('version: 1\ntool_fees:\n  "*": {web_search: 0.03}\n')
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", "prices.yaml")
    result = run(pytester, "--llm-record-mode=once")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "llm-ledger: calls with no known cost count as $0: no price for the built-in tools' fees *"
        "LLM_LEDGER_PRICE_FILE at it, read by llm_ledger.configure() (call it in conftest.py if the "
        "tests run none)*"
    ])  # fmt: skip
