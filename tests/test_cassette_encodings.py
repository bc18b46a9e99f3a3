"""Compressed answers in cassettes: stored readable, whatever the encoding and the module decoding it.

The fake server compresses its answer with ``x-fake-encoding`` when the SDK's Accept-Encoding offers it
(httpx2 offers ``br`` with brotli installed and ``zstd`` with backports.zstd). A server may also send
a zstd body in several frames, one per flush: the client reads every frame, and so must the cassette.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
import yaml
import zstandard

from llm_ledger._cli import main as cli_main
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger import _format
from tests.plugin_helpers import (
    LoopbackServer,
    load_yaml,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

CASSETTES = Path("cassettes", "tests", "test_app")

ENCODED_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger

HEADERS = {"x-fake-encoding": os.environ["LEDGER_TEST_ENCODING"]}


def client():
    return ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


@pytest.mark.llm
def test_chat(llm_ledger):
    with client() as c, ledger.lens("summary"):
        reply = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Summarise the quarterly report in one line"}],
            extra_headers=HEADERS,
        )
    assert reply.choices[0].message.content.startswith("Summary:")
    assert llm_ledger.total_tokens == reply.usage.total_tokens > 0


@pytest.mark.llm
def test_stream(llm_ledger):
    with client() as c, ledger.lens("digest"):
        stream = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream the weekly digest please"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=HEADERS,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Summary:")
    assert llm_ledger.total_tokens > 0
"""


def _records(pytester: pytest.Pytester, report: str) -> dict[str, Any]:
    """What a run's report says of each test and of each lens, server and model: calls, tokens, cost."""
    data = json.loads((pytester.path / report).read_text())
    return {"tests": data["tests"], "usage": data["usage"], "lenses": data["lenses"]}


def _response(pytester: pytest.Pytester, test: str) -> dict[str, Any]:
    (interaction,) = load_yaml(pytester.path / CASSETTES / f"{test}.yaml")["interactions"]
    response: dict[str, Any] = interaction["response"]
    return response


def _record_then_replay(pytester: pytest.Pytester, stop: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of a recording run, then of a replay run with the server stopped."""
    recording = run(pytester, "--llm-record-mode=once", "--llm-report=recorded.json")
    recording.assert_outcomes(passed=2)
    stop()
    replay = run(pytester, "--llm-report=replayed.json")
    replay.assert_outcomes(passed=2)
    return _records(pytester, "recorded.json"), _records(pytester, "replayed.json")


@pytest.mark.usefixtures("with_key")
@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_compressed_answer_is_stored_readable_and_replays_the_same_records(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """A chat answer and a streamed one sent in gzip, br or zstd are stored as JSON and events, with
    no content-encoding; replayed offline they give the usage and cost the recording gave."""
    monkeypatch.setenv("LEDGER_TEST_ENCODING", encoding)
    write_project(pytester, ENCODED_TESTS)

    recorded, replayed = _record_then_replay(pytester, server.stop)

    assert all(encoding in r.headers["accept-encoding"] for r in server.requests)  # so it compressed
    chat = _response(pytester, "test_chat")
    assert chat["headers"] == {"content-type": "application/json"}
    assert chat["json"]["choices"][0]["message"]["content"].startswith("Summary:")
    assert chat["json"]["usage"]["total_tokens"] > 0
    stream = _response(pytester, "test_stream")
    assert stream["headers"] == {"content-type": "text/event-stream; charset=utf-8"}
    assert stream["sse"][-1] == {"data": "[DONE]"}
    assert stream["sse"][-2]["data"]["usage"]["total_tokens"] > 0
    assert replayed == recorded
    assert all(row["cost_usd"] > 0 and row["total_tokens"] > 0 for row in recorded["usage"])


ANSWER = {
    "id": "chatcmpl-frames",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Summary: sent in two frames"},
        "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21},
}  # fmt: skip
CHUNK = {"id": "chatcmpl-frames", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini"}
EVENTS = [
    {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Summary: one frame"}}]},
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": " per event"}, "finish_reason": "stop"}]},
    {**CHUNK, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}},
]


def _frames(pieces: list[bytes]) -> bytes:
    """``pieces`` as a zstd body of one frame each, as a server that flushes a frame per piece sends."""
    return b"".join(zstandard.ZstdCompressor().compress(piece) for piece in pieces)


class FramesServer(LoopbackServer):
    """An OpenAI-compatible endpoint that answers chat in zstd frames: the JSON in two, a stream one
    frame per event."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if request.get("stream"):
                    events = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in EVENTS]
                    body, kind = _frames([*events, b"data: [DONE]\n\n"]), "text/event-stream"
                else:
                    whole = json.dumps(ANSWER).encode()
                    body, kind = _frames([whole[:40], whole[40:]]), "application/json"
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-encoding", "zstd")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)
        self.base_url = f"{self.address}/v1"


