"""A security review's findings: credentials that travel in other places than the API key (a gateway's
own header, the URL's user information, the organisation id), and hostile names in report output."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger._fake_server import error_body
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import Sdk
from tests.plugin_helpers import run, server_fixture, write_project
from tests.report_helpers import logging_to

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture,)  # used by name

GATEWAY_KEY = "goog-LEAKCHECK-0123456789abcdef"  # a gateway's own header (x-goog-api-key)
PASSWORD = "pw-LEAKCHECK-0123456789abcdef"  # https://user:PASSWORD@host, as some proxies are reached
ORG = "org-LEAKCHECK-0123456789"

GATEWAY_TESTS = f"""
import os

import openai
import pytest

import llm_ledger as ledger

BASE = os.environ["LEDGER_TEST_BASE_URL"]
PROMPT = os.environ.get("LEDGER_TEST_PROMPT", "hello")


def ask(client, echo):
    with client:
        ledger.instrument(client).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{{"role": "user", "content": PROMPT}}],
            extra_headers={{"x-fake-content": "the server echoes " + echo}},
        )


@pytest.mark.llm
def test_gateway_header():
    headers = {{"x-goog-api-key": {GATEWAY_KEY!r}}}
    query = {{"x-goog-api-key": "query-LEAKCHECK-0123456789"}}  # a name that is no usual query name
    client = openai.OpenAI(
        api_key="unused", base_url=BASE, default_headers=headers, default_query=query, max_retries=0
    )
    ask(client, {GATEWAY_KEY!r})


@pytest.mark.llm
def test_user_information():
    base = BASE.replace("http://", "http://user:{PASSWORD}@")
    ask(openai.OpenAI(api_key="unused", base_url=base, max_retries=0), {PASSWORD!r})


@pytest.mark.llm
def test_organization():
    ask(openai.OpenAI(api_key="unused", base_url=BASE, organization={ORG!r}, max_retries=0), {ORG!r})


@pytest.mark.llm
def test_other_host():
    import httpx

    httpx.get(BASE.replace("http://", "http://user:{PASSWORD}@") + "/health")
"""


def test_credentials_in_a_gateway_header_the_url_or_the_org_never_reach_a_cassette_or_a_message(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server echoing an ``x-goog-api-key``, a URL's password or the organisation id records none of
    them; a cassette miss and a request refused by network blocking quote the URL without its password."""
    write_project(pytester, GATEWAY_TESTS, "test_gateway")
    recorded = run(pytester, "--llm-record-mode=once", "-k", "not other_host")
    assert recorded.ret == 0, recorded.stdout.str()
    echoed = [a.body["choices"][0]["message"]["content"] for a in server.answers]
    assert all(any(s in text for text in echoed) for s in (GATEWAY_KEY, PASSWORD, ORG))  # really echoed
    files = sorted((pytester.path / "cassettes").rglob("*.yaml"))
    assert len(files) == 3
    for file in files:
        text = file.read_text()
        assert "LEAKCHECK" not in text, file
        assert "the server echoes REDACTED" in text, file
    assert "?x-goog-api-key=REDACTED" in files[0].read_text()  # test_gateway_header.yaml
    server.stop()
    run(pytester, "-k", "not other_host").assert_outcomes(passed=3)  # a redacted cassette still replays

    monkeypatch.setenv("LEDGER_TEST_PROMPT", "changed")
    missed = run(pytester, "--llm-block-network")
    missed.assert_outcomes(failed=4)
    out = missed.stdout.str()
    assert "API path of http://REDACTED@127.0.0.1:" in out  # the miss of test_user_information
    assert "request: GET http://REDACTED@127.0.0.1:" in out  # the request network blocking refused
    assert "LEAKCHECK" not in out


