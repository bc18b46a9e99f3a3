"""The pytest plugin's cassettes as users meet them: record, replay offline, misses, modes, safety."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

import llm_ledger  # noqa: F401
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    FAST_ARGS,
    INI,
    LEAK_A_STREAM,
    PLUGIN_ARGS,
    load_yaml,
    no_key_fixture,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytest_plugins = ["pytester"]
_FIXTURES = (no_key_fixture, recorded_fixture, server_fixture, with_key_fixture)  # used by name

CASSETTES = Path("cassettes", "tests", "test_app")

REPEAT_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def client():
    return ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


def ask(c, text):
    return c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])


@pytest.mark.llm
def test_repeat():
    with client() as c:
        for _ in range(int(os.environ.get("LEDGER_TEST_TIMES", "1"))):
            ask(c, "same")


@pytest.mark.llm
def test_swallowed():
    with client() as c:
        try:
            ask(c, os.environ.get("LEDGER_TEST_PROMPT", "a"))
        except Exception:
            pass  # code under test that hides errors must not hide a cassette miss
"""


def assert_lines_in(result: pytest.RunResult, *fragments: str) -> None:
    """Each fragment appears in the output (plain substrings: messages contain [0] and $)."""
    out = result.stdout.str()
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in output:\n{out}"


def record(pytester: pytest.Pytester, *args: str) -> None:
    result = run(pytester, "--llm-record-mode=once", *args)
    assert result.ret == 0, result.stdout.str()


@pytest.mark.usefixtures("with_key", "server")
def test_recording_on_ci_is_a_notice_naming_the_cassettes_ci_throws_away(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI run in a record mode (llm_record_mode = once committed by mistake) that records a
    cassette made live calls and keeps nothing: a notice names the tests (a failure with
    --llm-strict); the same recording on a developer's machine is no notice."""
    write_project(pytester)
    pytester.makefile(".ini", pytest=INI + "llm_record_mode = once\n")

    local = run(pytester, "--llm-strict", "-k", "test_chat")
    assert local.ret == pytest.ExitCode.OK, local.stdout.str()
    assert "recorded" not in local.stdout.str()

    monkeypatch.setenv("CI", "true")
    on_ci = pytester.runpytest(*PLUGIN_ARGS, *FAST_ARGS, "--llm-strict")

    assert on_ci.ret == pytest.ExitCode.TESTS_FAILED
    on_ci.assert_outcomes(passed=3)
    on_ci.stdout.fnmatch_lines(
        [
            "llm-ledger: 2 test(s) recorded their cassette in this CI run (record mode 'once'), so they "
            "called the API and CI keeps nothing: tests/test_app.py::test_async, "
            "tests/test_app.py::test_stream; record them locally, commit the cassettes, and run CI in "
            "record mode none",
            "llm-ledger: strict mode *1 notice(s) above fail the run",
        ]
    )


@pytest.mark.usefixtures("with_key")
def test_notices_come_in_one_order_whichever_of_them_there_are(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notices about cassettes come first, in a fixed order (stale, orphans, recorded on CI, then the
    authentication errors): with no stale cassette, the CI notice still comes before the 401's."""
    write_project(pytester)
    pytester.makefile(".ini", pytest=INI + "llm_record_mode = once\n")
    server.fail_next(401)  # test_chat's call: a wrong key while recording
    monkeypatch.setenv("CI", "true")

    result = pytester.runpytest(*PLUGIN_ARGS, *FAST_ARGS)

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: 2 test(s) recorded their cassette in this CI run *",
            "llm-ledger: 1 test(s) got authentication errors while recording, *::test_chat (401 *",
        ]
    )


