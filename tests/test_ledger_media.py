"""Image and audio calls (``images.*``, ``audio.*``) bill real money: each is recorded like a chat call,
with the usage the answer reports where it means what a chat usage means, and a cost only where the
price engine prices every billed unit (a transcription's text and audio tokens); an image's tokens,
whisper-1's seconds and tts-1's characters leave the cost null and the lens ``cost_complete: false``."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger._fake_server import SPEECH_HEAD
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import FAKE_KEY
from tests.cost_helpers import genai_usd

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # variations, translations

PNG = ("fox.png", b"\x89PNG-not-really-an-image" * 20, "image/png")
AUDIO = ("memo.mp3", b"ID3-AUDIO-BYTES-" * 500, "audio/mpeg")  # 8,000 bytes: 80 audio tokens at the fake

# operation -> (the call, the model asked for, the record's usage counts that are not null or 0)
CALLS: dict[str, tuple[Callable[[Any], Any], str, dict[str, int]]] = {
    "image_generation": (
        lambda c: c.images.generate(model="gpt-image-1", prompt="a red fox", quality="low"),
        "gpt-image-1",
        {"total_tokens": 3 + 272},  # text input + one low-quality image out: image tokens, not priced
    ),
    "image_edit": (
        lambda c: c.images.edit(model="gpt-image-1", image=PNG, prompt="make it blue", quality="low"),
        "gpt-image-1",
        {"total_tokens": 3 + 388 + 272},
    ),
    "image_variation": (
        lambda c: c.images.create_variation(model="dall-e-2", image=PNG),
        "dall-e-2",
        {},  # billed per image: no usage
    ),
    "transcription": (
        lambda c: c.audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO),
        "gpt-4o-transcribe",
        {"prompt_tokens": 80, "prompt_audio_tokens": 80, "completion_tokens": 6, "total_tokens": 86},
    ),
    "translation": (
        lambda c: c.audio.translations.create(model="whisper-1", file=AUDIO),
        "whisper-1",
        {},  # billed by the minute of audio
    ),
    "speech": (
        lambda c: c.audio.speech.create(model="tts-1", voice="alloy", input="hello team"),
        "tts-1",
        {},  # billed by the character
    ),
}


def _counts(record: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in record["usage"].items() if v}


def _answer(result: Any) -> Any:
    """What the caller can compare of an answer: its JSON, text or bytes."""
    if isinstance(result, str):
        return result
    if hasattr(result, "model_dump"):
        return result.model_dump()
    return result.content  # speech: the audio bytes


def _check(record: dict[str, Any], operation: str) -> None:
    _, model, counts = CALLS[operation]
    assert (record["operation"], record["status"], record["request"]["model"]) == (operation, "ok", model)
    assert record["error"] is None
    assert record["server"]["address"] == "127.0.0.1"
    assert _counts(record) == counts
    if operation == "transcription":  # 74 audio tokens at $6, 6 output tokens at $10 per 1M
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == genai_usd(model, record["usage"])
        assert record["cost"]["total_cost_usd"] == pytest.approx((80 * 6 + 6 * 10) / 1e6)
    else:
        assert record["cost"]["total_cost_usd"] is None


@pytest.mark.parametrize("operation", CALLS)
def test_each_image_and_audio_call_is_recorded_and_returns_what_the_bare_sdk_returns(
    client: openai.OpenAI, records: Captured, fake_openai: FakeOpenAI, operation: str
) -> None:
    """Sync: one ``llm_api_call`` record with its operation, model, status, usage and cost; the caller
    gets the answer a client without the ledger gets."""
    call = CALLS[operation][0]
    with llm_ledger.LLMCallMonitor(logger=None).lens("media") as run:  # counted whichever monitor's lens
        result = call(client)
    (record,) = records.calls
    _check(record, operation)
    assert record["context"]["lens_key"] == "media"
    assert run.summary is not None
    assert run.summary["total_api_calls"] == 1
    assert run.summary["cost_complete"] is (operation == "transcription")
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        assert _answer(result) == _answer(call(bare))
    assert type(result) is type(call(client))


@pytest.mark.asyncio
@pytest.mark.parametrize("operation", CALLS)
async def test_each_image_and_audio_call_is_recorded_on_an_async_client(
    aclient: openai.AsyncOpenAI, records: Captured, operation: str
) -> None:
    """Async: the same record as the sync client's."""
    result = await CALLS[operation][0](aclient)
    (record,) = records.calls
    _check(record, operation)
    assert _answer(result)


