"""`llm-ledger scrub`: credentials and identifiers leave existing cassettes, which still replay."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path
from typing import Any

import openai
import pytest
import vcr
import yaml

from llm_ledger import CassetteError
from llm_ledger._cli import build_parser, main
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger import _scrub
from pytest_llm_ledger._cassette import LedgerCassette
from pytest_llm_ledger._secrets import CredentialRedactor
from tests.plugin_helpers import run, server_fixture, with_key_fixture, write_project
from tests.reliability_helpers import FAKE_KEY

_FIXTURES = (server_fixture, with_key_fixture)  # used by name

pytestmark = [pytest.mark.reliability, pytest.mark.sdk_independent]

# every value a recording against the fake server (or a careless team) can leak
SECRETS = (
    FAKE_KEY,
    "LEAKCHECK",
    "org-fake-secret",
    "proj_fake",
    "fake-secret-cookie",
    "Bearer",
    "x-stainless",
    "user-agent",
)


def _record(server: FakeOpenAI, path: Path, serializer: str, *, leaky_body: bool = True) -> list[Any]:
    """Record a plain vcrpy cassette the way teams without llm-ledger do; returns what the calls gave."""
    extra_body = {"api_key": FAKE_KEY} if leaky_body else None
    query = {"api_key": FAKE_KEY} if leaky_body else None
    results: list[Any] = []
    with (
        vcr.use_cassette(str(path), serializer=serializer, record_mode="all"),
        openai.OpenAI(
            api_key=FAKE_KEY,
            organization="org-LEAKCHECK",
            project="proj_LEAKCHECK",
            base_url=server.base_url,
            default_headers={"Cookie": "session=LEAKCHECK"},
            default_query=query,
            max_retries=0,
        ) as client,
    ):
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}], extra_body=extra_body
        )
        results.append(answer.choices[0].message.content)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True
        )
        results.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    return results


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["scrub", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("serializer", ["yaml", "json"])
def test_check_lists_what_would_go_and_changes_nothing(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str], serializer: str
) -> None:
    """--check exits 1 naming each header, query parameter and JSON field, without printing a secret."""
    path = tmp_path / f"cassette.{serializer}"
    _record(fake_openai, path, serializer)
    before = path.read_bytes()
    status, out, err = _run(capsys, "--check", str(path))
    assert status == 1, err
    assert path.read_bytes() == before
    assert "dropped" in out and "authorization" in out and "set-cookie" in out
    assert "query parameter 'api_key' redacted" in out
    assert "JSON field $.api_key redacted" in out
    assert "llm-ledger scrub" in out  # the command that fixes it
    assert FAKE_KEY not in out and "LEAKCHECK" not in out and "fake-secret" not in out


@pytest.mark.parametrize("serializer", ["yaml", "json"])
def test_scrub_removes_every_secret_and_is_idempotent(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str], serializer: str
) -> None:
    """After scrub no key, cookie, org/project id or SDK header is left; a second --check finds nothing."""
    path = tmp_path / f"cassette.{serializer}"
    _record(fake_openai, path, serializer)
    status, out, err = _run(capsys, str(path))
    assert status == 0, err
    assert "scrubbed" in out
    text = path.read_text()
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), secret
    assert "content-type" in text  # the allow-list keeps what replay needs
    assert _run(capsys, "--check", str(path))[0] == 0


def test_scrubbed_vcrpy_cassette_still_replays(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scrubbed vcrpy cassette replays offline to the same answers (plain and streamed)."""
    path = tmp_path / "cassette.yaml"
    recorded = _record(fake_openai, path, "yaml", leaky_body=False)
    assert _run(capsys, str(path))[0] == 0
    fake_openai.reset()
    replayed: list[Any] = []
    with (
        vcr.use_cassette(str(path), record_mode="none"),
        openai.OpenAI(
            api_key="sk-other-key-for-replay", base_url=fake_openai.base_url, max_retries=0
        ) as client,
    ):
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}]
        )
        replayed.append(answer.choices[0].message.content)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True
        )
        replayed.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert replayed == recorded
    assert fake_openai.requests == []  # served from the cassette


