"""Replay-only means offline: an unmarked test's OpenAI request fails its test and is never sent."""

from __future__ import annotations

import openai  # noqa: F401  (kept imported across in-process sessions)
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    FAST_ARGS,
    INI,
    PLUGIN_ARGS,
    no_key_fixture,
    notice_fails_strict,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytest_plugins = ["pytester"]
_FIXTURES = (no_key_fixture, server_fixture, with_key_fixture)  # used by name

UNMARKED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

URL = os.environ["LEDGER_TEST_BASE_URL"]


def ask(client, text):
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])


def test_unmarked():
    with ledger.instrument(openai.OpenAI(base_url=URL, max_retries=0)) as client:
        ask(client, "unmarked")


@pytest.mark.asyncio
async def test_unmarked_async_swallowed():
    async with openai.AsyncOpenAI(base_url=URL, max_retries=2) as client:
        try:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "swallowed"}]
            )
        except Exception:
            pass  # code under test that hides errors must not hide a refused request


@pytest.mark.llm(live=True)
def test_live():
    with openai.OpenAI(base_url=URL, max_retries=0) as client:
        assert ask(client, "live").choices[0].message.content.startswith("Summary:")
"""


def prompts(server: FakeOpenAI) -> list[str]:
    return [r.body["messages"][0]["content"] for r in server.requests]


@pytest.mark.usefixtures("no_key")
def test_unmarked_requests_fail_their_test_and_are_never_sent(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """In none mode an unmarked test's call (sync or async, swallowed or not) fails naming the test
    and the marker, and reaches no server; a test marked llm(live=True) calls the server."""
    write_project(pytester, UNMARKED_TESTS)

    result = run(pytester)

    result.assert_outcomes(passed=1, failed=2)
    assert prompts(server) == ["live"]
    out = result.stdout.str()
    for name in ("test_unmarked", "test_unmarked_async_swallowed"):
        nodeid = f"tests/test_app.py::{name}"
        assert f"llm-ledger: {nodeid} is not marked llm, so its OpenAI API request was not sent" in out
        assert f"    pytest {nodeid} --llm-record-mode=once" in out
    result.stdout.fnmatch_lines(
        [
            "  request: POST 127.0.0.1/v1/chat/completions",
            "  to replay it from a cassette, mark it @pytest.mark.llm and record its cassette once;",
            "  to record it (needs network and OPENAI_API_KEY, or OPENAI_BASE_URL pointing at a compatible "
            "server):",
            "  for a deliberate live test: @pytest.mark.llm(live=True); for a local server: ini "
            "llm_allowed_hosts = 127.0.0.1",
        ]
    )
    assert out.count("is not marked llm") == 2  # once per test: no traceback, no retry, no repeat
    assert "APIConnectionError" not in out and "Traceback" not in out


@pytest.mark.usefixtures("no_key", "server")
def test_the_allowed_hosts_fix_is_written_as_the_projects_ini_file_takes_it(
    pytester: pytest.Pytester,
) -> None:
    """In a project configured in pyproject.toml, the refusal's fix is the TOML line that lets the local
    server through (a list: `llm_allowed_hosts = 127.0.0.1` is no TOML), and that line does."""
    write_project(pytester, UNMARKED_TESTS)
    (pytester.path / "pytest.ini").unlink()
    toml = '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'

    pytester.makepyprojecttoml(toml)
    result = run(pytester)

    result.assert_outcomes(passed=1, failed=2)
    fix = 'llm_allowed_hosts = ["127.0.0.1"]'
    result.stdout.fnmatch_lines(
        [
            "  for a deliberate live test: @pytest.mark.llm(live=True); "
            f"for a local server: {fix} in pyproject.toml"
        ]
    )
    pytester.makepyprojecttoml(toml + fix + "\n")
    run(pytester).assert_outcomes(passed=3)


@pytest.mark.usefixtures("with_key")
def test_recording_names_the_unmarked_tests_whose_requests_went_out_live(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """While recording, an unmarked test's call goes out and the test passes, but no cassette keeps it,
    so the replay will fail it: the session ends naming it (not the live test), a failure under
    --llm-strict."""
    write_project(pytester, UNMARKED_TESTS)

    lenient, _ = notice_fails_strict(
        pytester,
        "--llm-record-mode=once",
        notice=[
            "llm-ledger: 2 test(s) not marked llm sent OpenAI API requests live in record mode 'once', so no "
            "cassette recorded them and the replay (record mode none) will refuse them: "
            "tests/test_app.py::test_unmarked, tests/test_app.py::test_unmarked_async_swallowed; mark them "
            "@pytest.mark.llm and record again (@pytest.mark.llm(live=True) for a deliberate live test)"
        ],
    )

    lenient.assert_outcomes(passed=3)
    assert sorted(prompts(server)) == sorted(["unmarked", "swallowed", "live"] * 2)
    assert not (pytester.path / "cassettes").exists()


WIDER_FIXTURE_TESTS = """
import os