def test_a_lens_with_an_image_call_says_its_cost_is_incomplete(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A lens whose chat call is priced and whose image is not: its total is the chat's alone, and it
    says so (``cost_complete: false``); a priced transcription alone keeps it complete."""
    hi: Any = [{"role": "user", "content": "hi"}]
    with monitor.lens("illustrate") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        client.images.generate(model="gpt-image-1", prompt="a red fox")
    assert run.summary is not None
    assert run.summary["total_api_calls"] == 2
    assert run.summary["total_cost_usd"] > 0
    assert run.summary["cost_complete"] is False
    with monitor.lens("transcribe") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=AUDIO)
    assert run.summary is not None
    assert run.summary["cost_complete"] is True


@pytest.mark.parametrize("operation", ["image_edit", "transcription", "speech"])
def test_a_refused_image_or_audio_call_is_recorded_as_an_error(
    client: openai.OpenAI, records: Captured, fake_openai: FakeOpenAI, operation: str
) -> None:
    """A 4xx answer: the SDK's exception reaches the caller, after an ``error`` record naming it."""
    fake_openai.fail_next(400)
    with pytest.raises(openai.BadRequestError):
        CALLS[operation][0](client)
    (record,) = records.calls
    assert (record["operation"], record["status"]) == (operation, "error")
    assert record["error"] == {
        "type": "BadRequestError", "status_code": 400, "message": "HTTP 400 invalid_request_error"
    }  # fmt: skip
    assert record["cost"]["total_cost_usd"] is None


def test_an_upload_is_never_copied_into_the_record(
    fake_openai: FakeOpenAI, sdk: Callable[[llm_ledger.LLMCallMonitor], openai.OpenAI]
) -> None:
    """With content capture on, an edit's and a transcription's prompt are captured (and the
    transcription's text as its output), their files' bytes and names are not (the server got them
    whole)."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    client = sdk(monitor)
    with capture(monitor) as records:
        client.images.edit(model="gpt-image-1", image=PNG, prompt="make it blue")
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO, prompt="a memo")
    text = json.dumps(records.calls)
    for name, data, _ in (PNG, AUDIO):
        assert name not in text
        assert data[4:20].decode() not in text
    assert [r["content"] for r in records.calls] == [
        {"prompt": "make it blue"}, {"prompt": "a memo", "output": "Summary: a memo"}
    ]  # fmt: skip
    assert [r["request"]["user_prompt_length"] for r in records.calls] == [12, 6]
    uploads = [r.body for r in fake_openai.requests]
    assert uploads[0]["image"] == {"filename": "fox.png", "size": len(PNG[1])}
    assert uploads[1]["file"] == {"filename": "memo.mp3", "size": len(AUDIO[1])}


def test_raw_and_streaming_responses_are_recorded_and_hand_over_the_bytes(
    client: openai.OpenAI, records: Captured
) -> None:
    """``with_raw_response`` (a transcription, parsed as the bare SDK parses it) and
    ``with_streaming_response`` (speech, its audio streamed to the caller) are recorded as ``create()``
    records them; the speech's audio is handed over whole."""
    raw = client.audio.transcriptions.with_raw_response.create(model="gpt-4o-transcribe", file=AUDIO)
    assert raw.parse().text == "Summary: the recording"
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team"
    ) as response:
        audio = b"".join(response.iter_bytes(chunk_size=4))
    assert audio == SPEECH_HEAD + bytes(len("hello team"))
    transcription, speech = records.calls
    _check(transcription, "transcription")
    assert (speech["operation"], speech["status"], speech["request"]["model"]) == (
        "speech",
        "ok",
        "gpt-4o-mini-tts",
    )
    assert speech["cost"]["total_cost_usd"] is None


