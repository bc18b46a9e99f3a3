"""Record anywhere, replay anywhere: cassettes match on the API path, not on where it was recorded."""

from __future__ import annotations

import os
from pathlib import Path

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import INI, no_key_fixture, run, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (no_key_fixture,)  # used by name

CASSETTES = Path("cassettes", "tests", "test_env")

# clients configured the way the README suggests: from OPENAI_BASE_URL, with no key of their own
ENV_TESTS = """
import os

import openai
import pytest


def ask(text):
    with openai.OpenAI(max_retries=0) as client:
        messages = [{"role": "user", "content": text}]
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content == "Summary: " + text


@pytest.mark.llm
def test_free():
    ask("anywhere")


@pytest.mark.llm(match_host=True)
def test_pinned():
    ask("pinned")
"""


@pytest.fixture(name="recorded_via_base_url")
def recorded_via_base_url_fixture(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_key: None
) -> Path:
    """ENV_TESTS recorded through OPENAI_BASE_URL (a proxy-style path prefix), with no OPENAI_API_KEY."""
    write_project(pytester, ENV_TESTS, "test_env")
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url.replace("/v1", "/corp-proxy/v1"))
        result = run(pytester, "--llm-record-mode=once")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines(
            ["llm-ledger: OPENAI_API_KEY is unset; recording against http://127.0.0.1:*/corp-proxy/v1 "
             "with a placeholder key"]
        )  # fmt: skip
        assert all(r.path == "/corp-proxy/v1/chat/completions" for r in server.requests)
        assert all(
            r.headers["authorization"] == "Bearer sk-llm-ledger-replay-placeholder" for r in server.requests
        )
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert "OPENAI_API_KEY" not in os.environ
    return pytester.path / CASSETTES


def test_recorded_through_a_base_url_replays_without_it(
    pytester: pytest.Pytester, recorded_via_base_url: Path
) -> None:
    """A cassette recorded through OPENAI_BASE_URL (no key) replays in a CI that talks to OpenAI's host."""
    result = run(pytester, "-k", "test_free")
    result.assert_outcomes(passed=1, deselected=1)
    text = (recorded_via_base_url / "test_free.yaml").read_text()
    assert "url: http://127.0.0.1/corp-proxy/v1/chat/completions\n" in text  # no port stored


