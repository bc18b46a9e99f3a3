"""Replay that survives library start-up: requests a cassette does not own are not misses.

A library that downloads data the first time it is imported, inside a test marked ``llm``, sends
that request as it would without the plugin: the cassette records and replays the OpenAI SDK's
requests only. ``--llm-block-network`` refuses the others, naming the test. An error a library kept
from an earlier test and raises again is attributed to the test whose request raised it.
"""

from __future__ import annotations

import pytest

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    INI,
    DataServer,
    data_server_fixture,
    load_yaml,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (data_server_fixture, server_fixture, with_key_fixture)  # used by name

# a "library" that fetches its data over plain HTTP the first time it is imported (as llama-index
# fetches nltk data), then the test's own OpenAI call
STARTUP_TESTS = """
import importlib
import os
import sys

import openai
import pytest

import llm_ledger as ledger

LIBRARY = (
    "import os, urllib.request\\n"
    "DATA = urllib.request.urlopen(os.environ['LEDGER_TEST_DATA_URL']).read()\\n"
)


def test_unmarked_first():
    assert "lazy_lib" not in sys.modules


@pytest.mark.llm
def test_imports_a_library_that_downloads_on_first_import(tmp_path, monkeypatch):
    (tmp_path / "lazy_lib.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_lib", raising=False)
    lazy_lib = importlib.import_module("lazy_lib")
    assert lazy_lib.DATA == b"tokenizer data"
    url = os.environ["LEDGER_TEST_BASE_URL"]
    with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as c:
        reply = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith("Summary:")
"""

CASSETTE = "cassettes/tests/test_app/test_imports_a_library_that_downloads_on_first_import.yaml"


@pytest.fixture(name="startup_project")
def startup_project_fixture(
    pytester: pytest.Pytester, server: FakeOpenAI, data_server: DataServer, with_key: None
) -> pytest.Pytester:
    """The project recorded once (the cassette holds the OpenAI call only); the OpenAI server stopped."""
    write_project(pytester, STARTUP_TESTS)
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()
    return pytester


def test_a_download_at_first_import_is_neither_recorded_nor_a_miss(
    startup_project: pytest.Pytester, data_server: DataServer
) -> None:
    """Recording keeps the OpenAI call only; replay sends the download again and the test passes."""
    interactions = load_yaml(startup_project.path / CASSETTE)["interactions"]
    assert [i["request"]["url"] for i in interactions] == ["http://127.0.0.1/v1/chat/completions"]
    assert len(data_server.hits) == 1
    run(startup_project).assert_outcomes(passed=2)  # replay only, the OpenAI server stopped
    assert len(data_server.hits) == 2  # sent, neither replayed nor refused


def test_network_blocking_refuses_the_download_and_names_the_test(
    startup_project: pytest.Pytester, data_server: DataServer
) -> None:
    """--llm-block-network: the request is refused unsent; the test fails with one message naming it."""
    result = run(startup_project, "--llm-block-network")
    result.assert_outcomes(passed=1, failed=1)
    assert len(data_server.hits) == 1  # the recording's only
    result.stdout.fnmatch_lines(
        [
            "*llm-ledger: tests/test_app.py::test_imports_a_library_that_downloads_on_first_import sent a "
            "request its cassette does not record, refused because network blocking is on*",
            f"*request: GET {data_server.url}",
            "*llm_allowed_hosts = 127.0.0.1",
        ]
    )
    assert "CassetteMissError" not in result.stdout.str()
    assert "network blocked" in result.stdout.str()  # the report header says so


def test_allowed_hosts_pass_network_blocking(
    startup_project: pytest.Pytester, data_server: DataServer
) -> None:
    """A host in llm_allowed_hosts is let through network blocking (ini llm_block_network)."""
    startup_project.makefile(".ini", pytest=INI + "llm_block_network = true\nllm_allowed_hosts = 127.0.0.1\n")
    run(startup_project).assert_outcomes(passed=2)
    assert len(data_server.hits) == 2


# a library that keeps the error of its first start-up and raises it again on every later use
KEPT_ERROR_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

_kept = []


def start():
    if _kept:
        raise _kept[0]
    try:
        url = os.environ["LEDGER_TEST_BASE_URL"]
        with ledger.instrument(openai.OpenAI(base_url=url, max_retries=0)) as c:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "warm up"}])
    except Exception as exc:
        _kept.append(exc)
        raise


@pytest.mark.llm
def test_first():
    start()


@pytest.mark.llm
def test_second():
    start()
"""


def test_an_error_kept_by_a_library_names_the_test_whose_request_raised_it(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """test_second re-raises test_first's miss: its failure says so and names test_first's cassette."""
    write_project(pytester, KEPT_ERROR_TESTS)
    result = run(pytester)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    second = out[out.index("_ test_second _") :]
    assert (
        "llm-ledger: tests/test_app.py::test_second raised an error that a request of another test, "
        "tests/test_app.py::test_first, raised first" in second
    )
    assert "cassettes/tests/test_app/test_first.yaml" in second
    assert "test_second.yaml" not in second
    assert server.requests == []