def test_a_whisper_transcription_as_text_has_no_usage_and_no_cost(
    client: openai.OpenAI, records: Captured
) -> None:
    """whisper-1 bills minutes of audio, and ``response_format="text"`` answers plain text: the caller
    gets the text, the record no usage and no cost."""
    text = client.audio.transcriptions.create(model="whisper-1", file=AUDIO, response_format="text")
    assert text.strip() == "Summary: the recording"
    (record,) = records.calls
    assert (record["operation"], record["status"]) == ("transcription", "ok")
    assert _counts(record) == {}
    assert record["cost"]["total_cost_usd"] is None


def test_reports_and_reprice_count_image_and_audio_calls_as_unpriced(
    client: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger report`` lists the new operations and ``reprice`` prices none of the image calls at
    a text rate: they stay outside its total, which says it is incomplete."""
    for operation in CALLS:
        CALLS[operation][0](client)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records.calls))
    capsys.readouterr()
    assert main(["report", str(log), "--by", "operation", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    text = json.dumps(rows)
    for operation in CALLS:
        assert operation in text
    assert main(["reprice", str(log), "--format", "json"]) == 0
    repriced = json.loads(capsys.readouterr().out)
    transcription = next(r for r in records.calls if r["operation"] == "transcription")
    assert Decimal(str(repriced["total"]["after_usd"])) == Decimal(
        repr(transcription["cost"]["total_cost_usd"])
    )
    assert repriced["total"]["after_complete"] is False


# operation -> a streamed call, and the usage its record holds (as the same call not streamed)
STREAMS: dict[str, tuple[Callable[[Any], Any], dict[str, int]]] = {
    "image_generation": (
        lambda c: c.images.generate(
            model="gpt-image-1", prompt="a red fox", quality="low", stream=True, partial_images=2
        ),
        CALLS["image_generation"][2],
    ),
    "image_edit": (
        lambda c: c.images.edit(
            model="gpt-image-1", image=PNG, prompt="make it blue", quality="low", stream=True
        ),
        CALLS["image_edit"][2],
    ),
    "transcription": (
        lambda c: c.audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO, stream=True),
        CALLS["transcription"][2],
    ),
}


@pytest.mark.parametrize("operation", STREAMS)
def test_a_streamed_image_or_transcription_is_recorded_as_the_same_call_not_streamed(
    client: openai.OpenAI, records: Captured, operation: str
) -> None:
    """``stream=True``: the caller gets every event; the record, written at the last one, has the
    usage and cost of the same call not streamed, and a time to the first event."""
    call, counts = STREAMS[operation]
    events = [event.type for event in call(client)]
    assert events[-1].endswith((".completed", ".done"))
    (record,) = records.calls
    assert (record["operation"], record["status"], record["request"]["stream"]) == (operation, "ok", True)
    assert _counts(record) == counts
    assert (record["cost"]["total_cost_usd"] is None) is (operation != "transcription")
    assert record["timing"]["time_to_first_token_ms"] is not None


@pytest.mark.asyncio
async def test_a_streamed_transcription_is_priced_on_an_async_client(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Async ``stream=True``: as the sync client's."""
    stream = await aclient.audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO, stream=True)
    text = "".join([e.delta async for e in stream if e.type == "transcript.text.delta"])
    assert text == "Summary: the recording"
    (record,) = records.calls
    _check(record, "transcription")


def test_a_streamed_transcription_read_as_bytes_is_recorded_and_one_stopped_early_is_interrupted(
    client: openai.OpenAI, records: Captured
) -> None:
    """``with_streaming_response`` hands the caller the event stream's bytes; the ledger reads the
    events as they pass (priced as ``create()``); a stream closed before its last event is
    ``interrupted``, with no usage, and its lens's cost incomplete."""
    with client.audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-transcribe", file=AUDIO, stream=True
    ) as response:
        body = b"".join(response.iter_bytes())
    assert b"transcript.text.done" in body
    stream = client.images.generate(model="gpt-image-1", prompt="a red fox", stream=True, partial_images=2)
    next(iter(stream))
    stream.close()
    read, stopped = records.calls
    _check(read, "transcription")
    assert (stopped["operation"], stopped["status"]) == ("image_generation", "interrupted")
    assert _counts(stopped) == {}