@pytest.mark.usefixtures("with_key")
def test_record_then_replay_offline_without_key(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sync, async and streamed calls recorded once replay with the server stopped and no API key."""
    write_project(pytester)
    record(pytester)
    assert sorted(p.name for p in (pytester.path / CASSETTES).iterdir()) == [
        "test_async.yaml",
        "test_chat.yaml",
        "test_stream.yaml",
    ]
    seen = len(server.requests)
    server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")

    result = run(pytester, "-v")

    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["llm-ledger: record mode 'none', cassettes cassettes, budgets budgets.yaml*"]
    )
    assert len(server.requests) == seen
    assert "OPENAI_API_KEY" not in os.environ  # the placeholder is gone after the session


NO_BODY_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_models():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, pytest.raises(openai.NotFoundError, match=r"Invalid URL \\(GET /v1/models/gpt-4o-mini\\)"):
        client.models.retrieve("gpt-4o-mini")
"""


@pytest.mark.usefixtures("with_key")
def test_a_request_without_a_body_is_recorded_and_replayed_offline(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A call that sends no body (a GET: ``models.retrieve``) is recorded without one and replayed,
    its answer (here the fake's 404) and all, with the server stopped."""
    write_project(pytester, NO_BODY_TESTS)
    record(pytester)
    [interaction] = load_yaml(pytester.path / CASSETTES / "test_models.yaml")["interactions"]
    assert interaction["request"]["method"] == "GET"
    assert interaction["request"]["url"].endswith("/models/gpt-4o-mini")
    server.stop()
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.usefixtures("with_key")
def test_changed_prompt_fails_with_a_clear_message(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request no longer in the cassette fails the test naming the file, mode, JSON diff and fix: a
    re-recording, not new_episodes, which would keep the old request's recording, never played again."""
    write_project(pytester)
    record(pytester, "-k", "test_chat")
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise the annual report")

    result = run(pytester, "-k", "test_chat")

    result.assert_outcomes(failed=1, deselected=2)
    assert_lines_in(
        result,
        "llm-ledger: request not found in cassette ",
        "cassettes/tests/test_app/test_chat.yaml (record mode 'none')",
        "  request: POST /chat/completions  (API path of http://127.0.0.1:",
        "/v1/chat/completions; matched on method, API path, query and body)",
        "  closest recorded request: interactions[0] (same method and API path), the body differs at 1 "
        "place(s):",
        "    $.messages[0].content: recorded 'Summarise the quarterly report in one line', "
        "requested 'Summarise the annual report'",
        "    pytest tests/test_app.py::test_chat --llm-record-mode=rewrite",
    )
    assert "APIConnectionError" not in result.stdout.str()
    # new_episodes would keep the old prompt's recording, unplayed: a stale cassette that --llm-strict fails
    assert "new_episodes" not in result.stdout.str()


@pytest.mark.usefixtures("with_key")
def test_a_long_prompt_changed_at_its_end_shows_where_it_differs(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long prompt (a template over a document) changed past its first 120 characters: the miss shows
    both values from just before the first difference, not two starts that read the same."""
    article = "Bakeries in the city throw away a third of their bread every evening, a study finds. " * 3
    monkeypatch.setenv("LEDGER_TEST_PROMPT", f"Summarise in one line: {article}Be brief.")
    write_project(pytester)
    record(pytester, "-k", "test_chat")
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_PROMPT", f"Summarise in one line: {article}Be very brief.")

    result = run(pytester, "-k", "test_chat")

    result.assert_outcomes(failed=1, deselected=2)
    assert_lines_in(
        result,
        "    $.messages[0].content: differs from character 282 (of 287 recorded, 292 requested): "
        "recorded ...' bread every evening, a study finds. Be brief.', "
        "requested ...' bread every evening, a study finds. Be very brief.'",
    )


@pytest.mark.usefixtures("with_key")
def test_a_miss_in_a_run_from_a_subdirectory_gives_a_command_that_runs_there(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from the tests folder, a miss names the test as pytest does there (``test_app.py::...``),
    so the re-record command it prints records the cassette when run as given, in that folder; the
    cassette's header still names it from the root."""
    write_project(pytester)
    record(pytester, "-k", "test_chat")
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "Summarise the annual report")
    monkeypatch.chdir(pytester.path / "tests")

    missed = run(pytester, "-k", "test_chat")

    missed.assert_outcomes(failed=1, deselected=2)
    command = "pytest test_app.py::test_chat --llm-record-mode=rewrite"
    assert_lines_in(missed, f"    {command}")
    rerecorded = run(pytester, *shlex.split(command)[1:])
    rerecorded.assert_outcomes(passed=1)
    cassette = (pytester.path / CASSETTES / "test_chat.yaml").read_text()
    assert "Summarise the annual report" in cassette
    # the committed header names the test from the project's root, wherever it was recorded
    assert "# re-record: pytest tests/test_app.py::test_chat --llm-record-mode=rewrite\n" in cassette


@pytest.mark.usefixtures("with_key")
def test_an_extra_identical_call_is_a_miss(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each recorded interaction plays once: a second identical call fails instead of repeating; the
    miss offers new_episodes, which records the one more call and keeps the rest."""
    write_project(pytester, REPEAT_TESTS)
    record(pytester, "-k", "test_repeat")
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_TIMES", "2")

    result = run(pytester, "-k", "test_repeat")

    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "*the cassette holds 1 identical request(s), all already played*",
            "    pytest tests/test_app.py::test_repeat --llm-record-mode=new_episodes  (keeps the rest)",
        ]
    )


@pytest.mark.usefixtures("with_key")
def test_a_hand_edited_server_error_the_sdk_retries_is_named_in_the_miss(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cassette edited (or converted) to hold a 500 answer without the SDK's retries after it: the SDK
    retries it and the retry misses. The miss says why, not only that the test makes more calls."""
    write_project(pytester, REPEAT_TESTS.replace("max_retries=0", "max_retries=1"))
    record(pytester, "-k", "test_repeat")
    server.stop()
    cassette = pytester.path / CASSETTES / "test_repeat.yaml"
    cassette.write_text(cassette.read_text().replace("    status: 200\n", "    status: 500\n"))

    result = run(pytester, "-k", "test_repeat")

    result.assert_outcomes(failed=1, deselected=1)
    assert_lines_in(
        result,
        "  the cassette holds 1 identical request(s), all already played",
        "  the recorded answer is HTTP 500, which the OpenAI SDK retries (max_retries), so each retry is one "
        "more call: llm-ledger records a 429 or 5xx answer only with the retries the SDK made after it; "
        "re-record the test, or give a test of that error a client with max_retries=0",
    )


@pytest.mark.usefixtures("with_key")
def test_fewer_calls_than_recorded_are_reported_as_stale(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passing test that plays only part of its cassette is named, with the re-record command."""
    write_project(pytester, REPEAT_TESTS)
    monkeypatch.setenv("LEDGER_TEST_TIMES", "3")
    record(pytester, "-k", "test_repeat")
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_TIMES", "1")

    result = run(pytester, "-k", "test_repeat")

    result.assert_outcomes(passed=1, deselected=1)
    assert_lines_in(
        result,
        "llm-ledger: 1 cassette(s) hold interactions their test no longer makes: "
        "tests/test_app.py::test_repeat (2); re-record them with "
        "pytest tests/test_app.py::test_repeat --llm-record-mode=rewrite",
    )


@pytest.mark.usefixtures("with_key")
def test_a_stale_cassette_in_a_run_from_a_subdirectory_names_the_test_as_pytest_does_there(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from the tests folder, the stale-cassette notice names the test as a command there takes it,
    so ``pytest ID --llm-record-mode=rewrite`` with the ID it names re-records the cassette."""
    write_project(pytester, REPEAT_TESTS)
    monkeypatch.setenv("LEDGER_TEST_TIMES", "3")
    record(pytester, "-k", "test_repeat")
    monkeypatch.setenv("LEDGER_TEST_TIMES", "1")
    monkeypatch.chdir(pytester.path / "tests")

    result = run(pytester, "-k", "test_repeat")

    result.assert_outcomes(passed=1, deselected=1)
    assert_lines_in(
        result,
        "llm-ledger: 1 cassette(s) hold interactions their test no longer makes: "
        "test_app.py::test_repeat (2); re-record them with "
        "pytest test_app.py::test_repeat --llm-record-mode=rewrite",
    )
    run(pytester, "test_app.py::test_repeat", "--llm-record-mode=rewrite").assert_outcomes(passed=1)
    assert len(load_yaml(pytester.path / CASSETTES / "test_repeat.yaml")["interactions"]) == 1


@pytest.mark.usefixtures("with_key")
def test_a_swallowed_miss_still_fails_the_test(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code that catches every exception cannot hide a miss: the test fails with the miss message."""
    write_project(pytester, REPEAT_TESTS)
    record(pytester, "-k", "test_swallowed")
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "b")

    result = run(pytester, "-k", "test_swallowed")

    result.assert_outcomes(failed=1, deselected=1)
    assert_lines_in(result, "    $.messages[0].content: recorded 'a', requested 'b'")


def test_a_rootdir_away_from_the_ini_file_replays_the_same_cassettes(recorded: pytest.Pytester) -> None:
    """--rootdir changes no cassette path: test files are placed under the cassette directory relative
    to the ini file's folder, as the cassette directory itself is."""
    result = run(recorded, "--rootdir=tests")

    result.assert_outcomes(passed=3)


@pytest.mark.usefixtures("no_key")
def test_never_recorded_test_fails_offline_with_the_record_command(pytester: pytest.Pytester) -> None:
    """In none mode a test without a cassette fails at its first call and says how to record it."""
    write_project(pytester)
    os.environ["LEDGER_TEST_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens there
    try:
        result = run(pytester, "-k", "test_chat")
    finally:
        del os.environ["LEDGER_TEST_BASE_URL"]

    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*the cassette file does not exist: this test has never been recorded",
            "*pytest tests/test_app.py::test_chat --llm-record-mode=once",
        ]
    )
    assert not (pytester.path / CASSETTES).exists()


@pytest.mark.parametrize(
    ("where", "kept"),
    [
        (["--llm-cassette-dir=nosuch"], "--llm-cassette-dir=nosuch"),
        (["-o", "llm_cassette_dir=nosuch"], "-o llm_cassette_dir=nosuch"),
        (["-c", "alt.ini"], "--config-file=alt.ini"),  # an ini file of its own, whose cassette directory
    ],
)
@pytest.mark.usefixtures("with_key", "server")
def test_the_record_command_keeps_the_cassette_directory_it_was_given(
    pytester: pytest.Pytester, where: list[str], kept: str
) -> None:
    """A miss under another cassette directory prints a command that records into that directory, says
    that the directory does not exist, and after running the command the same run replays."""
    write_project(pytester)
    record(pytester, "-k", "test_chat")  # into cassettes/, the default
    pytester.path.joinpath("alt.ini").write_text(INI + "llm_cassette_dir = nosuch\n")

    missed = run(pytester, "-k", "test_chat", *where)

    missed.assert_outcomes(failed=1, deselected=2)
    command = f"pytest tests/test_app.py::test_chat --llm-record-mode=once {kept}"
    assert_lines_in(missed, f"    {command}\n", "the cassette directory nosuch does not exist")
    run(pytester, *shlex.split(command)[1:]).assert_outcomes(passed=1)
    run(pytester, "-k", "test_chat", *where).assert_outcomes(passed=1, deselected=2)


@pytest.mark.usefixtures("with_key", "server")
def test_stale_cassette_and_replace_commands_keep_the_cassette_directory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stale-cassette notice and a malformed cassette's fix name --llm-cassette-dir when it was given."""
    write_project(pytester, REPEAT_TESTS)
    monkeypatch.setenv("LEDGER_TEST_TIMES", "2")
    record(pytester, "-k", "test_repeat", "--llm-cassette-dir=elsewhere")
    monkeypatch.setenv("LEDGER_TEST_TIMES", "1")

    result = run(pytester, "-k", "test_repeat", "--llm-cassette-dir=elsewhere")

    assert_lines_in(
        result,
        "re-record them with pytest tests/test_app.py::test_repeat --llm-record-mode=rewrite "
        "--llm-cassette-dir=elsewhere",
    )
    (pytester.path / "elsewhere" / "tests" / "test_app" / "test_repeat.yaml").write_text("- [")
    result = run(pytester, "-k", "test_repeat", "--llm-cassette-dir=elsewhere")
    assert_lines_in(
        result,
        "to replace it with a fresh recording: pytest tests/test_app.py::test_repeat "
        "--llm-record-mode=rewrite --llm-cassette-dir=elsewhere",
    )


@pytest.mark.usefixtures("with_key")
def test_rewrite_replaces_and_new_episodes_appends(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rewrite keeps only this run's interactions; new_episodes adds unmatched ones; once refuses."""
    write_project(pytester)
    cassette = pytester.path / CASSETTES / "test_chat.yaml"

    def prompts() -> list[str]:
        return [i["request"]["json"]["messages"][0]["content"] for i in load_yaml(cassette)["interactions"]]

    record(pytester, "-k", "test_chat")
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "second prompt")
    once = run(pytester, "-k", "test_chat", "--llm-record-mode=once")
    assert once.ret == 1  # exists: replay strictly
    assert run(pytester, "-k", "test_chat", "--llm-record-mode=rewrite").ret == 0
    assert prompts() == ["second prompt"]
    monkeypatch.setenv("LEDGER_TEST_PROMPT", "third prompt")
    assert run(pytester, "-k", "test_chat", "--llm-record-mode=new_episodes").ret == 0
    assert prompts() == ["second prompt", "third prompt"]
    assert run(pytester, "-k", "test_chat", "--llm-record-mode=all").ret == 0
    assert prompts() == ["second prompt", "third prompt"]  # re-recorded in place, not appended


SECRETS = (
    *("sk-test-secret", "org-fake-secret", "proj_fake", "fake-secret-cookie", "x-stainless", "authorization"),
    *("x-request-id", "set-cookie", "openai-organization", "openai-project", "user-agent", "cookie"),
)


@pytest.mark.usefixtures("with_key")
def test_cassettes_hold_no_secrets_and_readable_bodies(pytester: pytest.Pytester, server: FakeOpenAI) -> None:
    """Keys, cookies, organisation/project ids and x-stainless headers never reach the files."""
    write_project(pytester)
    record(pytester)
    texts = {p.name: p.read_text() for p in (pytester.path / CASSETTES).iterdir()}
    for text in texts.values():
        lowered = text.lower()
        for secret in SECRETS:
            assert secret not in lowered
    stream = load_yaml(pytester.path / CASSETTES / "test_stream.yaml")["interactions"][0]
    assert stream["request"]["headers"] == {"content-type": "application/json"}
    assert set(stream["response"]["headers"]) == {"content-type"}
    events = stream["response"]["sse"]
    assert events[-1] == {"data": "[DONE]"}
    assert events[-2]["data"]["usage"]["total_tokens"] > 0  # parsed JSON, not an escaped string
    chat = load_yaml(pytester.path / CASSETTES / "test_chat.yaml")["interactions"][0]
    assert chat["response"]["json"]["choices"][0]["message"]["content"].startswith("Summary:")


RETRY_TESTS = """
import os

import openai
import pytest


@pytest.mark.llm
def test_retried():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=3) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "retry"}])
"""


@pytest.mark.usefixtures("with_key")
def test_throttled_and_server_errors_are_not_recorded(pytester: pytest.Pytester, server: FakeOpenAI) -> None:
    """429 and 5xx answers a retry got past are dropped at record time, so replay never sleeps through
    retries."""
    write_project(pytester, RETRY_TESTS)
    server.fail_next(429, 1)
    server.fail_next(503, 1)
    record(pytester)
    interactions = load_yaml(pytester.path / CASSETTES / "test_retried.yaml")["interactions"]
    assert [i["response"]["status"] for i in interactions] == [200]
    server.stop()
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.usefixtures("with_key")
# one xdist worker: the project has one test, which a second worker would only wait beside
@pytest.mark.parametrize(("status", "workers"), [(401, 0), (403, 1)], ids=["401", "403-xdist"])
def test_an_authentication_error_is_seen_live_and_never_recorded(
    pytester: pytest.Pytester, server: FakeOpenAI, status: int, workers: int
) -> None:
    """Recording with a wrong or expired key fails the test at once and writes no cassette, with a
    notice naming the answer (an xdist worker's too); recording again with a good key gives a cassette
    that replays offline."""
    write_project(pytester, RETRY_TESTS)
    server.fail_next(status)
    # with xdist the session runs in this process; its worker is a process of its own
    bad = run(pytester, *(["-n", str(workers)] if workers else []), "--llm-record-mode=once")
    bad.assert_outcomes(failed=1)
    bad.stdout.fnmatch_lines(
        [
            f"*{'AuthenticationError' if status == 401 else 'PermissionDeniedError'}*",
            "llm-ledger: 1 test(s) got authentication errors while recording, left out of their cassettes: "
            f"tests/test_app.py::test_retried ({status} POST /chat/completions); check the API key "
            "(OPENAI_API_KEY) and record again, or mark a test that expects them "
            "@pytest.mark.llm(record_auth_errors=True)",
        ]
    )
    assert not (pytester.path / CASSETTES / "test_retried.yaml").exists()
    record(pytester)
    interactions = load_yaml(pytester.path / CASSETTES / "test_retried.yaml")["interactions"]
    assert [i["response"]["status"] for i in interactions] == [200]
    server.stop()
    run(pytester).assert_outcomes(passed=1)


MALFORMED = {
    "truncated": "version: 1\ninteractions:\n- request: {method: POST, url: 'http://x/v1\n",
    "missing response": "version: 1\ninteractions:\n- request: {method: POST, url: 'http://x/v1'}\n",
    "python tag": "version: 1\ninteractions: !!python/object/apply:os.system ['touch pwned']\n",
    "wrong version": "version: 7\ninteractions: []\n",
    "bad status": "version: 1\ninteractions:\n- request: {method: GET, url: 'http://x'}\n"
    "  response: {status: 1}",
    # a merge conflict resolved by keeping both sides: YAML alone would keep the last value silently
    "duplicate key": "version: 1\ninteractions:\n- request: {method: GET, url: 'http://x'}\n"
    "  response:\n    status: 200\n    json: {usage: {prompt_tokens: 19, prompt_tokens: 1}}\n",
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_cassette_is_a_clear_error(pytester: pytest.Pytester, content: str) -> None:
    """A truncated, incomplete or hostile cassette fails its test naming the file, and runs nothing."""
    write_project(pytester)
    cassette = pytester.path / CASSETTES / "test_chat.yaml"
    cassette.parent.mkdir(parents=True)
    cassette.write_text(content)

    result = run(pytester, "-k", "test_chat")

    result.assert_outcomes(errors=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*cassettes/tests/test_app/test_chat.yaml*not a valid llm-ledger cassette*"
            "replace it with a fresh recording (--llm-record-mode=rewrite)",
            "  to replace it with a fresh recording: "
            "pytest tests/test_app.py::test_chat --llm-record-mode=rewrite",
        ]
    )
    out = result.stdout.str()
    assert out.count("not a valid llm-ledger cassette") == 1  # not again as a chained exception
    assert "During handling" not in out and "delete it" not in out
    assert not (pytester.path / "pwned").exists()


NAMING_TESTS = """
import os

import openai
import pytest


def call(text):
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])


@pytest.mark.llm
@pytest.mark.parametrize("lang", ["en", "fr/be"])
@pytest.mark.parametrize("n", [1])
def test_param(n, lang):
    call(f"{n} {lang}")


@pytest.mark.llm
@pytest.mark.parametrize("text", ["x" * 300])
def test_long(text):
    call(text[:10])


class TestGroup:
    @pytest.mark.llm
    def test_method(self):
        call("method")


@pytest.mark.llm
def test_no_calls():
    pass
"""


@pytest.mark.usefixtures("with_key", "server")
def test_cassette_names_are_stable_and_filesystem_safe(pytester: pytest.Pytester) -> None:
    """Names come from sorted parameter values, classes prefix methods, long or unsafe names get a hash."""
    write_project(pytester, NAMING_TESTS)
    record(pytester, "--llm-cassette-dir=recorded")
    names = sorted(p.name for p in (pytester.path / "recorded" / "tests" / "test_app").iterdir())
    assert len(names) == 4  # test_no_calls recorded nothing, so it has no file
    assert names[0] == "TestGroup.test_method.yaml"
    assert names[1].startswith("test_long[text=xxxx")
    assert len(names[1]) == 100 + len(".yaml")
    assert names[2] == "test_param[lang=en,n=1].yaml"
    # "/" is unsafe: replaced, plus a hash of the original so "fr/be" and "fr:be" get different files
    assert re.fullmatch(r"test_param\[lang=fr-be,n=1\]-[0-9a-f]{8}\.yaml", names[3])


VALUE_KIND_TESTS = """
import enum
import os

import openai
import pytest


class Kind(enum.Enum):
    CHAT = object()  # a value whose repr changes from run to run: the name is the member's


@pytest.mark.llm
@pytest.mark.parametrize("raw", [b"a\\xffb"])
@pytest.mark.parametrize("kind", [Kind.CHAT])
def test_kinds(kind, raw):
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
"""


@pytest.mark.usefixtures("with_key", "server")
def test_enum_and_bytes_parameters_name_a_cassette_by_their_text(pytester: pytest.Pytester) -> None:
    """An Enum parameter names its cassette as ``Class.MEMBER`` and a bytes parameter as its text (a
    non-ASCII byte escaped): stable from run to run, so the cassette recorded is the one replayed."""
    write_project(pytester, VALUE_KIND_TESTS)
    record(pytester, "--llm-cassette-dir=recorded")
    names = sorted(p.name for p in (pytester.path / "recorded" / "tests" / "test_app").iterdir())
    assert len(names) == 1 and re.fullmatch(
        r"test_kinds\[kind=Kind\.CHAT,raw=a-xffb\]-[0-9a-f]{8}\.yaml", names[0]
    )
    run(pytester, "--llm-cassette-dir=recorded").assert_outcomes(passed=1)


CASE_TESTS = """
import pytest


@pytest.mark.llm
@pytest.mark.parametrize("word", ["Yes", "yes", "no"])
def test_word(word):
    pass


@pytest.mark.llm
def test_Shout():
    pass


@pytest.mark.llm
def test_shout():
    pass
"""


def listed_cassettes(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The cassette file names the plugin picks for the tests ``args`` select, sorted."""
    result = run(pytester, "--collect-only", "--llm-list-cassettes=listing.json", *args)
    assert result.ret == 0, result.stdout.str()
    listing = json.loads((pytester.path / "listing.json").read_text())
    return sorted(Path(path).name for path in listing["cassettes"])


def test_names_that_differ_only_in_case_get_cassettes_apart(pytester: pytest.Pytester) -> None:
    """Parameters (or test names) differing only in case would name one file on macOS and Windows, and
    in a checkout there: each gets a short hash of its name, the same whichever tests a run selects;
    the names of the other tests do not change."""
    write_project(pytester, CASE_TESTS)

    names = listed_cassettes(pytester)

    assert len({name.lower() for name in names}) == len(names) == 5
    assert "test_word[word=no].yaml" in names
    twins = [name for name in names if name != "test_word[word=no].yaml"]
    assert all(re.fullmatch(r"test_(word\[word=[Yy]es\]|[Ss]hout)-[0-9a-f]{8}\.yaml", n) for n in twins), (
        twins
    )
    for nodeid in ("tests/test_app.py::test_word[yes]", "tests/test_app.py::test_Shout"):
        (alone,) = listed_cassettes(pytester, nodeid)
        assert alone in names


CASE_CLASS_TESTS = """
import pytest


class TestGroup:
    @pytest.mark.llm
    def test_one(self):
        pass


class Testgroup:
    @pytest.mark.llm
    def test_one(self):
        pass
"""


def test_tests_whose_cassettes_differ_only_in_case_elsewhere_fail(pytester: pytest.Pytester) -> None:
    """Classes whose names differ only in case name cassettes one file on macOS and Windows: the second
    test fails before it records, naming both tests and the fix."""
    write_project(pytester, CASE_CLASS_TESTS)

    result = run(pytester)

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "llm-ledger: tests/test_app.py::Testgroup::test_one would share its cassette "
            "cassettes/tests/test_app/Testgroup.test_one.yaml with tests/test_app.py::TestGroup::test_one "
            "on a case-insensitive file system (macOS, Windows), where it is the same file as "
            "cassettes/tests/test_app/TestGroup.test_one.yaml; rename one of the tests, classes or files*",
        ]
    )


SHARED_NAME_TESTS = """
import os

import openai
import pytest


class Doc:
    def __init__(self, text):
        self.text = text


@pytest.mark.llm
@pytest.mark.parametrize("doc", [Doc("first document"), Doc("second document")])
def test_doc(doc):
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": doc.text}])
"""


@pytest.mark.usefixtures("with_key", "server")
def test_two_tests_that_would_share_a_cassette_fail_before_recording(pytester: pytest.Pytester) -> None:
    """Parameters whose values name the same file (objects whose repr differs only by address) would
    overwrite each other's recording: the second test fails, naming both tests, the file and the fix,
    and the first one's cassette stays its own."""
    write_project(pytester, SHARED_NAME_TESTS)

    result = run(pytester, "--llm-record-mode=once")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            # (fnmatch: ? stands for the brackets)
            "llm-ledger: tests/test_app.py::test_doc?doc1? would share its cassette "
            "cassettes/tests/test_app/test_doc?doc=*?.yaml with tests/test_app.py::test_doc?doc0?: "
            "*Give the parameters values that differ, or their class a __repr__ that tells them apart*",
        ]
    )
    (cassette,) = (pytester.path / CASSETTES).iterdir()
    assert [i["request"]["json"]["messages"][0]["content"] for i in load_yaml(cassette)["interactions"]] == [
        "first document"
    ]
    replayed = run(pytester, "-k", "doc0")
    replayed.assert_outcomes(passed=1, deselected=1)


REPEATED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
@pytest.mark.parametrize("n", [1, 1], ids=["one", "uno"])
def test_same(n, llm_ledger):
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": str(n)}])
    assert llm_ledger.api_calls == 1
"""


@pytest.mark.usefixtures("with_key")
def test_repeated_runs_of_one_test_replay_one_cassette(pytester: pytest.Pytester, server: FakeOpenAI) -> None:
    """The repetitions of a test (pytest-repeat's --count, or equal parameter values under other
    ids) are one test run again: they record one cassette and each replays it in full, offline."""
    write_project(pytester, REPEATED_TESTS)

    record(pytester, "--count=2")  # pytest-repeat

    assert [p.name for p in (pytester.path / CASSETTES).iterdir()] == ["test_same[n=1].yaml"]
    assert len(server.requests) == 1
    server.stop()
    replayed = run(pytester, "--count=2")
    replayed.assert_outcomes(passed=4)


FLAKY_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

ATTEMPTS = []


@pytest.mark.llm
def test_flaky(llm_ledger):
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("flaky"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    ATTEMPTS.append(llm_ledger.api_calls)
    assert ATTEMPTS == [1] * len(ATTEMPTS)
    assert len(ATTEMPTS) == int(os.environ.get("LEDGER_TEST_PASS_AT", "1"))
"""


@pytest.mark.usefixtures("with_key")
def test_a_rerun_test_counts_its_last_attempt(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flaky test run again (pytest-rerunfailures' --reruns) starts each attempt with an empty
    llm_ledger fixture, and the totals and the report count its last attempt: the diff of a pull
    request whose flaky test passed on its second try shows no extra lens run or cost."""
    write_project(pytester, FLAKY_TESTS)
    record(pytester)
    server.stop()
    base = run(pytester, "--llm-report=base.json")
    assert base.ret == 0
    monkeypatch.setenv("LEDGER_TEST_PASS_AT", "2")

    result = run(pytester, "--llm-report=head.json", "--reruns", "1")

    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    report = json.loads((pytester.path / "head.json").read_text())
    assert report["lenses"] == json.loads((pytester.path / "base.json").read_text())["lenses"]
    assert (report["lenses"]["flaky"]["runs"], report["total"]["api_calls"]) == (1, 1)
    assert [row["calls"] for row in report["usage"]] == [1]


AUTH_FLAKY_TESTS = """
import os

import openai
import pytest

ATTEMPTS = []


@pytest.mark.llm
@pytest.mark.flaky(reruns=1)
def test_flaky_key():
    ATTEMPTS.append(1)
    denied = {"x-fake-status": "401"} if len(ATTEMPTS) == 1 else {}
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers=denied
            )
        except openai.AuthenticationError:
            pytest.fail("the key was refused")
"""


@pytest.mark.usefixtures("with_key")
def test_a_rerun_that_passes_drops_the_auth_error_of_its_failed_attempt(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """An authentication error of an attempt that pytest-rerunfailures ran again goes with that
    attempt, as its counts do: the rerun that recorded without one leaves no notice to check the key."""
    write_project(pytester, AUTH_FLAKY_TESTS)

    result = run(pytester, "--llm-record-mode=once")

    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    assert "authentication error" not in result.stdout.str()
    assert len(server.requests) == 2


LEAKY_FLAKY_TESTS = (
    LEAK_A_STREAM
    + """
ATTEMPTS = []


@pytest.mark.llm
@pytest.mark.flaky(reruns=1)
def test_flaky_leak(llm_ledger):
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        leak_a_stream("leaky")
        gc.disable()  # it stays open until the next attempt collects
        pytest.fail("the first attempt fails")
    gc.collect()
    gc.enable()
    assert llm_ledger.calls == []
"""
)


@pytest.mark.usefixtures("with_key")
def test_a_stream_a_failed_attempt_leaks_counts_in_no_attempt(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A stream that an attempt pytest-rerunfailures ran again left open, collected during the next
    attempt, goes with the attempt that started it: only the last attempt counts."""
    write_project(pytester, LEAKY_FLAKY_TESTS)

    result = run(pytester, "--llm-record-mode=once", "--llm-report=report.json")

    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    report = json.loads((pytester.path / "report.json").read_text())
    assert (report["total"]["api_calls"], report["lenses"]) == (0, {})


def test_bad_record_mode_in_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """An unknown llm_record_mode names the value, the ini file and the valid modes."""
    write_project(pytester)
    pytester.makefile(".ini", pytest=INI + "llm_record_mode = never\n")

    result = run(pytester)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*llm_record_mode = 'never' in *pytest.ini is not a record mode; use one of none, once, *"]
    )


@pytest.mark.parametrize("flag", ["--llm-record-mode=ONCE", "-ollm_record_mode=ONCE"])
def test_a_record_mode_is_read_whatever_its_case_as_flag_or_ini(pytester: pytest.Pytester, flag: str) -> None:
    """`--llm-record-mode=ONCE` is accepted, as `llm_record_mode = ONCE` in the ini (or -o) is."""
    write_project(pytester, "def test_nothing():\n    pass\n")

    result = run(pytester, flag, "-v")

    assert result.ret == pytest.ExitCode.OK, result.stderr.str()


def test_a_bad_record_mode_flag_quotes_it_and_names_the_modes(pytester: pytest.Pytester) -> None:
    """An unknown --llm-record-mode is quoted as typed, with the valid modes."""
    write_project(pytester, "def test_nothing():\n    pass\n")

    result = run(pytester, "--llm-record-mode=Never")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --llm-record-mode: 'Never' is not a record mode; use one of none, once, *"]
    )


KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"  # built: no secret scanner trips on it


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("llm_strict=maybe", "-o llm_strict=maybe: 'maybe' is not a boolean; use true or false"),
        ("llm_strict=", "-o llm_strict=: '' is not a boolean; use true or false"),  # -o llm_strict=$UNSET
        ("llm_record_mode=onc", "-o llm_record_mode=onc: 'onc' is not a record mode; use one of none, *"),
        ("llm_time_of_day=25:00", "llm-ledger: -o llm_time_of_day=25:00: '25:00' is not a time of day; *"),
        # a key pasted there (the wrong shell variable) is never printed: CI keeps the log
        (
            f"llm_strict={KEY}",
            "-o llm_strict=...: <36 characters not shown: they look like a credential> is not a boolean; *",
        ),
    ],
)
def test_a_bad_override_on_the_command_line_names_the_override_not_the_ini_file(
    pytester: pytest.Pytester, override: str, message: str
) -> None:
    """A bad value given with -o is blamed on the -o option the user typed, not on the ini file."""
    write_project(pytester, "def test_nothing():\n    pass\n")

    result = run(pytester, "-o", override)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "pytest.ini" not in result.stderr.str() and KEY[:12] not in result.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # a flag whose value was an unset variable: not the flag left out (no report, the ini's mode)
        (["--llm-report="], "llm-ledger: --llm-report is given an empty value (an unset variable in *"),
        (["--llm-baseline= "], "llm-ledger: --llm-baseline is given an empty value *"),
        (
            ["--llm-record-mode="],
            "llm-ledger: --llm-record-mode is given an empty value *; give it a value, or leave the flag "
            "out (for ini llm_record_mode's value)",
        ),
        (["--llm-time-of-day="], "llm-ledger: --llm-time-of-day is given an empty value *"),
        (["--llm-cassette-dir="], "llm-ledger: --llm-cassette-dir is given an empty value *"),
        # an empty path setting would be the project directory itself
        (["-o", "llm_cassette_dir="], "llm-ledger: -o llm_cassette_dir= is empty; give a path relative *"),
        (["-o", "llm_budget_file= "], "llm-ledger: -o 'llm_budget_file= ' is empty; give a path *"),
    ],
)
def test_an_empty_option_value_is_a_usage_error_not_the_option_left_out(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    """An option given an empty value says so, rather than running as if it were not given (no report
    written, the ini's record mode) or taking the project directory for the cassette directory."""
    write_project(pytester, "def test_nothing():\n    pass\n")

    result = run(pytester, *args)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--llm-cassette-dir=notes.txt"], "--llm-cassette-dir"),
        (["-o", "llm_cassette_dir=notes.txt"], "-o llm_cassette_dir=notes.txt"),
    ],
)
def test_a_cassette_directory_that_is_a_file_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], where: str
) -> None:
    """A cassette directory naming a file failed every marked test with a miss saying the directory "does
    not exist either", and told to record, which cannot write under a file. It is a usage error before
    any test runs, naming the setting and the fix."""
    write_project(pytester, "def test_nothing():\n    pass\n")
    (pytester.path / "notes.txt").write_text("not a directory\n")

    result = run(pytester, *args)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: llm-ledger: {where}: notes.txt is a file, not a directory; give the *"]
    )