def _vcr_doc(request_body: Any, response_body: Any, response_headers: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "interactions": [
            {
                "request": {
                    "body": request_body,
                    "headers": {
                        "Authorization": [f"Bearer {FAKE_KEY}"],
                        "Content-Type": ["application/json"],
                    },
                    "method": "POST",
                    "uri": f"https://api.openai.com/v1/embeddings?key={FAKE_KEY}&api-version=2024-10-21",
                },
                "response": {
                    "body": {"string": response_body},
                    "headers": response_headers,
                    "status": {"code": 200, "message": "OK"},
                },
            }
        ],
        "version": 1,
    }


def test_compressed_and_sse_bodies_are_scrubbed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Secrets inside a gzip body and inside SSE events are found; the gzip body is stored decoded."""
    leaky = json.dumps({"data": [], "echo": {"access_token": "tok-LEAKCHECK", "note": f"key {FAKE_KEY}"}})
    path = tmp_path / "gz.yaml"
    doc = _vcr_doc(
        f"data: {json.dumps({'api_key': FAKE_KEY})}\n\ndata: [DONE]\n\n",
        gzip.compress(leaky.encode()),
        {"Content-Encoding": ["gzip"], "Content-Type": ["application/json"]},
    )
    path.write_text(yaml.safe_dump(doc))
    status, out, err = _run(capsys, str(path))
    assert status == 0, err
    text = path.read_text()
    assert "LEAKCHECK" not in text and FAKE_KEY not in text
    assert "api-version=2024-10-21" in text  # a query parameter that is not a credential stays
    scrubbed = yaml.safe_load(text)["interactions"][0]
    assert "Content-Encoding" not in scrubbed["response"]["headers"]
    assert json.loads(scrubbed["response"]["body"]["string"])["echo"]["access_token"] == "REDACTED"
    assert "query parameter 'key' redacted" in out


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (gzip.compress(b'{"data": [], "note": "nothing secret"}'), "gzip"),  # decoded, nothing found
        (bytes(range(256)), ""),  # binary (audio, an image): no text to search
        (b"\x1f\x9d\x90 compressed", "compress"),  # an encoding the scrubber cannot undo
    ],
    ids=["clean-gzip", "binary", "unknown-encoding"],
)
def test_a_response_body_with_nothing_to_scrub_is_left_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, encoding: str
) -> None:
    """A byte body that holds no secret (or none the scrubber can read) keeps its bytes and its
    Content-Encoding header, so it replays as recorded; the request's credentials still go."""
    headers = {"Content-Type": ["application/octet-stream"]}
    if encoding:
        headers["Content-Encoding"] = [encoding]
    path = tmp_path / "clean.yaml"
    path.write_text(yaml.safe_dump(_vcr_doc("{}", body, headers)))
    status, _, err = _run(capsys, str(path))
    assert status == 0, err
    scrubbed = yaml.safe_load(path.read_text())["interactions"][0]
    assert scrubbed["response"]["body"]["string"] == body
    assert scrubbed["response"]["headers"] == headers
    assert FAKE_KEY not in path.read_text()


def test_llm_ledger_cassettes_keep_their_header_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """llm-ledger's own cassettes are scrubbed too (json and sse bodies) and keep their leading comments."""
    path = tmp_path / "ledger.yaml"
    path.write_text(
        "# llm-ledger cassette for tests/test_x.py::test_y\n# re-record: pytest ...\n"
        "version: 1\ninteractions:\n- request:\n    method: POST\n    url: https://api.openai.com/v1/responses\n"
        "    headers: {content-type: application/json, x-api-key: secret}\n"
        f"    json: {{model: gpt-4o-mini, input: hi, api_key: {FAKE_KEY}}}\n"
        "  response:\n    status: 200\n    headers: {content-type: text/event-stream}\n"
        f"    sse:\n    - {{event: response.created, data: {{type: response.created, note: {FAKE_KEY}}}}}\n"
    )
    assert _run(capsys, str(path))[0] == 0
    text = path.read_text()
    assert text.startswith("# llm-ledger cassette for tests/test_x.py::test_y\n# re-record: pytest ...\n")
    assert FAKE_KEY not in text and "x-api-key" not in text
    assert yaml.safe_load(text)["interactions"][0]["request"]["json"]["api_key"] == "REDACTED"