@pytest.fixture(name="frames_server")
def frames_server_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FramesServer]:
    server = FramesServer()
    monkeypatch.setenv("LEDGER_TEST_BASE_URL", server.base_url)
    monkeypatch.setenv("LEDGER_TEST_ENCODING", "zstd")  # asked for; this server sends zstd anyway
    yield server
    server.stop()


@pytest.mark.usefixtures("with_key")
def test_a_zstd_answer_in_several_frames_is_stored_whole(
    pytester: pytest.Pytester, frames_server: FramesServer
) -> None:
    """A zstd answer sent in several frames (the JSON split in two, a stream one frame per event) is
    stored whole, not cut at the end of the first frame, and replays the records of the recording."""
    write_project(pytester, ENCODED_TESTS)

    recorded, replayed = _record_then_replay(pytester, frames_server.stop)

    chat = _response(pytester, "test_chat")
    assert (chat["headers"], chat["json"]) == ({"content-type": "application/json"}, ANSWER)
    stream = _response(pytester, "test_stream")
    assert stream["sse"] == [*({"data": e} for e in EVENTS), {"data": "[DONE]"}]
    assert replayed == recorded
    assert recorded["tests"]["tests/test_app.py::test_chat"]["total_tokens"] == 21
    assert recorded["tests"]["tests/test_app.py::test_stream"]["total_tokens"] == 16


ZSTD_MODULES = ["backports.zstd", "zstandard"] if sys.version_info < (3, 14) else ["compression.zstd"]
BODY = json.dumps(ANSWER).encode()


@pytest.mark.parametrize("module", ZSTD_MODULES)
def test_zstd_is_decoded_with_whichever_module_is_installed(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """Every frame of a zstd body is read with the module there is: the one httpx2 uses (the standard
    library's, or backports.zstd before Python 3.14) or the one httpx uses (zstandard)."""
    for other in {"compression.zstd", "backports.zstd", "zstandard"} - {module}:
        monkeypatch.setitem(sys.modules, other, None)  # not installed, as far as an import can tell

    stored, headers = _format.response_body(
        _frames([BODY[:30], BODY[30:]]), {"Content-Type": ["application/json"], "Content-Encoding": ["zstd"]}
    )

    assert (stored, headers) == (("json", ANSWER), {"content-type": "application/json"})


def test_br_is_decoded_with_brotlicffi_when_brotli_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """brotlicffi (what httpx and httpx2 use where brotli is not installed, as on PyPy) decodes a br
    body: it is stored readable, not kept as base64."""
    monkeypatch.setitem(sys.modules, "brotli", None)

    stored, headers = _format.response_body(
        brotli.compress(BODY), {"Content-Type": ["application/json"], "Content-Encoding": ["br"]}
    )

    assert (stored, headers) == (("json", ANSWER), {"content-type": "application/json"})


def test_a_body_its_encoding_does_not_describe_is_kept_as_it_came() -> None:
    """A body that is not valid in its Content-Encoding (cut short) is kept as base64 with its header,
    so replay gives the client what it got: the recording does not fail."""
    whole = _frames([BODY])
    stored, headers = _format.response_body(
        whole[:-3], {"Content-Type": ["application/json"], "Content-Encoding": ["zstd"]}
    )
    assert stored[0] == "base64"
    assert headers == {"content-type": "application/json", "content-encoding": "zstd"}


def test_scrub_reads_every_frame_of_a_zstd_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger scrub` on a vcrpy cassette finds a credential in the second frame of a zstd body
    and stores the whole body decoded (it read the first frame only, so the credential stayed)."""
    leaky = json.dumps({**ANSWER, "echo": {"access_token": "tok-LEAKCHECK"}}).encode()
    response = {
        "status": {"code": 200, "message": "OK"},
        "headers": {"Content-Type": ["application/json"], "Content-Encoding": ["zstd"]},
        "body": {"string": _frames([leaky[:40], leaky[40:]])},
    }
    request = {
        "method": "POST",
        "uri": "https://api.openai.com/v1/chat/completions",
        "body": "{}",
        "headers": {},
    }
    path = tmp_path / "vcrpy.yaml"
    path.write_text(
        yaml.safe_dump({"interactions": [{"request": request, "response": response}], "version": 1})
    )

    assert cli_main(["scrub", str(path)]) == 0, capsys.readouterr().err

    (scrubbed,) = yaml.safe_load(path.read_text())["interactions"]
    assert scrubbed["response"]["headers"] == {"Content-Type": ["application/json"]}
    body = json.loads(scrubbed["response"]["body"]["string"])
    assert body == {**ANSWER, "echo": {"access_token": "REDACTED"}}