OTHER_ENDPOINTS = """
import os

import openai
import pytest


@pytest.mark.llm
def test_responses_stream_and_embeddings():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        with client.responses.stream(model="gpt-4o-mini", input="Describe the plan") as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert text == final.output_text != ""
    assert final.usage.total_tokens > 0
    assert len(vectors.data) == 2
"""


@pytest.mark.usefixtures("with_key")
def test_responses_streams_and_embeddings_replay(pytester: pytest.Pytester, server: FakeOpenAI) -> None:
    """Named SSE events (Responses API) and base64 embeddings replay offline, stored readably."""
    write_project(pytester, OTHER_ENDPOINTS)
    record(pytester)
    server.stop()
    run(pytester).assert_outcomes(passed=1)
    cassette = load_yaml(pytester.path / CASSETTES / "test_responses_stream_and_embeddings.yaml")
    events = cassette["interactions"][0]["response"]["sse"]
    assert events[0]["event"] == "response.created"
    assert events[-1]["event"] == "response.completed"
    assert events[-1]["data"]["response"]["usage"]["total_tokens"] > 0


UPLOAD_TESTS = """
import io
import os

import openai
import pytest

AUDIO = b"RIFF\\x00\\xff\\xfe" + os.environ.get("LEDGER_TEST_AUDIO", "take one").encode()


@pytest.mark.llm
def test_transcribe():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        heard = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(AUDIO)))
    assert heard.text == "Summary: the recording"
"""