@pytest.mark.sdk_independent
def test_prometheus_and_otel_export_image_and_audio_calls_by_their_operation(
    sdk: Callable[[llm_ledger.LLMCallMonitor], openai.OpenAI],
) -> None:
    """Both exporters take the new operations as they are: a Prometheus ``operation`` label and an
    unpriced-calls count for the image; an OTel span named ``{operation} {model}`` per call, the
    transcription's audio tokens and cost on its span."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry, generate_latest

    from llm_ledger.exporters import OTelSink, PrometheusSink
    from tests.exporter_helpers import samples, total

    registry = CollectorRegistry()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    otel = OTelSink(tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]))
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry), otel])
    client = sdk(monitor)
    with monitor.lens("media"):
        for operation in ("image_generation", "transcription", "speech"):
            CALLS[operation][0](client)
    generate_latest(registry)  # the first scrape shows a new series at 0 (tests/exporter_helpers.py)
    found = samples(generate_latest(registry).decode())
    for operation, model in (("image_generation", "gpt-image-1"), ("transcription", "gpt-4o-transcribe")):
        assert total(found, "llm_ledger_calls_total", operation=operation, model=model, status="ok") == 1
    assert total(found, "llm_ledger_unpriced_calls_total", model="gpt-image-1") == 1
    assert total(found, "llm_ledger_cost_usd_total", model="gpt-4o-transcribe") == pytest.approx(0.00054)
    by_name = {span.name: dict(span.attributes or {}) for span in spans.get_finished_spans()}
    assert {"image_generation gpt-image-1", "transcription gpt-4o-transcribe", "speech tts-1"} <= set(by_name)
    heard = by_name["transcription gpt-4o-transcribe"]
    assert heard["gen_ai.usage.audio.input_tokens"] == 80
    assert heard["gen_ai.usage.cost"] == pytest.approx(0.00054)
    assert "gen_ai.usage.cost" not in by_name["image_generation gpt-image-1"]


def test_a_streamed_image_whose_last_event_has_no_usage_is_complete_without_usage(
    client: openai.OpenAI, records: Captured
) -> None:
    """A server that reports no usage: the stream still finished (``ok``), with null counts."""
    stream = client.images.generate(
        model="gpt-image-1", prompt="a red fox", stream=True, extra_headers={"x-fake-fault": "no-usage"}
    )
    assert [event.type for event in stream] == ["image_generation.completed"]
    (record,) = records.calls
    assert (record["status"], record["usage"]["total_tokens"], record["cost"]["total_cost_usd"]) == (
        "ok",
        None,
        None,
    )


SPOKEN = {"prompt_tokens": 3, "completion_tokens": 10, "completion_audio_tokens": 10, "total_tokens": 13}


def _check_spoken(record: dict[str, Any]) -> None:
    """A gpt-4o-mini-tts speech streamed as events: its text in, audio tokens out, priced at the
    model's text input and audio output rates ($0.60 and $12 per 1M)."""
    assert (record["operation"], record["status"], record["error"]) == ("speech", "ok", None)
    assert _counts(record) == SPOKEN
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == genai_usd("gpt-4o-mini-tts", record["usage"])
    assert record["cost"]["total_cost_usd"] == pytest.approx((3 * 0.6 + 10 * 12) / 1e6)


def _speak(c: Any, **extra: Any) -> Any:
    return c.audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team", stream_format="sse", **extra
    )


def _audio(events: bytes) -> bytes:
    """The audio of a speech answer's events, joined as a caller joins them."""
    import base64

    lines = [line[6:] for line in events.splitlines() if line.startswith(b"data: ")]
    return b"".join(base64.b64decode(json.loads(line)["audio"]) for line in lines[:-1])


def test_a_speech_streamed_as_events_is_recorded_with_its_usage_and_cost(
    client: openai.OpenAI, records: Captured, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """``stream_format="sse"``: the SDK hands over the event stream's bytes (read whole by
    ``create()``, as they pass by ``with_streaming_response``, or by ``with_raw_response``); the ledger
    reads the usage of its last event (``speech.audio.done``) and prices it; the caller gets every
    byte, and the lens stays complete."""
    with monitor.lens("speak") as run:
        whole = _speak(client).content
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team", stream_format="sse"
    ) as response:
        streamed = b"".join(response.iter_bytes(chunk_size=7))
    raw = client.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team", stream_format="sse"
    )
    assert whole == streamed == raw.content
    assert _audio(whole) == SPEECH_HEAD + bytes(len("hello team"))
    assert len(records.calls) == 3
    for record in records.calls:
        _check_spoken(record)
    assert [r["timing"]["time_to_first_token_ms"] is not None for r in records.calls] == [False, True, False]
    assert run.summary is not None
    assert run.summary["cost_complete"] is True


