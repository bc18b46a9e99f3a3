"""The pytest plugin records a background response's polling in a cassette and replays it offline, its
cost counted once, complete, in the test's calls and lens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import cli, load_yaml, run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

BACKGROUND_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_deep_research(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(raw) as c, ledger.lens("deep_research"):
        r = c.responses.create(
            model="gpt-4o-mini", input="Write about otters", background=True,
            extra_headers={"x-fake-polls": "2"},
        )
        while r.status in ("queued", "in_progress"):
            r = c.responses.retrieve(r.id)
    assert r.status == "completed"
    assert [c["response"]["finish_reason"] for c in llm_ledger.calls] == ["queued", "completed"]
    assert llm_ledger.cost_complete and llm_ledger.cost_usd > 0
    assert llm_ledger.total_tokens == r.usage.total_tokens
    [lens] = llm_ledger.lens("deep_research")
    assert lens["summary"]["cost_complete"] and lens["summary"]["total_cost_usd"] == llm_ledger.cost_usd
"""


@pytest.mark.usefixtures("with_key")
def test_background_polling_is_recorded_and_replayed_offline_with_its_cost_once(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """The create and its three polls are recorded in order; replayed with the server stopped, the
    polls answer as recorded (in progress twice, then ended) and the test sees the same cost, once."""
    write_project(pytester, BACKGROUND_TESTS)
    recorded = run(pytester, "--llm-record-mode=once")
    assert recorded.ret == 0, recorded.stdout.str()
    cassette = load_yaml(pytester.path / Path("cassettes", "tests", "test_app", "test_deep_research.yaml"))
    assert [i["request"]["method"] for i in cassette["interactions"]] == ["POST", "GET", "GET", "GET"]
    server.stop()
    run(pytester).assert_outcomes(passed=1)


STARTED_ONLY_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_research_started(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(raw) as c:
        c.responses.create(model="gpt-4o-mini", input="Write about otters", background=True)
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert llm_ledger.cost_usd > 0 and llm_ledger.cost_complete is False
"""


@pytest.mark.usefixtures("with_key")
def test_a_background_response_whose_end_the_test_never_sees_leaves_its_cost_unknown(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """Fail closed: a test that starts a background response and never retrieves its end has an unknown
    cost (the fixture, the session's totals, the report), so a cost budget cannot pass it as $0; the
    session says why and how to fix it."""
    write_project(pytester, STARTED_ONLY_TESTS)
    pytester.makefile(".yaml", budgets="total:\n  max_cost_usd: 1.0\n")
    result = run(pytester, "--llm-record-mode=once", "--llm-budget", "--llm-report=report.json")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*total: max_cost_usd cannot be checked: no record of the end of the background "
        "responses begun by calls to 'gpt-4o-mini' (1 call); a background response's cost is in the record "
        "of its end: retrieve it*"
    ])  # fmt: skip
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["total"]["cost_complete"] is False


@pytest.mark.usefixtures("with_key")
def test_a_report_row_keeps_a_background_start_never_ended_so_reprice_and_diff_say_so(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's usage row of a start whose end the session never recorded counts it
    (``pending_calls``): ``llm-ledger reprice`` of the report then marks before and after incomplete
    and says why (never $0 and complete), and ``llm-ledger diff`` names it; one polled to its end in the
    test leaves nothing pending."""
    write_project(pytester, STARTED_ONLY_TESTS + BACKGROUND_TESTS.split("import llm_ledger as ledger")[1])
    result = run(pytester, "--llm-record-mode=once", "--llm-report=report.json")
    assert result.ret == 0, result.stdout.str()
    report = json.loads((pytester.path / "report.json").read_text())
    pending = {(row["lens"], row["pending_calls"]) for row in report["usage"] if row["pending_calls"]}
    assert pending == {("<no lens>", 1)}
    done = cli(capsys, "reprice", "report.json", "--format", "json")
    repriced = json.loads(done.stdout)
    assert repriced["pending_calls"] == 1
    lenses = {row["lens"]: (row["before_complete"], row["after_complete"]) for row in repriced["lenses"]}
    assert lenses == {"<no lens>": (False, False), "deep_research": (True, True)}
    text = cli(capsys, "reprice", "report.json").stdout
    assert "* before and after leave out 1 background response begun whose end no record read shows" in text
    diff = cli(capsys, "diff", "report.json", "report.json").stdout
    assert (
        "no record of the end of the background responses begun by calls to 'gpt-4o-mini' (1 call): "
        "counted as $0" in diff
    )


CANCEL_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_research_cancelled(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with ledger.instrument(raw) as c, ledger.lens("research"):
        r = c.responses.create(
            model="gpt-4o-mini", input="otters", background=True, extra_headers={"x-fake-polls": "5"}
        )
        assert c.responses.cancel(r.id).status == "cancelled"
    assert llm_ledger.cost_complete is False
"""


@pytest.mark.usefixtures("with_key")
def test_a_cost_limit_over_a_cancelled_background_response_names_what_fixes_it(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A cancelled background response's answer has no usage: its lens's cost limit cannot be checked
    (fail closed), and the fix named says a cancelled response never reports it, besides the advice for
    streams."""
    write_project(pytester, CANCEL_TESTS)
    pytester.makefile(".yaml", budgets="lenses:\n  research: {max_cost_usd: 1.0}\n")
    result = run(pytester, "--llm-record-mode=once", "--llm-budget")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "lens research: max_cost_usd cannot be checked: no usage reported by calls to 'gpt-4o-mini' "
        "(1 call); *a cancelled background response (responses.cancel) never reports its usage*"
    ])  # fmt: skip
