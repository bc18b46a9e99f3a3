"""Answers whose JSON holds what UTF-8 text or a line reader treats apart replay as they came live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from tests.plugin_helpers import LoopbackServer, run, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (with_key_fixture,)  # used by name

# escaped as Python's json.dumps (and many servers) send them: half an emoji (a lone surrogate: valid
# JSON, which UTF-8 cannot encode) answered whole, and streamed a line separator and NEL, which
# str.splitlines() and httpx's iter_lines() split on when written raw
WHOLE, STREAMED = "half an emoji \ud83d", "line\u2028sep\x85nel"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        streamed = json.loads(self.rfile.read(int(self.headers["content-length"]))).get("stream")
        head = {"id": "c1", "created": 1, "model": "gpt-4o-mini"}
        if streamed:
            delta = {"index": 0, "delta": {"content": STREAMED}, "finish_reason": None}
            chunk = {**head, "object": "chat.completion.chunk", "choices": [delta]}
            body, kind = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), "text/event-stream"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": WHOLE}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            answer = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            body, kind = json.dumps(answer).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(name="escapes")
def escapes_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    server = LoopbackServer(_Handler)
    monkeypatch.setenv("LEDGER_TEST_BASE_URL", server.address + "/v1")
    yield server
    server.stop()


ESCAPE_TESTS = """
import os

import openai
import pytest

WHOLE, STREAMED = "half an emoji \\ud83d", "line\\u2028sep\\x85nel"
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.llm
def test_escapes():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        assert client.chat.completions.create(**ASK).choices[0].message.content == WHOLE
        stream = client.chat.completions.create(**ASK, stream=True)
        assert [chunk.choices[0].delta.content for chunk in stream] == [STREAMED]
        with client.chat.completions.with_streaming_response.create(**ASK, stream=True) as response:
            lines = list(response.iter_lines())  # as a proxy passing the events on reads them
    assert [line[:6] for line in lines] == ["data: ", "", "data: ", ""]
"""


@pytest.mark.usefixtures("with_key")
def test_escaped_line_separators_and_lone_surrogates_record_and_replay(
    pytester: pytest.Pytester, escapes: LoopbackServer
) -> None:
    """An answer holding a lone surrogate (half an emoji) records instead of failing the call with a
    UnicodeEncodeError, and a line separator escaped live is not replayed raw, where a line reader
    would split the event in two."""
    write_project(pytester, ESCAPE_TESTS)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)
    escapes.stop()

    run(pytester).assert_outcomes(passed=1)