import openai
import pytest


@pytest.fixture(scope="module")
def warmed_up():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except openai.APIError:
            pass  # a warm-up that may fail
    return True


@pytest.mark.llm
def test_marked(warmed_up):
    assert warmed_up
"""


@pytest.mark.usefixtures("no_key")
def test_a_marked_tests_fixture_of_a_wider_scope_is_refused_unsent(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A module-scoped fixture of a test marked llm is set up before the test's cassette: in none mode
    its OpenAI request is refused unsent, as an unmarked test's is, and errors the test (also when the
    fixture swallows the error), saying why and what to do."""
    write_project(pytester, WIDER_FIXTURE_TESTS)

    result = run(pytester)

    result.assert_outcomes(errors=1)
    assert prompts(server) == []
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: tests/test_app.py::test_marked sent an OpenAI API request outside its cassette "
            "(a fixture of a wider scope than the test's, set up before it), so it was not sent",
            "  request: POST 127.0.0.1/v1/chat/completions",
            "  in record mode 'none' nothing leaves the machine; a cassette records the requests of its "
            "test's function-scoped fixtures and body: make that fixture function-scoped, or move the "
            "call into the test",
        ]
    )


@pytest.mark.usefixtures("with_key")
def test_recording_refuses_a_wider_fixtures_request_that_the_replay_would_refuse(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """While recording, the same module-scoped fixture's request is refused unsent too: sent, it would
    go live and stay out of the cassette, so the recording would pass and every replay (CI) fail."""
    write_project(pytester, WIDER_FIXTURE_TESTS)

    result = run(pytester, "--llm-record-mode=once")

    result.assert_outcomes(errors=1)
    assert prompts(server) == []
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: tests/test_app.py::test_marked sent an OpenAI API request outside its cassette "
            "(a fixture of a wider scope than the test's, set up before it), so it was not sent",
            "  request: POST 127.0.0.1/v1/chat/completions",
            "  in record mode 'once' it would not be recorded, and the replay would refuse it; a cassette "
            "records the requests of its test's function-scoped fixtures and body: make that fixture "
            "function-scoped, or move the call into the test",
        ]
    )


IMPORT_TIME_TESTS = """
import os

import openai

with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
    try:
        client.embeddings.create(model="text-embedding-3-small", input="computed at import")
    except Exception:
        pass  # the module falls back to a default


def test_plain():
    pass
"""


@pytest.mark.usefixtures("no_key")
def test_a_request_outside_any_test_is_refused_unsent_and_fails_the_run(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """An OpenAI request made while no test runs (a test module's import, at collection) is refused
    unsent in none mode, as a test's is; the run fails, naming the request and what to do, also when
    the module swallows the error."""
    write_project(pytester, IMPORT_TIME_TESTS)

    result = run(pytester)

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    assert server.requests == []
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: an OpenAI API request was made while no test was running (at import or "
            "collection), so it was not sent: POST 127.0.0.1/v1/embeddings; in record mode 'none' nothing "
            "leaves the machine: make the call in a test marked llm, or in a function-scoped fixture of one",
        ]
    )


@pytest.mark.usefixtures("no_key")
def test_a_request_at_collection_is_refused_unsent_when_only_collecting(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """--collect-only (what ``llm-ledger cassettes`` runs) imports the test modules too: an OpenAI request
    one makes at its import is refused unsent there as well. In a new Python, as the command's is: the
    guard must wrap httpx before a test module imports it, and this process imported it long ago."""
    write_project(pytester, IMPORT_TIME_TESTS)

    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, *FAST_ARGS, "--collect-only")

    assert result.ret == pytest.ExitCode.OK
    assert server.requests == []


