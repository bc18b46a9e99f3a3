"""Image and audio calls in a marked test: their cassettes hold the multipart uploads and the binary
speech answer, and replay them offline with the same records and costs."""

from __future__ import annotations

from pathlib import Path

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import load_yaml, run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

MEDIA_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
def test_media(llm_ledger):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with raw, ledger.lens("media"):
        c = ledger.instrument(raw)
        edit = c.images.edit(model="gpt-image-1", image=("fox.png", b"PNG" * 100, "image/png"), prompt="blue")
        audio = ("a.mp3", b"\\xff\\xfb" * 4000, "audio/mpeg")
        heard = c.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)
        speech = c.audio.speech.create(model="tts-1", voice="alloy", input="hello team")
    assert edit.usage.total_tokens > 0
    assert heard.text == "Summary: the recording"
    assert speech.content == b"\\xff\\xf3\\x44\\xc4" + bytes(10)
    assert llm_ledger.api_calls == 3
    summary = llm_ledger.lens("media")[0]["summary"]
    assert summary["cost_complete"] is False
    assert summary["total_cost_usd"] == pytest.approx((80 * 6 + 6 * 10) / 1e6)
"""


@pytest.mark.usefixtures("with_key")
def test_image_and_audio_calls_record_and_replay_offline(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """Recorded once (an upload's form, whose boundary changes with each run, matches again), they
    replay with the server stopped: same answers, same records."""
    write_project(pytester, MEDIA_TESTS)
    recorded = run(pytester, "--llm-record-mode=once")
    assert recorded.ret == 0, recorded.stdout.str()
    recorded.stdout.fnmatch_lines([
        "llm-ledger: calls with no known cost count as $0: no usage reported by calls to 'gpt-image-1' "
        "(1 call), 'tts-1' (1 call); *an image or audio call billed in other units than tokens has none "
        "to price*"
    ])  # fmt: skip
    cassette = load_yaml(pytester.path / Path("cassettes", "tests", "test_app", "test_media.yaml"))
    edit, transcription, speech = cassette["interactions"]
    assert edit["request"]["url"].endswith("/images/edits")
    assert transcription["request"]["url"].endswith("/audio/transcriptions")
    assert "json" in speech["request"] and "base64" in speech["response"]
    seen = len(server.requests)
    server.stop()
    replayed = run(pytester)
    replayed.assert_outcomes(passed=1)
    assert len(server.requests) == seen