def test_a_symlinked_cassette_is_scrubbed_in_the_file_it_points_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cassette directory holding a link to a shared cassette: its target is scrubbed and the link
    kept, not the link replaced by a scrubbed copy while the shared file keeps the secret."""
    shared = tmp_path / "shared" / "c.yaml"
    shared.parent.mkdir()
    shared.write_text(yaml.safe_dump(_vcr_doc("{}", "{}", {"Set-Cookie": ["session=LEAKCHECK"]})))
    link = tmp_path / "cassettes" / "c.yaml"
    link.parent.mkdir()
    link.symlink_to(os.path.join("..", "shared", "c.yaml"))
    status, out, err = _run(capsys, str(link.parent))
    assert status == 0, err
    assert "scrubbed" in out
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert "LEAKCHECK" not in shared.read_text()
    assert sorted(os.listdir(shared.parent)) == ["c.yaml"]  # no temporary file left beside it


def test_rewrite_is_atomic_and_keeps_the_file_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rewrite leaves the original file and no temporary file; a good one keeps the mode."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_vcr_doc("{}", "{}", {"Set-Cookie": ["a=b"]})))
    path.chmod(0o640)
    before = path.read_bytes()

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)  # only scrub writes while patched
        status, _, err = _run(capsys, str(path))
    assert status == 2
    assert "cannot rewrite" in err and "No space left on device" in err
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.yaml"]
    assert _run(capsys, str(path))[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["c.yaml"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("interactions: [\n", "invalid YAML"),
        ("version: 1\n", "'interactions' list"),
        ("interactions: [1]\n", "interactions[0] must be a mapping"),
        ("interactions:\n- request: [1]\n", "interactions[0].request must be a mapping"),
        ("interactions:\n- request: {headers: [a]}\n", "headers must be a mapping"),
        ("[" * 5000, "nest"),
        ("!!python/object/apply:os.getcwd []", "invalid YAML"),
    ],
)
def test_unreadable_cassettes_fail_clearly_and_others_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """A malformed cassette gives exit 2 and an error naming file and problem; other files still run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_vcr_doc("{}", "{}", {"Set-Cookie": ["a=b"]})))
    status, out, err = _run(capsys, str(bad), str(good))
    assert status == 2
    assert err.startswith(f"llm-ledger scrub: error: {bad}") and problem in err, err
    assert "Traceback" not in err
    assert bad.read_text() == content
    assert "Set-Cookie" not in good.read_text() and f"{good}: scrubbed" in out


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist is named in a one-line error with exit status 2."""
    status, _, err = _run(capsys, str(tmp_path / "nope.yaml"))
    assert status == 2
    assert err == f"llm-ledger scrub: error: {tmp_path / 'nope.yaml'}: cassette not found\n"


def test_scrub_is_a_subcommand_of_the_console_script() -> None:
    """`llm-ledger scrub` is registered and requires at least one cassette."""
    parser = build_parser()
    args = parser.parse_args(["scrub", "--check", "a.yaml", "b.json"])
    assert args.cassettes == ["a.yaml", "b.json"] and args.check
    with pytest.raises(SystemExit):
        parser.parse_args(["scrub"])


def test_allow_list_is_the_plugins() -> None:
    """Scrub keeps exactly the headers the plugin records (plus content-encoding for compressed bodies)."""
    from pytest_llm_ledger._format import REQUEST_HEADERS, RESPONSE_HEADERS

    sent = {"Content-Type": ["application/json"], "Content-Encoding": ["gzip"], "Authorization": ["x"]}
    retry = {"Retry-After": ["1"], "Retry-After-Ms": ["1"], "X-Should-Retry": ["true"]}  # what the SDK reads
    answered = {**sent, **retry, "X-Request-Id": ["r"]}
    doc = {
        "interactions": [
            {"request": {"headers": dict(sent)}, "response": {"headers": {**answered, "Set-Cookie": ["s=1"]}}}
        ]
    }
    _scrub.scrub_document(doc)
    kept = {
        part: {h.lower() for h in doc["interactions"][0][part]["headers"]} for part in ("request", "response")
    }
    assert kept == {"request": REQUEST_HEADERS, "response": RESPONSE_HEADERS | {"content-encoding"}}


def test_a_directory_scrubs_every_cassette_below_it(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-ledger scrub cassettes/` scrubs every .yaml, .yml and .json file below the directory, its
    suffix in any case, as when the file is named."""
    root = tmp_path / "cassettes"
    (root / "tests" / "nested").mkdir(parents=True)
    cassettes = (root / "tests" / "a.yaml", root / "tests" / "nested" / "b.json", root / "C.YAML")
    _record(fake_openai, cassettes[0], "yaml")
    _record(fake_openai, cassettes[1], "json")
    _record(fake_openai, cassettes[2], "yaml")
    (root / "README.txt").write_text("not a cassette\n")
    status, out, err = _run(capsys, str(root))
    assert status == 0, err
    assert "README" not in out + err
    for path in cassettes:
        assert f"{path}: scrubbed" in out
        assert FAKE_KEY not in path.read_text()
    assert _run(capsys, "--check", str(root))[0] == 0