@pytest.mark.usefixtures("no_key")
def test_allowed_hosts_let_unmarked_tests_reach_a_local_server(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """ini llm_allowed_hosts (glob patterns) opens the guard for the hosts it names, only those."""
    write_project(pytester, UNMARKED_TESTS)
    pytester.makefile(".ini", pytest=INI + "llm_allowed_hosts = api.example.com 127.0.0.*\n")

    result = run(pytester)

    result.assert_outcomes(passed=3)
    assert sorted(prompts(server)) == ["live", "swallowed", "unmarked"]


@pytest.mark.parametrize("pattern", ["*", "*.openai.com", "API.openai.com"])
def test_allowed_hosts_that_let_openai_itself_through_are_a_usage_error(
    pytester: pytest.Pytester, pattern: str
) -> None:
    """llm_allowed_hosts = * (or any pattern matching api.openai.com) let unmarked tests send requests to
    the paid API in record mode none, where nothing is to leave the machine: a CI with a key paid for
    them and checked nothing against a cassette. It is a usage error naming the pattern and the fix."""
    write_project(pytester, DEFAULT_CLIENT_TEST)
    pytester.makefile(".ini", pytest=INI + f"llm_allowed_hosts = 127.0.0.1 {pattern}\n")

    result = run(pytester)

    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(
        [
            f"*llm-ledger: llm_allowed_hosts in *pytest.ini: {pattern!r} lets requests to api.openai.com "
            "through, which no cassette records (a live, billed call); list the hosts of local servers "
            "only (127.0.0.1), and mark a deliberate live test @pytest.mark.llm(live=True)"
        ]
    )


def test_a_bad_llm_marker_argument_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """@pytest.mark.llm(liv=True) stops the run naming the file, line, test and the valid forms."""
    write_project(pytester, "import pytest\n\n\n@pytest.mark.llm(liv=True)\ndef test_typo():\n    pass\n")

    result = run(pytester)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*tests/test_app.py:4: tests/test_app.py::test_typo: @pytest.mark.llm(liv=True) is not a valid "
            "llm marker (did you mean 'live'?); use @pytest.mark.llm (replay from a cassette), "
            "@pytest.mark.llm(match_host=True)*"
        ]
    )


DEFAULT_CLIENT_TEST = """
import openai


def test_default_client():
    with openai.OpenAI(max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
"""


@pytest.mark.usefixtures("no_key")
def test_a_refused_request_to_openai_itself_never_suggests_allowing_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unmarked test calling api.openai.com is told to mark and record it; the local-server hint
    (llm_allowed_hosts), which would let CI call the paid API, is not offered for OpenAI's host."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    write_project(pytester, DEFAULT_CLIENT_TEST)

    result = run(pytester)

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "  request: POST api.openai.com/v1/chat/completions",
            "  for a deliberate live test: @pytest.mark.llm(live=True)",
        ]
    )
    assert "llm_allowed_hosts" not in result.stdout.str()


AIOHTTP_TESTS = """
import os

import openai
import pytest


async def ask(text):
    client = openai.AsyncOpenAI(
        base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0, http_client=openai.DefaultAioHttpClient()
    )
    async with client:
        return await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        )


@pytest.mark.asyncio
async def test_unmarked_aiohttp():
    await ask("unmarked aiohttp")


@pytest.mark.llm
@pytest.mark.asyncio
async def test_marked_aiohttp():
    assert (await ask("marked aiohttp")).choices[0].message.content.startswith("Summary:")
"""


def test_the_sdks_aiohttp_backend_is_guarded_and_replayed(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client on the SDK's aiohttp backend (DefaultAioHttpClient) is held to the same rule: in an
    unmarked test its request fails the test unsent; in a marked test it records and replays."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-key-1234")
    write_project(pytester, AIOHTTP_TESTS)
    assert run(pytester, "--llm-record-mode=once", "-k", "marked_aiohttp and not unmarked").ret == 0
    assert prompts(server) == ["marked aiohttp"]

    result = run(pytester)

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["llm-ledger: tests/test_app.py::test_unmarked_aiohttp is not marked llm, so its OpenAI * not sent"]
    )
    assert prompts(server) == ["marked aiohttp"]  # the unmarked request never reached the server