def test_scrub_redacts_a_url_password_and_what_the_request_body_named(tmp_path: Path) -> None:
    """``llm-ledger scrub`` on a vcrpy cassette: the URL's user information is redacted, and so is a key
    its request body named, where the response echoes it."""
    body_key = "body-LEAKCHECK-0123456789abcdef"
    cassette = tmp_path / "old.json"
    cassette.write_text(
        json.dumps(
            {
                "interactions": [
                    {
                        "request": {
                            "method": "POST",
                            "uri": f"https://user:{PASSWORD}@gateway.example/v1/chat/completions",
                            "body": json.dumps({"model": "m", "api_key": body_key}),
                            "headers": {},
                        },
                        "response": {
                            "status": {"code": 401, "message": "Unauthorized"},
                            "headers": {},
                            "body": {"string": json.dumps({"error": {"message": f"bad key {body_key}"}})},
                        },
                    }
                ],
                "version": 1,
            }
        )
    )
    assert main(["scrub", str(cassette)]) == 0
    text = cassette.read_text()
    assert "LEAKCHECK" not in text
    assert "https://REDACTED@gateway.example/v1/chat/completions" in text
    assert main(["scrub", "--check", str(cassette)]) == 0  # scrubbing again changes nothing


SECRET = "LEAKCHECK-credential-0123456789"  # what each route below carries, and the server echoes


def _client(route: str, base_url: str) -> openai.OpenAI:
    """A client whose credential travels by ``route``."""
    if route == "azure AD token":
        return openai.AzureOpenAI(azure_endpoint=base_url[:-3], api_version="v", azure_ad_token=SECRET)
    if route == "azure AD token provider":
        return openai.AzureOpenAI(
            azure_endpoint=base_url[:-3], api_version="v", azure_ad_token_provider=lambda: SECRET
        )
    if route == "URL password":
        return openai.OpenAI(api_key="placeholder", base_url=base_url.replace("//", f"//user:{SECRET}@"))
    headers = {
        "gateway header": {"x-goog-api-key": SECRET},
        "proxy authorization": {"Authorization": f"Bearer {SECRET}"},
    }
    query = {"key": SECRET} if route == "query key" else None
    return openai.OpenAI(
        api_key="placeholder", base_url=base_url, default_headers=headers.get(route), default_query=query
    )


def _sent(headers: dict[str, str]) -> str:
    """The request's headers as text, a Basic Authorization (a URL's user information) decoded."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return json.dumps(headers) + (base64.b64decode(value).decode() if scheme == "Basic" else "")


@pytest.mark.parametrize(
    "route",
    [
        "gateway header",
        "proxy authorization",
        "query key",
        "URL password",
        "azure AD token",
        "azure AD token provider",
    ],
)
def test_captured_content_is_scrubbed_of_every_credential_the_request_carried(
    fake_openai: FakeOpenAI, route: str
) -> None:
    """With content capture on, a key the request carried other than ``api_key`` (a gateway's header,
    a proxy's Authorization, a query key, a URL's password, an Azure AD token) is scrubbed from the
    error message and the output that echo it, streamed or not."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    messages: Any = [{"role": "user", "content": "hi"}]
    echo = {"x-fake-content": f"your key is {SECRET}"}
    with _client(route, fake_openai.base_url) as client, capture(monitor) as records:
        monitor.instrument(client)
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=echo)
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, extra_headers=echo, stream=True
        ):
            pass
        fake_openai.fail_next(401, body=error_body(401, f"Incorrect API key provided: {SECRET}"))
        with pytest.raises(openai.AuthenticationError, match=SECRET) as raised:  # the caller sees the SDK's
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert all(SECRET in _sent(r.headers) + r.query for r in fake_openai.requests)  # really sent
    assert [r["content"]["output"] for r in records.calls[:2]] == ["your key is [REDACTED]"] * 2
    # the SDK's message (openai 3.x gives the error's text, 1.x and 2.x the whole body), key redacted
    assert records.calls[2]["error"]["message"] == str(raised.value).replace(SECRET, "[REDACTED]")
    assert "Incorrect API key provided: [REDACTED]" in records.calls[2]["error"]["message"]
    assert SECRET not in json.dumps(records.records)


