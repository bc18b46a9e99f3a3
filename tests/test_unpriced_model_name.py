"""An unpriced call's model has one name in the plugin's terminal line and in `llm-ledger diff`.

A request may name no model (``model=""`` here) while the answer does: both name the call by the
model that answered, not one by it and the other as ``<no model>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_ledger._cli import main as cli_main
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

# MODEL and SERVED steer one call: the model asked for, and the one the fake server answers as
LOCAL_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_local():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    served = {"x-fake-served-model": os.environ["SERVED"]} if "SERVED" in os.environ else {}
    with client, ledger.lens("local"):
        client.chat.completions.create(
            model=os.environ["MODEL"],
            messages=[{"role": "user", "content": "Tag the quarterly report"}],
            extra_headers=served,
        )
"""
GAP = "no known price for model 'acme-local-7b' (1 call)"


def _replay(pytester: pytest.Pytester, report: str) -> pytest.RunResult:
    """Record the test's cassette, then replay it as CI does, writing ``report``, budgets enforced."""
    assert run(pytester, "--llm-record-mode=rewrite").ret == 0
    return run(pytester, f"--llm-report={report}", "--llm-budget")


@pytest.mark.usefixtures("with_key")
def test_a_call_whose_request_names_no_model_has_the_answers_model_everywhere(
    pytester: pytest.Pytester,
    server: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plugin's "no known cost" line, its lens budget breach and the diff of its report all name
    the model that answered."""
    write_project(pytester, LOCAL_TESTS)
    (pytester.path / "budgets.yaml").write_text("lenses:\n  local: {max_cost_usd: 0.01}\n")
    monkeypatch.setenv("MODEL", "gpt-4o-mini")
    _replay(pytester, "base.json").assert_outcomes(passed=1)
    monkeypatch.setenv("MODEL", "")
    monkeypatch.setenv("SERVED", "acme-local-7b")

    replay = _replay(pytester, "head.json")

    replay.stdout.fnmatch_lines(
        [
            f"*lens local: max_cost_usd cannot be checked: {GAP}; *",
            f"llm-ledger: calls with no known cost count as $0: {GAP}; *",
        ]
    )
    base, head = str(pytester.path / "base.json"), str(pytester.path / "head.json")
    (row,) = json.loads(Path(head).read_text())["usage"]
    assert (row["model"], row["served_model"], row["uncosted_calls"]) == ("", "acme-local-7b", 1)
    capsys.readouterr()  # not the inner sessions' output
    status = cli_main(["diff", base, head, "--format", "text", "--fail-on-increase", "25"])
    out, err = capsys.readouterr()
    assert status == 1, out + err
    assert f"head: {GAP}" in out + err
    assert "<no model>" not in out + err
