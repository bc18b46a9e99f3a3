"""Cassettes are credential-free by construction: whatever carries a key, the recorded file does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401
import yaml

import llm_ledger  # noqa: F401
from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import (
    INI,
    cli,
    collect_in_process_fixture,
    load_yaml,
    no_key_fixture,
    notice_fails_strict,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytest_plugins = ["pytester"]
_FIXTURES = (collect_in_process_fixture, no_key_fixture, recorded_fixture, server_fixture, with_key_fixture)

CASSETTES = Path("cassettes", "tests", "test_keys")
# one credential per route a key can take into a recording; none is the process's OPENAI_API_KEY
QUERY_KEY = "sk-query-LEAKCHECK-0123456789"
AZURE_KEY = "azureLEAKCHECK0123456789abcdef"  # not sk-shaped: found because the request carried it
AZURE_QUERY_KEY = "azq-LEAKCHECK-0123456789abcdef"
BODY_KEY = "sk-body-LEAKCHECK-0123456789"
ECHOED_KEY = "sk-echo-LEAKCHECK-0123456789"
SHORT_SECRETS = {"code": "fn-LEAKCHECK-code", "sig": "LEAKCHECKsig", "token": "LEAKCHECK-token"}

KEY_TESTS = f"""
import os

import openai
import pytest

BASE = os.environ["LEDGER_TEST_BASE_URL"]
ROOT = BASE.removesuffix("/v1")
PROMPT = os.environ.get("LEDGER_TEST_PROMPT", "hello")
BODY_KEY = os.environ.get("LEDGER_TEST_BODY_KEY", {BODY_KEY!r})


def ask(client, **options):
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{{"role": "user", "content": PROMPT}}], **options
    )
    assert reply.choices[0].message.content.startswith("Summary:")


@pytest.mark.llm
def test_query_key():
    query = {{"api-key": {QUERY_KEY!r}, "subscription-key": {QUERY_KEY!r}, **{SHORT_SECRETS!r}}}
    with openai.OpenAI(base_url=BASE, default_query=query, max_retries=0) as client:
        ask(client)


@pytest.mark.llm(record_auth_errors=True)  # its 401 is expected: recorded, and replayed
def test_azure_key():
    with openai.AzureOpenAI(
        api_key={AZURE_KEY!r},
        api_version="2024-10-21",
        azure_endpoint=ROOT,
        default_query={{"api-key": {AZURE_QUERY_KEY!r}}},
        max_retries=0,
    ) as client:
        ask(client)
        with pytest.raises(openai.AuthenticationError):  # the server echoes the api-key header
            ask(client, extra_headers={{"x-fake-status": "401"}})


@pytest.mark.llm
def test_body_key():
    with openai.OpenAI(base_url=BASE, max_retries=0) as client:
        ask(client, extra_body={{"api_key": BODY_KEY, "metadata": {{"note": "key " + BODY_KEY}}}})