def test_a_scrubbed_file_keeps_its_mode(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scrubbing rewrites a cassette in place without loosening or tightening its permissions."""
    path = tmp_path / "private.yaml"
    _record(fake_openai, path, "yaml")
    path.chmod(0o600)
    assert _run(capsys, str(path))[0] == 0
    assert FAKE_KEY not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_scrub_knows_the_recorders_names_and_finds_echoed_header_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """subscription-key, code and sig query values go, and a header key echoed in a body goes too."""
    azure_key = "azureLEAKCHECK0123456789abcdef"  # not sk-shaped: found because the request sent it
    doc = _vcr_doc(
        "{}", json.dumps({"error": {"message": f"bad key {azure_key}", "code": "invalid_api_key"}}), {}
    )
    request = doc["interactions"][0]["request"]
    request["headers"] = {"api-key": [azure_key]}
    request["uri"] = (
        "https://x.azure.com/openai/x?subscription-key=LEAKCHECK1&code=LEAKCHECK2&sig=LEAKCHECK3&v=1"
    )
    path = tmp_path / "azure.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert _run(capsys, str(path))[0] == 0
    text = path.read_text()
    assert "LEAKCHECK" not in text and "v=1" in text
    body = json.loads(yaml.safe_load(text)["interactions"][0]["response"]["body"]["string"])
    assert body["error"] == {"message": "bad key REDACTED", "code": "invalid_api_key"}
    assert _run(capsys, "--check", str(path)) == (
        0,
        "llm-ledger scrub: 1 cassette(s) checked, no credentials or identifiers found\n",
        "",
    )


# a cassette's start, up to its first response (line 4)
_ONE = "version: 1\ninteractions:\n- request: {method: POST, url: 'http://x/v1/chat/completions'}\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("version: 1\ninteractions:\n- request: {url: 'http://x/v1\n", ":4: invalid YAML: while scanning a"),
        ("interactions: !!python/object/apply:os.getcwd []\n", ":1: invalid YAML: could not determine"),
        ("interactions: \x07\n", ":1: invalid YAML: control characters are not allowed"),
        (f"{_ONE}  response: {{status: !!int abc}}\n", ":4: invalid YAML: 'abc' is not a valid !!int"),
        (
            f"{_ONE}  response: {{status: 200, text: !!bool maybe}}\n",
            ":4: invalid YAML: 'maybe' is not a valid !!bool",
        ),
        (f"{_ONE}  response: {{status: !!float x}}\n", ":4: invalid YAML: 'x' is not a valid !!float"),
    ],
    ids=["truncated", "python tag", "control character", "not an int", "not a bool", "not a float"],
)
def test_scrub_and_the_plugin_word_invalid_yaml_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    """A cassette that is not YAML (or holds a ``!!int`` that is none) gets one message,
    `file:line: invalid YAML: what`, from
    `llm-ledger scrub` and from the plugin's cassette loader (which adds how to re-record)."""
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    status, _, err = _run(capsys, str(path))
    assert status == 2
    message = err.removeprefix("llm-ledger scrub: error: ").rstrip("\n")
    assert message.startswith(f"{path}{expected}"), err
    if "tag" in content:
        assert message.endswith("tags that would build Python objects are refused"), err
    with pytest.raises(CassetteError) as raised:
        LedgerCassette(path, "none", "t.py::t")
    assert str(raised.value).startswith(message + ". The file is not a valid llm-ledger cassette")


def test_a_directory_with_no_cassette_fails_instead_of_checking_nothing(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scrub --check DIR` on a directory holding no cassette (a CI job pointed at the wrong folder) is an
    error naming it, exit 2, even beside a directory that holds some; never "0 cassette(s) checked"."""
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not a cassette\n")
    full = tmp_path / "full"
    _record(fake_openai, full / "a.yaml", "yaml")
    _run(capsys, str(full))  # scrubbed: --check finds nothing more in it

    for args in ([str(tmp_path / "empty")], [str(full), str(tmp_path / "empty")]):
        status, out, err = _run(capsys, "--check", *args)
        assert status == 2
        assert err == (
            f"llm-ledger scrub: error: {tmp_path / 'empty'}: no cassette (.yaml, .yml or .json file) in this "
            "directory or below it; give the directory the cassettes are in\n"
        )
        assert "checked" not in out


def test_a_missing_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist and is not a cassette's name (a folder misspelt in a CI job) is an
    error naming it, exit 2."""
    status, out, err = _run(capsys, "--check", str(tmp_path / "casettes"))
    assert status == 2 and "checked" not in out
    assert err == f"llm-ledger scrub: error: {tmp_path / 'casettes'}: no such file or directory\n"


# a prompt over several lines: the plugin writes it as a `|` block, one line of YAML per line of prompt
_LONG_PROMPT = "Summarise the quarterly report:\nrevenue up four percent\nheadcount flat\n"


@pytest.mark.usefixtures("with_key")
def test_a_recorded_cassette_is_rewritten_exactly_as_the_plugin_wrote_it(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Reviewers read a scrub's diff in a pull request: on a cassette the plugin recorded (multi-line
    bodies in `|` blocks) scrub changes no byte when it is clean, and only the lines holding a secret
    when it is not, so the diff shows the secrets removed rather than every body restyled."""
    monkeypatch.setenv("LEDGER_TEST_PROMPT", _LONG_PROMPT)
    write_project(pytester)
    assert run(pytester, "--llm-record-mode=once", "-k", "test_chat or test_stream").ret == 0
    cassettes = pytester.path / "cassettes" / "tests" / "test_app"
    for name in ("test_chat.yaml", "test_stream.yaml"):
        path = cassettes / name
        recorded = path.read_text()
        assert _run(capsys, str(path))[0] == 0
        assert path.read_text() == recorded, name

    path = cassettes / "test_chat.yaml"
    recorded = path.read_text()
    assert "content: |" in recorded and "      revenue up four percent\n" in recorded  # a block body
    dirty = recorded.replace("revenue up four percent", f"revenue up four percent {FAKE_KEY}")
    dirty = dirty.replace("model: gpt-4o-mini", f"model: gpt-4o-mini-{FAKE_KEY}", 1)
    path.write_text(dirty)
    assert _run(capsys, str(path))[0] == 0
    scrubbed = path.read_text()
    assert scrubbed == dirty.replace(FAKE_KEY, "sk-REDACTED")
    changed = [
        i for i, (a, b) in enumerate(zip(dirty.splitlines(), scrubbed.splitlines(), strict=True)) if a != b
    ]
    assert changed == [i for i, line in enumerate(dirty.splitlines()) if FAKE_KEY in line]
    assert len(changed) == dirty.count(FAKE_KEY) >= 2  # the block line, the model line (and echoes)


def test_a_redactor_replaces_the_longest_known_secret_first_whatever_order_it_is_told() -> None:
    """A known credential that is the start of another (a key and the same key with a suffix) never
    leaves the longer one's tail behind, in whatever order the redactor learnt them."""
    short, long = "azure0123456789", "azure0123456789-tail-secret"
    for known in ([short, long], [long, short]):
        redactor = CredentialRedactor(known)
        assert redactor.text(f"echo {long} and {short}", "body") == "echo REDACTED and REDACTED"
        redactor = CredentialRedactor()
        redactor.known = known
        assert redactor.text(f"echo {long} and {short}", "body") == "echo REDACTED and REDACTED"