@pytest.mark.usefixtures("no_key", "server")
def test_an_unmarked_test_run_from_a_subdirectory_gets_a_command_that_runs_there(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from the tests folder, the refusal's record command names the test as pytest does there."""
    write_project(pytester, UNMARKED_TESTS)
    monkeypatch.chdir(pytester.path / "tests")

    result = run(pytester, "-k", "test_unmarked and not async")

    result.assert_outcomes(failed=1, deselected=2)
    assert "    pytest test_app.py::test_unmarked --llm-record-mode=once\n" in result.stdout.str()


REALTIME_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def session_of(client):
    with client.realtime.connect(model="gpt-realtime") as connection:
        connection.response.create()
        for event in connection:
            if event.type == "response.done":
                return event


URLS = dict(base_url=os.environ["LEDGER_TEST_BASE_URL"], websocket_base_url=os.environ["LEDGER_TEST_WS_URL"])


def realtime():
    return openai.OpenAI(**URLS, max_retries=0)


def test_unmarked_realtime():
    with ledger.instrument(realtime()) as client:
        session_of(client)


@pytest.mark.llm
@pytest.mark.asyncio
async def test_marked_realtime_async():
    async with openai.AsyncOpenAI(**URLS) as client:
        async with client.realtime.connect(model="gpt-realtime") as connection:
            await connection.response.create()


@pytest.mark.llm(live=True)
def test_live_realtime():
    with realtime() as client:
        assert session_of(client).response.status == "completed"
"""


@pytest.mark.usefixtures("no_key")
def test_realtime_websockets_no_cassette_replays_are_refused_unopened(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In none mode a Realtime API connection (a WebSocket, which no cassette records) of an unmarked
    test, and of a marked one, fails its test, naming the fix, before its handshake is sent; a live test
    connects; ini llm_allowed_hosts lets the others through."""
    monkeypatch.setenv("LEDGER_TEST_WS_URL", server.websocket_base_url)
    write_project(pytester, REALTIME_TESTS)

    result = run(pytester)

    result.assert_outcomes(passed=1, failed=2)
    assert [e["type"] for e in server.realtime_events] == ["response.create"]  # the live test's alone
    out = result.stdout.str()
    for name in ("test_unmarked_realtime", "test_marked_realtime_async"):
        assert (
            f"llm-ledger: tests/test_app.py::{name} opened a WebSocket to the OpenAI API (the Realtime API), "
            "which cassettes do not record or replay, so it was not opened"
        ) in out
    result.stdout.fnmatch_lines(
        ["  request: WEBSOCKET 127.0.0.1/v1/realtime", "*llm_allowed_hosts*live=True*"]
    )

    pytester.makefile(".ini", pytest=INI + "llm_allowed_hosts = 127.0.0.1\n")
    run(pytester).assert_outcomes(passed=3)


RESPONSES_SOCKET_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

URLS = dict(base_url=os.environ["LEDGER_TEST_BASE_URL"], websocket_base_url=os.environ["LEDGER_TEST_WS_URL"])


def answer(client):
    with client.responses.connect() as connection:
        connection.response.create(model="gpt-4.1-mini", input="hi")
        for event in connection:
            if event.type == "response.completed":
                return event


def test_unmarked_responses_socket():
    with ledger.instrument(openai.OpenAI(**URLS, max_retries=0)) as client:
        answer(client)


@pytest.mark.llm(live=True)
def test_live_responses_socket():
    with openai.OpenAI(**URLS, max_retries=0) as client:
        assert answer(client).response.status == "completed"
"""


LIVE_SOCKET_TESTS = """
import os

import openai

import llm_ledger as ledger

URLS = dict(base_url=os.environ["LEDGER_TEST_BASE_URL"], websocket_base_url=os.environ["LEDGER_TEST_WS_URL"])


def test_unmarked_live_session():
    with ledger.instrument(openai.OpenAI(**URLS, max_retries=0)) as client:
        with client.live.connect() as connection:
            connection.send({"type": "session.start", "session": {"model": "gpt-live-1"}})
"""


@pytest.mark.sdk3  # the Live API is openai 3.x's
@pytest.mark.usefixtures("no_key")
def test_a_live_api_websocket_is_refused_unopened_naming_its_api(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In none mode a Live API connection (``live.connect()``) of a test not live fails it before its
    handshake is sent, naming the Live API (not the Realtime API) and the fix."""
    monkeypatch.setenv("LEDGER_TEST_WS_URL", server.websocket_base_url)
    write_project(pytester, LIVE_SOCKET_TESTS)

    result = run(pytester)

    result.assert_outcomes(failed=1)
    assert server.realtime_events == []
    assert (
        "llm-ledger: tests/test_app.py::test_unmarked_live_session opened a WebSocket to the OpenAI API "
        "(the Live API), which cassettes do not record or replay, so it was not opened"
    ) in result.stdout.str()


@pytest.mark.sdk2  # openai 1.x has no responses.connect()
@pytest.mark.usefixtures("no_key")
def test_responses_websockets_no_cassette_replays_are_refused_unopened(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In none mode a Responses API connection (``responses.connect()``, a WebSocket no cassette records)
    of a test not live fails it, naming the API and the fix, before its handshake is sent."""
    monkeypatch.setenv("LEDGER_TEST_WS_URL", server.websocket_base_url)
    write_project(pytester, RESPONSES_SOCKET_TESTS)

    result = run(pytester)

    result.assert_outcomes(passed=1, failed=1)
    assert [e["type"] for e in server.realtime_events] == ["response.create"]  # the live test's alone
    assert (
        "llm-ledger: tests/test_app.py::test_unmarked_responses_socket opened a WebSocket to the OpenAI API "
        "(the Responses API), which cassettes do not record or replay, so it was not opened"
    ) in result.stdout.str()
    result.stdout.fnmatch_lines(
        ["  request: WEBSOCKET 127.0.0.1/v1/responses", "*llm_allowed_hosts*live=True*"]
    )