@pytest.mark.llm(record_auth_errors=True)
def test_echoed_key():
    with openai.OpenAI(api_key={ECHOED_KEY!r}, base_url=BASE, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            ask(client, extra_headers={{"x-fake-status": "401"}})
"""
SECRETS = (QUERY_KEY, AZURE_KEY, AZURE_QUERY_KEY, BODY_KEY, ECHOED_KEY, "LEAKCHECK")


def scrub_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_ledger", "scrub", "--check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.usefixtures("with_key")
def test_recorded_cassettes_pass_scrub_check_and_replay_offline(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys in a query, Azure's header and query, a body field and a 401 echo never reach the file;
    ``scrub --check`` passes with a one-line summary, and every test replays with the server stopped."""
    write_project(pytester, KEY_TESTS, "test_keys")
    recorded = run(pytester, "--llm-record-mode=once")
    assert recorded.ret == 0, recorded.stdout.str()
    sent = {f"{r.headers} {unquote(r.query)} {r.raw_body.decode()}" for r in server.requests}
    assert all(any(secret in text for text in sent) for secret in SECRETS[:5])  # each key was really sent
    assert any(r.path.startswith("/openai/deployments/") for r in server.requests)
    directory = pytester.path / "cassettes"
    files = sorted(directory.rglob("*.yaml"))
    assert [f.name for f in files] == [
        "test_azure_key.yaml",
        "test_body_key.yaml",
        "test_echoed_key.yaml",
        "test_query_key.yaml",
    ]
    for file in files:
        text = file.read_text()
        assert [s for s in (*SECRETS, *SHORT_SECRETS.values()) if s in text] == [], file
    query = load_yaml(directory / "tests" / "test_keys" / "test_query_key.yaml")["interactions"][0]
    assert "api-key=REDACTED" in query["request"]["url"] and "code=REDACTED" in query["request"]["url"]
    echoed = load_yaml(directory / "tests" / "test_keys" / "test_azure_key.yaml")["interactions"][1]
    assert echoed["response"]["status"] == 401
    assert echoed["response"]["json"]["error"]["message"] == "Incorrect API key provided: REDACTED."
    assert echoed["response"]["json"]["error"]["code"] == "invalid_api_key"  # not a credential field

    check = scrub_check(directory)
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout == "llm-ledger scrub: 4 cassette(s) checked, no credentials or identifiers found\n"

    server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("LEDGER_TEST_BODY_KEY", "sk-another-key-in-ci-0123456789")  # redacted alike
    run(pytester).assert_outcomes(passed=4)


@pytest.mark.usefixtures("with_key")
def test_scrubbed_old_cassette_replays_and_misses_never_show_a_key(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cassette holding a body key (as older versions wrote it, or a hand edit) fails its test, naming
    the cassette and the ``scrub`` command, never the key: CI fails closed on a committed secret. Once
    scrubbed it replays; a miss diff shows the prompt that changed, never the key."""
    write_project(pytester, KEY_TESTS, "test_keys")
    assert run(pytester, "--llm-record-mode=once", "-k", "test_body_key").ret == 0
    server.stop()
    cassette = pytester.path / CASSETTES / "test_body_key.yaml"
    doc = yaml.safe_load(cassette.read_text())
    doc["interactions"][0]["request"]["json"]["api_key"] = BODY_KEY  # what the old recorder kept
    cassette.write_text(yaml.safe_dump(doc))
    assert scrub_check(cassette).returncode == 1
    leaked = run(pytester, "-k", "test_body_key")
    leaked.assert_outcomes(errors=1, deselected=3)
    leaked.stdout.fnmatch_lines(
        [
            "cassettes/tests/test_keys/test_body_key.yaml: holds credentials or identifiers (llm-ledger "
            "scrub --check: interactions[0].request.json: JSON field $.api_key redacted); remove them "
            "with: llm-ledger scrub cassettes/tests/test_keys/test_body_key.yaml (from every cassette: "
            "llm-ledger scrub cassettes), and revoke any key they held"
        ]
    )
    assert "LEAKCHECK" not in leaked.stdout.str()

    scrubbed = subprocess.run(
        [sys.executable, "-m", "llm_ledger", "scrub", str(cassette)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert scrubbed.returncode == 0 and BODY_KEY not in cassette.read_text()
    run(pytester, "-k", "test_body_key").assert_outcomes(passed=1, deselected=3)

    monkeypatch.setenv("LEDGER_TEST_PROMPT", "changed prompt")
    missed = run(pytester, "-k", "test_body_key")
    missed.assert_outcomes(failed=1, deselected=3)
    out = missed.stdout.str()
    assert "$.messages[0].content: recorded 'hello', requested 'changed prompt'" in out
    assert "the body differs at 1 place(s)" in out  # api_key and the note match once redacted
    assert BODY_KEY not in out and "LEAKCHECK" not in out


@pytest.mark.usefixtures("no_key")
def test_cassettes_that_kept_extra_headers_are_fixed_by_one_scrub_command(recorded: pytest.Pytester) -> None:
    """Cassettes written with headers the allow-list leaves out (an older version, a vcrpy cassette
    converted by hand: ``x-request-id``...) fail their tests, each naming its file's command and the one
    for every cassette; that one command makes them all replay."""
    folder = recorded.path / "cassettes" / "tests" / "test_app"
    for name in ("test_chat", "test_stream"):
        doc = load_yaml(folder / f"{name}.yaml")
        doc["interactions"][0]["response"]["headers"]["x-request-id"] = "req_123"
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))

    old = run(recorded)
    old.assert_outcomes(passed=1, errors=2)
    old.stdout.fnmatch_lines(
        [
            f"cassettes/tests/test_app/{name}.yaml: holds credentials or identifiers (llm-ledger scrub "
            "--check: interactions[0].response.headers: dropped x-request-id); remove them with: "
            f"llm-ledger scrub cassettes/tests/test_app/{name}.yaml (from every cassette: llm-ledger scrub "
            "cassettes), and "
            "revoke any key they held"
            for name in ("test_chat", "test_stream")
        ],
        consecutive=False,
    )
    scrub = subprocess.run(
        [sys.executable, "-m", "llm_ledger", "scrub", "cassettes"],
        cwd=recorded.path,
        capture_output=True,
        text=True,
    )
    assert scrub.returncode == 0, scrub.stderr
    run(recorded).assert_outcomes(passed=3)


DENIED_TESTS = """
import os

import openai
import pytest


@pytest.mark.llm{marker}
def test_denied():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{{"role": "user", "content": "hello"}}],
                extra_headers={{"x-fake-status": "401"}},
            )