@pytest.mark.asyncio
async def test_a_speech_streamed_as_events_is_priced_on_an_async_client(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Async: ``create()`` and ``with_streaming_response`` as the sync client's."""
    whole = await _speak(aclient)
    async with aclient.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team", stream_format="sse"
    ) as response:
        streamed = b"".join([piece async for piece in response.iter_bytes()])
    assert whole.content == streamed
    for record in records.calls:
        _check_spoken(record)


def test_a_speech_stream_without_usage_or_cut_short_has_no_cost(
    client: openai.OpenAI, records: Captured
) -> None:
    """A last event without usage: ``ok``, null counts and cost; a stream the caller stops reading
    before its last event: ``interrupted``; plain audio (``tts-1``) is not read as events."""
    _speak(client, extra_headers={"x-fake-fault": "no-usage"})
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello team", stream_format="sse"
    ) as response:
        next(response.iter_bytes(chunk_size=8))
    client.audio.speech.create(model="tts-1", voice="alloy", input="speech.audio.done")
    (no_usage, stopped, plain) = records.calls
    assert (no_usage["status"], _counts(no_usage), no_usage["cost"]["total_cost_usd"]) == ("ok", {}, None)
    assert (stopped["status"], _counts(stopped), stopped["cost"]["total_cost_usd"]) == (
        "interrupted",
        {},
        None,
    )
    assert (plain["status"], _counts(plain), plain["cost"]["total_cost_usd"]) == ("ok", {}, None)