@pytest.mark.usefixtures("with_key")
def test_file_uploads_replay_and_a_changed_file_misses(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multipart upload (audio, files) replays although the client draws a new boundary for each
    request; another file's content still misses."""
    write_project(pytester, UPLOAD_TESTS)
    record(pytester)
    server.stop()

    run(pytester).assert_outcomes(passed=1)

    monkeypatch.setenv("LEDGER_TEST_AUDIO", "take two")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_lines_in(result, "llm-ledger: request not found in cassette ")


CONCURRENT_TESTS = """
import os
import threading

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_fan_out():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client, ledger.lens("fan_out"):
        def ask(i):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": i}])

        threads = [threading.Thread(target=ask, args=(t,)) for t in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
"""


@pytest.mark.usefixtures("no_key")
def test_concurrent_misses_print_one_message_and_no_ledger_records(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """Three concurrent calls that miss fail the test with one message and a count, and the
    plugin's records (calls, lens summary) stay out of pytest's captured log."""
    write_project(pytester, CONCURRENT_TESTS)

    result = run(pytester, "--log-level=INFO")

    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert out.count("llm-ledger: request not found in cassette") == 1
    assert "llm-ledger: 2 more request(s) of this test failed the same way; the first is shown" in out
    assert "llm_api_call" not in out and "lens_summary" not in out and "Captured log" not in out
    assert server.requests == []


MISSING_TESTS = """
import os
import unittest

import openai
import pytest

import llm_ledger as ledger


def ask():
    client = ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))
    with client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture
def answer():
    ask()


@pytest.mark.llm
def test_call_misses():
    ask()


@pytest.mark.llm
def test_setup_misses(answer):
    pass


@pytest.mark.llm
class TestCase(unittest.TestCase):
    def test_misses(self):
        ask()


def test_plain_failure():
    assert 1 == 2
"""

# counts the tracebacks pytest formats in the inner session (the costly step: it reads the source of
# every frame, openai's and httpx's included), by the type of their exception
COUNT_TRACEBACKS = """
import pytest

formatted = []
_getrepr = pytest.ExceptionInfo.getrepr


def getrepr(self, *args, **kwargs):
    formatted.append(type(self.value).__name__)
    return _getrepr(self, *args, **kwargs)


pytest.ExceptionInfo.getrepr = getrepr


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"tracebacks formatted: {formatted}")


def pytest_unconfigure():
    pytest.ExceptionInfo.getrepr = _getrepr
"""


@pytest.mark.usefixtures("no_key")
@pytest.mark.parametrize("tb", ["auto", "short", "no"])
def test_a_failure_the_plugin_words_builds_no_traceback(
    pytester: pytest.Pytester, server: FakeOpenAI, tb: str
) -> None:
    """A miss (in a test, its fixture or a unittest TestCase) fails with the plugin's message without
    pytest formatting the exception's traceback first (re-reading the SDK's sources, a tenth of a
    CPU-second or more per test), whatever --tb says; any other failure keeps its traceback."""
    write_project(pytester, MISSING_TESTS)
    pytester.makeconftest(COUNT_TRACEBACKS)

    result = run(pytester, f"--tb={tb}")

    result.assert_outcomes(failed=3, errors=1)
    result.stdout.fnmatch_lines(["tracebacks formatted: ['AssertionError']"])
    if tb != "no":
        out = result.stdout.str()
        assert out.count("the cassette file does not exist: this test has never been recorded") == 3
        assert "APIConnectionError" not in out
    assert server.requests == []
