"""Coexistence with pytest-recording / vcrpy: one interception per request, two cassettes that
never hold the same request, and ``@pytest.mark.vcr`` tests left to pytest-recording."""

from __future__ import annotations

from pathlib import Path

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import pytest_recording  # noqa: F401  (the dev extra installs it: these tests need it, never skip)

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    DataServer,
    data_server_fixture,
    load_yaml,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytest_plugins = ["pytester"]
_FIXTURES = (data_server_fixture, server_fixture, with_key_fixture)  # used by name

TESTS = """
import os
import urllib.request

import openai
import pytest

import llm_ledger as ledger


def client():
    return ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


def ask(c, text):
    return c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])


@pytest.mark.vcr
@pytest.mark.llm
def test_both(llm_ledger):
    assert urllib.request.urlopen(os.environ["LEDGER_TEST_DATA_URL"]).read() == b"tokenizer data"
    with client() as c:
        assert ask(c, "both markers").choices[0].message.content == "Summary: both markers"
    assert llm_ledger.api_calls == 1


@pytest.mark.vcr
def test_vcr_only():
    with client() as c:
        assert ask(c, "vcr only").choices[0].message.content == "Summary: vcr only"
"""


def _uris(path: Path) -> list[str]:
    return [str(i["request"]["uri"]) for i in load_yaml(path)["interactions"]]


def test_vcr_and_llm_markers_record_each_request_once_and_replay_offline(
    pytester: pytest.Pytester, server: FakeOpenAI, data_server: DataServer, with_key: None
) -> None:
    """The OpenAI call goes to llm-ledger's cassette only, the download to pytest-recording's only;
    a vcr-only test keeps its OpenAI call in its vcrpy cassette; then both replay with servers down."""
    write_project(pytester, TESTS)
    run(pytester, "--record-mode=once", "--llm-record-mode=once").assert_outcomes(passed=2)
    assert len(server.requests) == 2 and len(data_server.hits) == 1  # each request sent once

    ours = load_yaml(pytester.path / "cassettes/tests/test_app/test_both.yaml")["interactions"]
    assert [i["request"]["url"] for i in ours] == ["http://127.0.0.1/v1/chat/completions"]
    theirs = pytester.path / "tests/cassettes/test_app"
    assert _uris(theirs / "test_both.yaml") == [data_server.url]
    assert _uris(theirs / "test_vcr_only.yaml") == [f"{server.base_url}/chat/completions"]
    assert not (pytester.path / "cassettes/tests/test_app/test_vcr_only.yaml").exists()

    server.stop()
    data_server.stop()
    result = run(pytester)  # both plugins in their replay-only default
    result.assert_outcomes(passed=2)
    assert "is not marked llm" not in result.stdout.str()  # the guard leaves a vcr test alone


def test_one_path_for_both_cassettes_is_refused(pytester: pytest.Pytester, server: FakeOpenAI) -> None:
    """If both cassettes would be one file, the test fails and says which setting to change."""
    write_project(pytester, TESTS)
    pytester.makeconftest(
        "import pytest\n\n\n@pytest.fixture(scope='module')\ndef vcr_cassette_dir(request):\n"
        "    return str(request.config.rootpath / 'cassettes' / 'tests' / 'test_app')\n"
    )
    result = run(pytester, "-k", "test_both")
    result.assert_outcomes(errors=1, deselected=1)  # failed in its setup
    result.stdout.fnmatch_lines(["*is marked vcr and llm, and both cassettes would be*test_both.yaml*"])
