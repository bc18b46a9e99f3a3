"""Image and audio calls in a marked test: their cassettes hold the multipart uploads and the binary
speech answer, and replay them offline with the same records and costs."""

from __future__ import annotations

import json
from pathlib import Path

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import cli, load_yaml, run, server_fixture, with_key_fixture, write_project

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
        hi = [{"role": "user", "content": "hi"}]
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True)
        next(iter(stream))
        stream.close()  # stopped before its usage
    assert edit.usage.total_tokens > 0
    assert heard.text == "Summary: the recording"
    assert speech.content == b"\\xff\\xf3\\x44\\xc4" + bytes(10)
    assert llm_ledger.api_calls == 4
    summary = llm_ledger.lens("media")[0]["summary"]
    assert summary["cost_complete"] is False
    assert summary["total_cost_usd"] == pytest.approx((80 * 6 + 6 * 10) / 1e6)
"""


@pytest.mark.usefixtures("with_key")
def test_image_and_audio_calls_record_and_replay_offline(
    pytester: pytest.Pytester, server: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded once (an upload's form, whose boundary changes with each run, matches again), they
    replay with the server stopped: same answers, same records. The session's line says why the cost
    leaves calls out: an image (which reported its total) and a speech are billed in units no price
    table prices, not "no usage reported" as a stream stopped early is; the report's rows say which, and
    ``llm-ledger diff`` of two reports says it as the session does."""
    write_project(pytester, MEDIA_TESTS)
    recorded = run(pytester, "--llm-record-mode=once", "--llm-report=report.json")
    assert recorded.ret == 0, recorded.stdout.str()
    recorded.stdout.fnmatch_lines([
        "llm-ledger: calls with no known cost count as $0: no usage reported by calls to 'gpt-4o-mini' "
        "(1 call); billed in unpriced units (image, audio or video) by calls to 'gpt-image-1' (1 call), "
        "'tts-1' (1 call); re-record it with usage*; llm-ledger prices prompt and completion tokens: "
        "docs/PRICING.md (Images and audio) says what each image, audio and video call is billed in"
    ])  # fmt: skip
    rows = json.loads((pytester.path / "report.json").read_text())["usage"]
    gaps = {
        row["model"]: (row["uncosted_calls"], row["no_usage_calls"], row["unpriced_unit_calls"])
        for row in rows
    }
    assert gaps == {
        "gpt-image-1": (1, 1, 1), "gpt-4o-transcribe": (0, 0, 0), "tts-1": (1, 1, 1), "gpt-4o-mini": (1, 1, 0)
    }  # fmt: skip
    cassette = load_yaml(pytester.path / Path("cassettes", "tests", "test_app", "test_media.yaml"))
    edit, transcription, speech, _ = cassette["interactions"]
    assert edit["request"]["url"].endswith("/images/edits")
    assert transcription["request"]["url"].endswith("/audio/transcriptions")
    assert "json" in speech["request"] and "base64" in speech["response"]
    seen = len(server.requests)
    server.stop()
    replayed = run(pytester, "--llm-report=replayed.json")
    replayed.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "replayed.json").read_text())["usage"] == rows
    diff = json.loads(cli(capsys, "diff", "report.json", "replayed.json", "--format", "json").stdout)
    assert diff["lenses"]["media"]["cost_gaps"] == dict.fromkeys(
        ("base", "head"),
        "no usage reported by calls to 'gpt-4o-mini' (1 call); billed in unpriced units (image, audio or "
        "video) by calls to 'gpt-image-1' (1 call), 'tts-1' (1 call)",
    )
    assert len(server.requests) == seen