@pytest.mark.asyncio
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_speech_stream_ended_cleanly_without_its_last_event_is_ok_without_usage(
    is_async: bool,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
    monitor: llm_ledger.LLMCallMonitor,
) -> None:
    """A speech's event stream read to its end, which the server ended cleanly without its
    ``speech.audio.done`` (a compatible server that sends none): answered, so ``ok`` (not
    ``interrupted``: nobody stopped it), as ``create()`` records the same body; no usage, so no cost
    and its lens incomplete."""
    ask: Any = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hello team", "stream_format": "sse"}
    headers = {"x-fake-fault": "no-done"}
    with monitor.lens("speak") as run:
        if is_async:
            async with aclient.audio.speech.with_streaming_response.create(**ask, extra_headers=headers) as r:
                streamed = b"".join([piece async for piece in r.iter_bytes(chunk_size=7)])
        else:
            with client.audio.speech.with_streaming_response.create(**ask, extra_headers=headers) as response:
                streamed = b"".join(response.iter_bytes(chunk_size=7))
        whole = client.audio.speech.create(**ask, extra_headers=headers).content
    assert streamed == whole and b"speech.audio.done" not in whole
    assert [(r["status"], _counts(r), r["cost"]["total_cost_usd"]) for r in records.calls] == [
        ("ok", {}, None)
    ] * 2
    assert run.summary is not None and run.summary["cost_complete"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("read", ["stream", "bytes"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_transcription_stream_ended_cleanly_without_its_last_event_is_ok_without_usage(
    is_async: bool,
    read: str,
    client: openai.OpenAI,
    aclient: openai.AsyncOpenAI,
    records: Captured,
    monitor: llm_ledger.LLMCallMonitor,
) -> None:
    """A transcription's event stream (``stream=True``, read through the SDK's ``Stream`` or as bytes)
    read to its end, which the server ended cleanly without its ``transcript.text.done`` (a
    compatible server that sends none): answered, so ``ok`` (nobody stopped it), with no usage, so
    no cost and its lens incomplete; one the caller closes after its first event stays
    ``interrupted``."""
    ask: Any = {"model": "gpt-4o-transcribe", "file": AUDIO, "stream": True}
    headers = {"x-fake-fault": "no-done"}
    with monitor.lens("transcribe") as run:
        transcribe, atranscribe = client.audio.transcriptions, aclient.audio.transcriptions
        if read == "bytes" and is_async:
            async with atranscribe.with_streaming_response.create(**ask, extra_headers=headers) as r:
                got = b"".join([piece async for piece in r.iter_bytes(chunk_size=7)]).decode()
        elif read == "bytes":
            with transcribe.with_streaming_response.create(**ask, extra_headers=headers) as response:
                got = b"".join(response.iter_bytes(chunk_size=7)).decode()
        elif is_async:
            got = "".join([e.type async for e in await atranscribe.create(**ask, extra_headers=headers)])
        else:
            got = "".join(e.type for e in transcribe.create(**ask, extra_headers=headers))
        stopped = transcribe.create(**ask)
        next(iter(stopped))
        stopped.close()
    assert "transcript.text.delta" in got and "transcript.text.done" not in got
    assert [(r["status"], _counts(r), r["cost"]["total_cost_usd"]) for r in records.calls] == [
        ("ok", {}, None),
        ("interrupted", {}, None),
    ]
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_a_transcriptions_text_is_its_captured_output(
    sdk: Callable[[llm_ledger.LLMCallMonitor], openai.OpenAI],
) -> None:
    """With content capture on, a transcription's or translation's text is the record's output, through
    the ``redact`` hook as a chat answer's is: ``json``, ``verbose_json`` and ``text`` answers, streamed
    or not, read by ``create()`` or by ``with_raw_response`` / ``with_streaming_response``."""
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, capture_content=True, redact=lambda text: text.replace("recording", "[gone]")
    )
    client = sdk(monitor)
    transcriptions, translations = client.audio.transcriptions, client.audio.translations
    model = "gpt-4o-transcribe"
    with capture(monitor) as records:
        transcriptions.create(model=model, file=AUDIO)
        transcriptions.create(model="whisper-1", file=AUDIO, response_format="verbose_json")
        transcriptions.create(model="whisper-1", file=AUDIO, response_format="text")
        translations.create(model="whisper-1", file=AUDIO)
        translations.create(model="whisper-1", file=AUDIO, response_format="text")
        for _ in transcriptions.create(model=model, file=AUDIO, stream=True):
            pass
        transcriptions.with_raw_response.create(model="whisper-1", file=AUDIO, response_format="text")
        with transcriptions.with_streaming_response.create(model=model, file=AUDIO, stream=True) as response:
            response.read()
    assert len(records.calls) == 8
    assert [r["content"] for r in records.calls] == [{"output": "Summary: the [gone]"}] * 8


def test_a_speech_captures_its_input_and_no_output_however_it_is_read(
    sdk: Callable[[llm_ledger.LLMCallMonitor], openai.OpenAI],
) -> None:
    """A speech's captured content is its input text, and no output (its answer is audio, never read
    as text), the same whether ``create()`` or ``with_streaming_response`` reads it, as audio or as
    events (``stream_format="sse"``): never an empty output beside the input."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    speech = sdk(monitor).audio.speech
    with capture(monitor) as records:
        for stream_format in ("audio", "sse"):
            ask: Any = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hi there"}
            speech.create(**ask, stream_format=stream_format).read()
            with speech.with_streaming_response.create(**ask, stream_format=stream_format) as response:
                response.read()
            with speech.with_streaming_response.create(**ask, stream_format=stream_format) as response:
                list(response.iter_lines())
    assert [r["content"] for r in records.calls] == [{"input": "hi there"}] * 6


@pytest.mark.asyncio
async def test_a_streamed_transcriptions_text_is_captured_on_an_async_client(fake_openai: FakeOpenAI) -> None:
    """Async: the text of a streamed transcription, as the sync client's; one stopped early keeps the
    text it had up to its last whole word (the cut "re" of "recording" left out)."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True)
    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        with capture(monitor) as records:
            stream = await client.audio.transcriptions.create(
                model="gpt-4o-transcribe", file=AUDIO, stream=True, prompt="a memo"
            )
            pieces = [e.delta async for e in stream if e.type == "transcript.text.delta"]
            stream = await client.audio.transcriptions.create(
                model="gpt-4o-transcribe", file=AUDIO, stream=True, extra_headers={"x-fake-chunks": "3"}
            )
            first, second = await stream.__anext__(), await stream.__anext__()
            await stream.close()
    assert first.type == second.type == "transcript.text.delta"
    assert first.delta + second.delta == "Summary: the re"  # cut mid-word
    done, stopped = records.calls
    assert done["content"] == {"prompt": "a memo", "output": "".join(pieces)} == {
        "prompt": "a memo", "output": "Summary: a memo"
    }  # fmt: skip
    assert (stopped["status"], stopped["content"]) == ("interrupted", {"output": "Summary: the "})


# openai 1.x has no videos resource (2.x's passes these too: sdk3 leaves them to one run); 3.x
# deprecates it, as Sora's API shuts down
@pytest.mark.sdk3
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
def test_a_video_generation_is_recorded_unpriced_and_leaves_its_lens_incomplete(
    client: openai.OpenAI, records: Captured, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """``videos.create()`` (Sora, billed per second of video, with no usage in its answer): a
    ``video_generation`` record of the model that answered (the request may name none), a null cost,
    and its lens says ``cost_complete: false``; the caller gets the job the bare SDK gets."""
    hi: Any = [{"role": "user", "content": "hi"}]
    with monitor.lens("trailer") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        video = client.videos.create(prompt="a red fox running", seconds="8")
    chat, made = records.calls
    assert (made["operation"], made["status"], made["error"]) == ("video_generation", "ok", None)
    assert (made["request"]["model"], made["response"]["model"], made["response"]["id"]) == (
        None,
        "sora-2",
        video.id,
    )
    assert made["request"]["user_prompt_length"] == len("a red fox running")
    assert _counts(made) == {} and made["cost"]["total_cost_usd"] is None
    assert chat["cost"]["total_cost_usd"] is not None
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["cost_complete"]) == (2, False)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        alike = bare.videos.create(prompt="a red fox running", seconds="8")
    assert video.model_dump(exclude={"id"}) == alike.model_dump(exclude={"id"})
    assert video.seconds == "8" and video.status == "queued"


CLIP = ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" * 50, "video/mp4")
# a video's edit, extension and remix: each a new video job, billed per second as videos.create() is
VIDEO_CALLS: dict[str, Callable[[Any, str], Any]] = {  # (openai 3.63 refuses a video given as {"id": ...})
    "edit": lambda c, v: c.videos.edit(prompt="make it snow", video=CLIP),
    "extend": lambda c, v: c.videos.extend(prompt="make it snow", seconds="8", video=CLIP),
    "remix": lambda c, v: c.videos.remix(v, prompt="make it snow"),
}


@pytest.mark.sdk3
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
@pytest.mark.parametrize("call", list(VIDEO_CALLS))
def test_a_video_edit_extension_or_remix_is_recorded_as_a_video_generation(
    call: str,
    client: openai.OpenAI,
    records: Captured,
    monitor: llm_ledger.LLMCallMonitor,
    fake_openai: FakeOpenAI,
) -> None:
    """``videos.edit()``, ``.extend()`` and ``.remix()`` each start a new video job, billed per second
    of video as ``videos.create()``'s is: a ``video_generation`` record (its prompt's length, the job's
    id, a null cost) that leaves its lens incomplete; the caller gets the job the bare SDK gets."""
    source = client.videos.create(prompt="a red fox running")
    records.records.clear()
    with monitor.lens("trailer") as run:
        video = VIDEO_CALLS[call](client, source.id)
    [made] = records.calls
    assert (made["operation"], made["status"], made["response"]["id"]) == ("video_generation", "ok", video.id)
    assert made["response"]["model"] == "sora-2" and made["request"]["user_prompt_length"] == len(
        "make it snow"
    )
    assert _counts(made) == {} and made["cost"]["total_cost_usd"] is None
    assert run.summary is not None and run.summary["cost_complete"] is False
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        alike = VIDEO_CALLS[call](bare, source.id)
    assert video.model_dump(exclude={"id"}) == alike.model_dump(exclude={"id"})


@pytest.mark.sdk3
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
async def test_a_video_generation_is_recorded_on_an_async_client(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """Async: the same record as the sync client's."""
    video = await aclient.videos.create(prompt="a red fox running", model="sora-2-pro")
    (made,) = records.calls
    assert (made["operation"], made["request"]["model"], made["response"]["id"]) == (
        "video_generation",
        "sora-2-pro",
        video.id,
    )
    assert made["cost"]["total_cost_usd"] is None