def test_host_matching_on_request_names_the_host_and_the_fix(
    pytester: pytest.Pytester, recorded_via_base_url: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """match_host=True (or llm_match_host) fails a replay against another host, says so and what to do;
    the same host on another port still replays."""
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert (
        "  request: POST /chat/completions  (API path of https://api.openai.com/v1/chat/completions; "
        "matched on method, host, API path, query and body)"
    ) in out
    assert (
        "  only the host differs: interactions[0] has this method, API path, query and body, recorded "
        "against host '127.0.0.1'; this request goes to 'api.openai.com'"
    ) in out
    assert "remove it to replay this cassette against any host, or record it against this host:" in out
    assert "    pytest tests/test_env.py::test_pinned --llm-record-mode=rewrite" in out

    pytester.makefile(".ini", pytest=INI + "llm_match_host = true\n")
    run(pytester).assert_outcomes(failed=2)

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens: replay only
    run(pytester).assert_outcomes(passed=2)


def test_rerecording_on_another_port_rewrites_nothing(
    pytester: pytest.Pytester, recorded_via_base_url: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-recording against the same kind of server on a new port leaves the cassette byte for byte."""
    before = {p.name: p.read_text() for p in recorded_via_base_url.iterdir()}
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url.replace("/v1", "/corp-proxy/v1"))
        run(pytester, "--llm-record-mode=rewrite").assert_outcomes(passed=2)
        assert len(server.requests) == 2
    assert {p.name: p.read_text() for p in recorded_via_base_url.iterdir()} == before


def test_a_client_built_when_conftest_is_imported_gets_the_placeholder_key(
    pytester: pytest.Pytester, recorded_via_base_url: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application whose module builds its client at import, imported by the root conftest.py, needs
    no key either: the placeholder is set before conftest files are imported, in replay and when
    recording against a compatible server (not the SDK's "Missing credentials" at collection)."""
    pytester.makeconftest("import openai\n\nCLIENT = openai.OpenAI(max_retries=0)\nCLIENT.close()\n")

    run(pytester, "-k", "test_free").assert_outcomes(passed=1, deselected=1)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        run(pytester, "-k", "test_free", "--llm-record-mode=rewrite").assert_outcomes(passed=1, deselected=1)
    assert "OPENAI_API_KEY" not in os.environ


@pytest.mark.usefixtures("no_key")
def test_a_run_stopped_by_a_usage_error_leaves_no_placeholder_key(pytester: pytest.Pytester) -> None:
    """The placeholder key is set before conftest.py files are imported; a run that then stops at a
    usage error (a bad budgets file) still takes it away, as a finished run does."""
    write_project(pytester, KEY_CHECK)
    pytester.makefile(".yaml", budgets="lenses: [summary]\n")

    assert run(pytester).ret == pytest.ExitCode.USAGE_ERROR
    assert "OPENAI_API_KEY" not in os.environ


@pytest.mark.usefixtures("no_key")
@pytest.mark.parametrize("stop", ["conftest", "flag"])
def test_a_run_stopped_before_it_began_leaves_the_environment_as_it_was(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """A run stopped before its session began (a conftest.py that fails to import, a misspelt flag:
    pytest calls no pytest_unconfigure then) takes away the placeholder key and LLM_LEDGER_LOG_DIR it
    set before conftest.py files were imported: a later pytest.main() in the process records with the
    user's own settings, not the placeholder key."""
    monkeypatch.setenv("LLM_LEDGER_LOG_DIR", "/app/logs")
    write_project(pytester, KEY_CHECK)
    if stop == "conftest":
        pytester.makeconftest("raise ImportError('no such module')\n")
    result = run(pytester, *(["--no-such-flag"] if stop == "flag" else []))

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "OPENAI_API_KEY" not in os.environ
    assert os.environ["LLM_LEDGER_LOG_DIR"] == "/app/logs"


KEY_CHECK = """
import os


def test_key():
    assert "OPENAI_API_KEY" not in os.environ
"""


@pytest.mark.usefixtures("no_key")
def test_recording_against_openai_itself_gets_no_placeholder_key(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without OPENAI_BASE_URL (or with OpenAI's own), recording keeps the SDK's missing-key error."""
    write_project(pytester, KEY_CHECK)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    run(pytester, "--llm-record-mode=rewrite").assert_outcomes(passed=1)


def test_a_bad_match_host_value_is_a_clear_failure(pytester: pytest.Pytester) -> None:
    """match_host must be a bool: anything else is a usage error naming the test, the marker and
    the value."""
    write_project(pytester, "import pytest\n\n@pytest.mark.llm(match_host='yes')\ndef test_x():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: @pytest.mark.llm(match_host='yes') is not a valid llm marker*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # a misspelt keyword is named with the one meant
        ("match_hosts=True", "*@pytest.mark.llm(match_hosts=True) is not a valid llm marker (did you mean "
         "'match_host'?); use *"),
        # a long argument is cut; a key passed by mistake is described, never quoted
        ("'x ' * 5_000", "*@pytest.mark.llm('x x x x x x x x x x x x x x x x x x x …) is not a valid *"),
        (f"api_key='sk-proj-{'A1b2' * 8}'", "*@pytest.mark.llm(api_key=<40 characters not shown: they look "
         "like a credential>) is not a valid llm marker; use *"),
        # a live test has no cassette: what would match or keep its requests does nothing
        ("live=True, match_host=True", "*test_x: @pytest.mark.llm(live=True, match_host=True): a live test "
         "has no cassette, so match_host does nothing; drop it, or drop live=True *"),
        ("live=True, record_auth_errors=True", "*so record_auth_errors does nothing*"),
    ],
)  # fmt: skip
def test_bad_marker_arguments_are_named_short_and_never_quote_a_key(
    pytester: pytest.Pytester, arguments: str, message: str
) -> None:
    """A bad @pytest.mark.llm(...) is a usage error showing each argument shortened (a credential
    described), naming the keyword meant, and refusing options a live test would silently ignore."""
    write_project(pytester, f"import pytest\n\n@pytest.mark.llm({arguments})\ndef test_x():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "sk-proj" not in result.stderr.str() and "x " * 30 not in result.stderr.str()