"""


# the session's notice and `llm-ledger cassettes` say it in the same words
REPLAYED_401 = (
    "1 cassette(s) replay an authentication error (401/403) their test does not expect, recorded with a "
    "wrong or expired key (CI replays it whatever key it has); re-record each with the key set:"
)
OR_MARK = "or mark a test that expects the error @pytest.mark.llm(record_auth_errors=True)"


@pytest.mark.usefixtures("with_key", "collect_in_process")
def test_a_cassette_that_replays_an_auth_error_is_named_with_the_rerecord_command(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cassette holding a 401 answer its test does not expect (recorded before llm-ledger left them
    out) would replay an auth error in every CI run: replaying it is a notice naming the test, the
    cassette and the re-record command (a failure with --llm-strict), and `llm-ledger cassettes`
    lists it (exit 1). A test marked record_auth_errors=True expects its 401: neither names it."""
    app = write_project(pytester, DENIED_TESTS.format(marker="(record_auth_errors=True)"))
    # `llm-ledger cassettes` collects under this ini: without the plugins the project never uses (FAST_ARGS)
    pytester.makefile(".ini", pytest=INI + "addopts = -p no:hypothesispytest -p no:anyio\n")
    assert run(pytester, "--llm-record-mode=once").ret == 0
    server.stop()

    def cassettes() -> subprocess.CompletedProcess[str]:
        return cli(capsys, "cassettes")

    expected = run(pytester, "--llm-strict")
    assert expected.ret == pytest.ExitCode.OK and "401" not in expected.stdout.str()
    assert cassettes().returncode == 0

    app.write_text(DENIED_TESTS.format(marker=""))  # as a cassette recorded before the refusal (same ini)
    notice_fails_strict(
        pytester,
        notice=[
            f"llm-ledger: {REPLAYED_401} pytest tests/test_app.py::test_denied --llm-record-mode=rewrite, "
            f"{OR_MARK}: tests/test_app.py::test_denied (cassettes/tests/test_app/test_denied.yaml: 401 "
            "POST /chat/completions)"
        ],
    )
    listed = cassettes()
    assert listed.returncode == 1, listed.stderr
    assert (
        f"{REPLAYED_401} pytest NODE_ID... --llm-record-mode=rewrite, {OR_MARK}:\n"
        "  cassettes/tests/test_app/test_denied.yaml: 401 POST /chat/completions\n"
    ) in listed.stdout

    # a cassette directory given on the command line is kept in both commands
    (pytester.path / "cassettes").rename(pytester.path / "elsewhere")
    moved = run(pytester, "--llm-cassette-dir=elsewhere")
    command = "--llm-record-mode=rewrite --llm-cassette-dir=elsewhere, "
    assert f"pytest tests/test_app.py::test_denied {command}" in moved.stdout.str()
    listed = cli(capsys, "cassettes", "--", "--llm-cassette-dir=elsewhere")
    assert (listed.returncode, f"pytest NODE_ID... {command}" in listed.stdout) == (1, True), listed