def test_a_ledger_failure_while_recording_an_error_logs_no_traceback_of_the_sdks_error(
    fake_openai: FakeOpenAI, internal_log: pytest.LogCaptureFixture
) -> None:
    """A sink failing on an error's record is reported with its own traceback only: not the SDK's
    error it was raised while handling, whose message quotes the answer (an echoed key, the prompt)."""

    def failing_sink(record: Mapping[str, Any]) -> None:
        raise RuntimeError("sink down")

    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[failing_sink])
    with openai.OpenAI(api_key=SECRET, base_url=fake_openai.base_url, max_retries=0) as client:
        monitor.instrument(client)
        fake_openai.fail_next(400, body=error_body(400, f"{SECRET} cannot say CANARY-PROMPT"))
        with pytest.raises(openai.BadRequestError, match="CANARY-PROMPT"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    [reported] = internal_log.records
    logged = logging.Formatter().format(reported)
    assert "RuntimeError: sink down" in logged and "Traceback" in logged  # the sink's own failure
    assert "BadRequestError" not in logged and "CANARY-PROMPT" not in logged and SECRET not in logged


# an end user's or a document's text, as the application passes it on as a lens key or a user id
HOSTILE = {
    "image": "![x](https://evil.example/pixel.png)",
    "link and mention": "@octocat [click](https://evil.example)",
    "html after unmatched backticks": "``<img src=https://evil.example/p.png>`",
    "terminal escapes": "esc\x1b[2J\x1b]8;;https://evil.example\x07link\x1b]8;;\x07\x9b0m",
    "bidi override": "invoice\u202egnp.exe",
}


def test_hostile_names_are_shown_never_run_in_markdown_or_a_terminal(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lens keys and context values holding Markdown, HTML, @mentions or terminal control sequences
    are shown as text: each a code span in ``report`` and ``reprice`` Markdown (a PR comment), and
    with every control character escaped in the text tables (a terminal, a CI log)."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for name in HOSTILE.values():
            with monitor.lens(name, user_id=name):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
    assert main(["report", str(path), "--by", "user_id", "--format", "markdown"]) == 0
    report = capsys.readouterr().out
    assert main(["reprice", str(path), "--format", "markdown"]) == 0
    reprice = capsys.readouterr().out
    for markdown in (report, reprice):
        assert "| `![x](https://evil.example/pixel.png)` |" in markdown
        assert "| `@octocat [click](https://evil.example)` |" in markdown
        assert "| ``` ``<img src=https://evil.example/p.png>` ``` |" in markdown
        assert "| `esc\\x1b[2J\\x1b]8;;https://evil.example\\x07link\\x1b]8;;\\x07\\x9b0m` |" in markdown
    for command in (["report", str(path), "--by", "lens"], ["report", str(path), "--by", "user_id"]):
        assert main(command) == 0
        text = capsys.readouterr().out
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), text
        assert "esc\\x1b[2J\\x1b]8;;https://evil.example\\x07link" in text and "invoice\\u202egnp.exe" in text
        widths = {len(line) for line in text.splitlines()[:7]}  # the header, the rule and the five rows
        assert len(widths) == 1, text  # an escape shown takes the room it is given


TERMINAL_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_titled():
    with ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)) as c:
        with ledger.lens("report\\x1b]0;pwned\\x07\\u202eend\\n::error title=CI::forged"):
            with pytest.raises(openai.BadRequestError):
                c.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-fake-status": "400"},
                )
"""


def test_the_plugins_terminal_summary_shows_a_lens_key_never_runs_it(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A lens key holding a terminal's control sequence (here: set the window title), a bidi override
    and a line break followed by a GitHub Actions command is written escaped, on its own line, in the
    per-lens table, the line naming the lens whose call failed and the notice of lenses with no budget."""
    write_project(pytester, TERMINAL_TESTS, "test_terminal")
    pytester.makefile(".yaml", budgets="lenses:\n  other: {max_cost_usd: 1}\n")
    result = run(pytester, "--llm-record-mode=once", "--llm-budget")
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert not any(c in out for c in "\x1b\x07\u202e"), out
    assert not any(line.startswith("::") for line in result.stdout.lines), out  # no forged CI command
    shown = "report\\x1b]0;pwned\\x07\\u202eend\\n::error title=CI::forged"
    assert any(line.startswith(shown[:30]) and "$0.000000" in line for line in result.stdout.lines)  # table
    assert any(line.startswith("failed: ") and shown in line for line in result.stdout.lines)
    assert any("ran with no budget" in line and shown in line for line in result.stdout.lines)


def test_scrub_check_prints_a_hostile_cassettes_keys_on_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger scrub --check`` in CI on a cassette from a pull request: a JSON key holding a line
    break and a GitHub Actions command, or a terminal escape, is printed escaped within its finding."""
    cassette = tmp_path / "hostile.json"
    key = "x\n::error title=CI::forged\x1b[2J"
    request = {
        "method": "POST",
        "uri": "https://h/v1/chat/completions",
        "body": json.dumps({key: {"api_key": "k"}}),
    }
    response = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": "{}"}}
    cassette.write_text(
        json.dumps({"interactions": [{"request": request, "response": response}], "version": 1})
    )
    assert main(["scrub", "--check", str(cassette)]) == 1
    out = capsys.readouterr().out
    assert "JSON field $.x\\n::error title=CI::forged\\x1b[2J.api_key redacted" in out
    assert "\x1b" not in out and not any(line.startswith("::") for line in out.splitlines())


AZURE_LIKE = "azure0LEAKCHECK0123456789abcdef"  # not key-shaped: a secret by its parameter's name
SK_LIKE = "sk-proj-LEAKCHECK0123456789abcdef"
PARAM_TESTS = f"""
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
@pytest.mark.parametrize("api_key", [{AZURE_LIKE!r}, {SK_LIKE!r}, "EMPTY"])
def test_per_key(api_key):
    with ledger.instrument(
        openai.OpenAI(api_key=api_key, base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    ) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
"""


def test_a_key_among_a_tests_parameters_is_neither_in_its_cassettes_name_nor_in_the_file(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test parametrized by API key names its cassettes by a hash of each key (a placeholder such as
    ``EMPTY`` stays readable), their heading redacts it and re-records the function; they replay."""
    write_project(pytester, PARAM_TESTS, "test_param")
    recorded = run(pytester, "--llm-record-mode=once")
    assert recorded.ret == 0, recorded.stdout.str()
    files = sorted((pytester.path / "cassettes").rglob("*.yaml"))
    names = [f.name for f in files]
    assert len(names) == 3 and "test_per_key[api_key=EMPTY].yaml" in names
    assert all(
        n == "test_per_key[api_key=EMPTY].yaml" or n.startswith("test_per_key[api_key=REDACTED-")
        for n in names
    )
    for file in files:
        text = file.read_text()
        assert "LEAKCHECK" not in text, (file.name, text[:300])
        if "EMPTY" not in file.name:
            assert "re-record: pytest tests/test_param.py::test_per_key --llm" in text
    server.stop()
    run(pytester, "--llm-record-mode=none").assert_outcomes(passed=3)
    assert main(["scrub", "--check", str(pytester.path / "cassettes")]) == 0
    capsys.readouterr()


def test_scrub_redacts_a_key_in_the_comment_heading_an_older_cassette(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cassette recorded before parameters were redacted names the key in its heading's node id:
    ``scrub --check`` finds it, ``scrub`` redacts it and keeps the rest of the heading."""
    cassette = tmp_path / "test_per_key.yaml"
    cassette.write_text(
        f"# llm-ledger cassette for t.py::test_per_key[{SK_LIKE}]\n# re-record: pytest t.py\n"
        "version: 1\ninteractions: []\n"
    )
    assert main(["scrub", "--check", str(cassette)]) == 1
    assert "the comment heading the file: 1 secret key(s) shaped sk-... redacted" in capsys.readouterr().out
    assert main(["scrub", str(cassette)]) == 0
    assert cassette.read_text().startswith(
        "# llm-ledger cassette for t.py::test_per_key[sk-REDACTED]\n# re-record: pytest t.py\n"
    )


def test_a_yaml_error_never_quotes_a_key_written_as_a_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML quotes the tag it cannot build; one that holds a key is described, not quoted, while a
    Python tag is still named (the reason it is refused)."""
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(f"version: 1\ninteractions: !{SK_LIKE} []\n")
    python = tmp_path / "python.yaml"
    python.write_text("version: 1\ninteractions: !!python/object/apply:os.system ['true']\n")
    assert main(["scrub", "--check", str(hostile), str(python)]) == 2
    err = capsys.readouterr().err
    assert "LEAKCHECK" not in err
    assert (
        "hostile.yaml:2: invalid YAML: could not determine a constructor for the tag <34 characters not "
        "shown: they look like a credential>" in err
    )
    assert (
        "python.yaml:2: invalid YAML: could not determine a constructor for the tag '!!python/object" in err
    )
