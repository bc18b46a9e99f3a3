"""Realtime API sessions (``client.realtime.connect()``, a WebSocket past the client's ``request`` seam):
each response the server ends is one call record, priced at the realtime model's text, audio and cached
rates, counted in the lens the connection was opened in; the caller's events are the SDK's."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import genai_prices
import openai
import pytest
from websockets.exceptions import ConnectionClosedError

import llm_ledger
from llm_ledger.report import summarise_records
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests import warm_python
from tests.conftest import socket_client
from tests.cost_helpers import assert_repriced_unchanged
from tests.exporter_helpers import samples, total
from tests.test_ledger_streams import EARLY_FINALIZE

MODEL = "gpt-realtime"
ASK: Any = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "what is the weather like"}],
}


def _until_done(connection: Any) -> list[Any]:
    """The events up to and including the next ``response.done``."""
    events = []
    for event in connection:
        events.append(event)
        if event.type == "response.done":
            return events
    raise AssertionError(f"the connection ended before response.done: {[e.type for e in events]}")


async def _until_done_async(connection: Any) -> list[Any]:
    events = []
    async for event in connection:
        events.append(event)
        if event.type == "response.done":
            return events
    raise AssertionError(f"the connection ended before response.done: {[e.type for e in events]}")


def _conversation(client: openai.OpenAI) -> list[str]:
    """Two responses, audio then text, in one session: every event the caller receives, as JSON."""
    with client.realtime.connect(model=MODEL) as connection:
        received = [connection.recv()]  # session.created
        connection.conversation.item.create(item=ASK)
        connection.response.create()
        received += _until_done(connection)
        connection.response.create(response={"output_modalities": ["text"]})
        received += _until_done(connection)
    return [event.to_json() for event in received]


def fake_session_id(event: str) -> str:
    return str(json.loads(event)["session"]["id"])


def _genai(record: dict[str, Any], cached_audio: int = 0) -> Decimal:
    """genai-prices' own price of a realtime record's usage (the independent reference), given the cached
    audio tokens the record folds into ``cached_tokens``."""
    usage = record["usage"]
    return genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            cache_read_tokens=usage["cached_tokens"],
            input_audio_tokens=usage["prompt_audio_tokens"] + cached_audio,
            cache_audio_read_tokens=cached_audio,
            output_tokens=usage["completion_tokens"],
            output_audio_tokens=usage["completion_audio_tokens"],
        ),
        record["request"]["model"],
        provider_id="openai",
    ).total_price


def test_a_session_of_two_responses_is_two_calls_of_its_lens(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Each response.done of a connection opened in a lens is one ``realtime`` call of that lens, its
    usage and cost those of the response; the lens adds them up and its cost is complete."""
    with monitor.lens("voice_agent", source_id="call-1") as run:
        _conversation(ws)
    first, second = records.calls
    assert [c["operation"] for c in records.calls] == ["realtime", "realtime"]
    assert all(c["status"] == "ok" and c["request"]["model"] == MODEL for c in records.calls)
    assert all(
        c["context"]["lens_run_id"] == run.run_id and c["context"]["source_id"] == "call-1"
        for c in records.calls
    )
    assert first["server"]["address"] == "127.0.0.1" and first["server"]["provider"] == "openai"
    # the first answered in audio (its transcript's tokens as text, a token a character as audio), the
    # second in text, reading the first's audio as its input
    assert first["usage"]["completion_audio_tokens"] == first["response"]["content_length"] > 0
    assert second["usage"]["completion_audio_tokens"] == 0
    assert second["usage"]["prompt_audio_tokens"] == first["usage"]["completion_audio_tokens"]
    assert first["response"]["id"] != second["response"]["id"]
    assert first["response"]["finish_reason"] == "completed"
    for record in records.calls:
        assert record["timing"]["time_to_first_token_ms"] is not None
        assert record["timing"]["time_to_first_token_ms"] <= record["timing"]["duration_ms"]
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == _genai(record)
    (lens,) = records.lenses
    summary = lens["summary"]
    assert summary["total_api_calls"] == 2 and summary["open_calls"] == 0 and summary["cost_complete"] is True
    assert summary["total_tokens"] == sum(c["usage"]["total_tokens"] for c in records.calls)
    assert summary["total_cost_usd"] == pytest.approx(sum(c["cost"]["total_cost_usd"] for c in records.calls))
    assert summary["prompt_audio_tokens"] == second["usage"]["prompt_audio_tokens"]
    assert run.summary == summary


def test_the_caller_receives_exactly_the_events_of_an_uninstrumented_client(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """Watching a connection changes none of the events the caller receives, nor their order."""
    watched = _conversation(ws)
    with socket_client(fake_openai) as raw:
        bare = _conversation(raw)
    assert len(records.calls) == 2  # the watched session's; the bare client's is nobody's
    assert watched[1:] == bare[1:]  # after session.created, whose session ids differ
    assert watched[0].replace(fake_session_id(watched[0]), "") == bare[0].replace(
        fake_session_id(bare[0]), ""
    )


def test_audio_and_cached_tokens_cost_their_realtime_rates(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """Spoken input, text and audio the cache served and spoken output each cost gpt-realtime's rate for
    them ($32 and $64 per 1M audio tokens), as genai-prices charges them."""
    with ws.realtime.connect(model=MODEL) as connection:
        connection.conversation.item.create(item=ASK)
        connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
        connection.input_audio_buffer.commit()
        connection.response.create(
            response={"metadata": {"x-fake-cached-tokens": "6", "x-fake-cached-audio-tokens": "15"}}
        )
        _until_done(connection)
    (record,) = records.calls
    usage = record["usage"]
    # 40 tokens of audio in (a token per 100 bytes), 15 of them from the cache: the record's audio is
    # what the cache did not serve, the cached tokens text and audio alike (docs/PRICING.md, Realtime)
    assert (usage["prompt_audio_tokens"], usage["cached_tokens"]) == (25, 21)
    assert usage["completion_audio_tokens"] > 0
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == _genai(record, cached_audio=15)
    # the audio at its own rates, not the text's: $32 (less the cache) in, $64 out per 1M tokens
    text_only = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]),
        MODEL,
        provider_id="openai",
    ).total_price
    assert Decimal(repr(record["cost"]["total_cost_usd"])) > text_only


MEDIA_USAGE = (
    "prompt_audio_tokens",
    "completion_audio_tokens",
    "cached_audio_tokens",
    "prompt_image_tokens",
    "cached_image_tokens",
)


def test_a_lens_totals_its_responses_audio_and_image_tokens(
    ws: openai.OpenAI, client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens's summary totals its calls' audio and image tokens, cached or not, as it totals their other
    tokens: two realtime responses and a chat call."""
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    photo: Any = {"type": "message", "role": "user", "content": [image]}
    with monitor.lens("voice_agent") as run:
        with ws.realtime.connect(model=MODEL) as connection:
            connection.conversation.item.create(item=photo)
            connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
            connection.input_audio_buffer.commit()
            for cached in ("10", "20"):
                metadata = {"x-fake-cached-audio-tokens": cached, "x-fake-cached-image-tokens": cached}
                connection.response.create(response={"metadata": metadata})
                _until_done(connection)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert run.summary is not None
    totals = {field: sum(call["usage"][field] for call in records.calls) for field in MEDIA_USAGE}
    assert {field: run.summary.get(field) for field in MEDIA_USAGE} == totals
    assert totals["cached_audio_tokens"] == totals["cached_image_tokens"] == 30
    assert totals["prompt_image_tokens"] > 0 and totals["completion_audio_tokens"] > 0


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-mini"])
def test_cached_audio_and_images_cost_their_own_rates(
    ws: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """Audio the cache served costs the model's cached *audio* rate, not its cached text rate
    (gpt-realtime-mini's is $0.30 per 1M tokens against $0.06 for text), and image input its image
    rates, cached or not ($0.80 and $0.08 against $0.60 and $0.06). The record says how much of its
    prompt and cached tokens were audio and images, so a reprice prices them alike; the cost is
    genai-prices' for the usage the caller received, and repricing the log finds no change."""
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    photos: Any = {"type": "message", "role": "user", "content": [image, image]}
    metadata = {
        "x-fake-cached-tokens": "6",
        "x-fake-cached-audio-tokens": "40",
        "x-fake-cached-image-tokens": "100",
    }
    with ws.realtime.connect(model=model) as connection:
        connection.conversation.item.create(item=ASK)
        connection.conversation.item.create(item=photos)  # 85 image tokens each
        connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
        connection.input_audio_buffer.commit()
        connection.response.create(response={"metadata": metadata})
        done = _until_done(connection)[-1]
    (record,) = records.calls
    usage = record["usage"]
    assert (usage["cached_tokens"], usage["cached_audio_tokens"], usage["prompt_audio_tokens"]) == (
        146,
        40,
        0,
    )
    assert (usage["cached_image_tokens"], usage["prompt_image_tokens"]) == (100, 70)
    billed = done.response.usage
    heard = billed.input_token_details
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=billed.input_tokens,
            cache_read_tokens=heard.cached_tokens,
            input_audio_tokens=heard.audio_tokens,
            cache_audio_read_tokens=heard.cached_tokens_details.audio_tokens,
            input_image_tokens=heard.image_tokens,
            cache_image_read_tokens=heard.cached_tokens_details.image_tokens,
            output_tokens=billed.output_tokens,
            output_audio_tokens=billed.output_token_details.audio_tokens,
        ),
        model,
        provider_id="openai",
    ).total_price
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == expected
    # priced the same from the record alone (what reprice and a price table read)
    again = llm_ledger.price(
        model,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        cached_tokens=usage["cached_tokens"],
        cached_audio_tokens=usage["cached_audio_tokens"],
        cached_image_tokens=usage["cached_image_tokens"],
        prompt_image_tokens=usage["prompt_image_tokens"],
        prompt_audio_tokens=usage["prompt_audio_tokens"],
        completion_audio_tokens=usage["completion_audio_tokens"],
    )
    assert again is not None and again.total_cost_usd == expected
    log = tmp_path / "llm_calls.jsonl"
    log.write_text(json.dumps(record) + "\n")
    assert_repriced_unchanged(log, capsys)


def test_the_exporters_count_cached_audio_as_audio(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OTel sink's token counters and span split a response's input by modality as its usage does:
    the audio the cache served is audio, in the input and the cache reads, and only the rest is text;
    Prometheus's ``input_audio`` is all the audio in, cached or not."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry, generate_latest

    from llm_ledger.exporters import OTelSink, PrometheusSink

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    sink = OTelSink(tracer_provider, MeterProvider(metric_readers=[reader]))
    registry = CollectorRegistry()
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink, PrometheusSink(registry)])
    with socket_client(fake_openai) as raw, capture(monitor) as records:
        connection = monitor.instrument(raw).realtime.connect(model=MODEL).enter()
        connection.conversation.item.create(item=ASK)
        connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
        connection.input_audio_buffer.commit()
        connection.response.create(
            response={"metadata": {"x-fake-cached-tokens": "6", "x-fake-cached-audio-tokens": "30"}}
        )
        _until_done(connection)
        connection.close()
    (record,) = records.calls
    usage = record["usage"]
    assert (usage["prompt_audio_tokens"], usage["cached_audio_tokens"], usage["cached_tokens"]) == (
        10,
        30,
        36,
    )
    data = reader.get_metrics_data()
    assert data is not None
    counted: dict[tuple[str, str], float] = {}
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        if metric.name.startswith("gen_ai.client.inference.usage."):
            for point in cast(list[Any], metric.data.data_points):  # the counters' NumberDataPoints
                key = (metric.name.rpartition("usage.")[2], point.attributes["gen_ai.token.modality"])
                counted[key] = counted.get(key, 0) + point.value
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    spoken = usage["completion_audio_tokens"]
    assert counted == {
        ("input_tokens", "audio"): 40,
        ("input_tokens", "text"): prompt - 40,
        ("cache_read.input_tokens", "audio"): 30,
        ("cache_read.input_tokens", "text"): 6,
        ("output_tokens", "audio"): spoken,
        ("output_tokens", "text"): completion - spoken,
        ("reasoning.output_tokens", "text"): 0,
        ("cache_write.input_tokens", "text"): 0,
    }
    (span,) = spans.get_finished_spans()
    attributes = span.attributes or {}
    assert attributes["gen_ai.usage.audio.input_tokens"] == 40
    assert attributes["gen_ai.usage.text.input_tokens"] == prompt - 40
    assert attributes["gen_ai.usage.text.cache_read.input_tokens"] == 6
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 36
    generate_latest(registry)  # a new series is first scraped at 0
    scraped = samples(generate_latest(registry).decode())
    assert total(scraped, "llm_ledger_tokens_total", token_type="input_audio") == 40
    assert total(scraped, "llm_ledger_tokens_total", token_type="cached") == 36


@pytest.mark.asyncio
async def test_an_async_session_is_recorded_as_a_sync_one(
    aws: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The async client's connections are watched alike: each response one call of the lens."""
    async with monitor.lens("voice_agent") as run, aws.realtime.connect(model=MODEL) as connection:
        await connection.conversation.item.create(item=ASK)
        await connection.response.create()
        await _until_done_async(connection)
        await connection.response.create(response={"output_modalities": ["text"]})
        await _until_done_async(connection)
    assert [c["status"] for c in records.calls] == ["ok", "ok"]
    assert all(c["context"]["lens_run_id"] == run.run_id for c in records.calls)
    for record in records.calls:
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == _genai(record)
    assert run.summary is not None and run.summary["total_api_calls"] == 2
    assert run.summary["cost_complete"] is True


def test_a_cancelled_response_is_interrupted_and_a_failed_one_an_error(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A response cancelled (``response.cancel``, or the user speaking over it) is ``interrupted``, its
    billed tokens priced; one that failed is an ``error`` naming the server's error; neither leaves the
    lens's cost incomplete, since both report their usage."""
    with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
        connection.conversation.item.create(item=ASK)
        connection.response.create(response={"metadata": {"x-fake-status": "cancelled"}})
        _until_done(connection)
        connection.response.create(response={"metadata": {"x-fake-status": "failed"}})
        _until_done(connection)
    cancelled, failed = records.calls
    assert (
        cancelled["status"] == "interrupted" and cancelled["response"]["finish_reason"] == "client_cancelled"
    )
    assert cancelled["usage"]["completion_tokens"] > 0 and cancelled["cost"]["total_cost_usd"] > 0
    assert failed["status"] == "error" and failed["level"] == "ERROR"
    assert failed["error"] == {"type": "ResponseError", "status_code": None, "message": None}
    assert failed["usage"]["completion_tokens"] == 0 and failed["cost"]["total_cost_usd"] > 0
    assert run.summary is not None
    assert (run.summary["errors"], run.summary["cost_complete"]) == (1, True)


def test_a_connection_closed_mid_response_records_it_interrupted_and_the_lens_incomplete(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A caller closing the connection while a response streams records that response ``interrupted``,
    with no usage (the server never sent it): its lens's cost is incomplete, not silently short."""
    with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
        connection.response.create()
        for event in connection:
            if event.type.endswith(".delta"):
                break
        connection.close()
    (record,) = records.calls
    assert record["status"] == "interrupted" and record["response"]["id"].startswith("resp_")
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None
    assert record["timing"]["time_to_first_token_ms"] is not None
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_a_connection_the_server_breaks_mid_response_records_it_as_an_error(
    ws: openai.OpenAI, records: Captured
) -> None:
    """The server closing the connection abnormally mid-response: the caller gets the SDK's error, the
    response is an ``error`` naming it."""
    with ws.realtime.connect(model=MODEL) as connection:
        connection.response.create(response={"metadata": {"x-fake-fault": "close"}})
        with pytest.raises(ConnectionClosedError):
            _until_done(connection)
    (record,) = records.calls
    assert record["status"] == "error" and record["error"]["type"] == "ConnectionClosedError"
    assert record["usage"]["total_tokens"] is None


def test_a_connection_outliving_its_lens_counts_its_responses_in_it(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A connection opened in a lens and used after the block (a voice session handed to a background
    task) holds the lens open: the summary at the block's end shows it open and incomplete, and the lens
    record, written when the connection closes, counts every response it ended."""
    with monitor.lens("voice_agent") as run:
        connection = ws.realtime.connect(model=MODEL).enter()
    assert run.summary is not None
    assert (run.summary["open_calls"], run.summary["cost_complete"]) == (1, False)
    with monitor.lens("another"):  # the thread reading the events is elsewhere: the response is not its
        connection.response.create()
        _until_done(connection)
    assert records.lenses[0]["context"]["lens_key"] == "another"
    assert records.lenses[0]["summary"]["total_api_calls"] == 0
    connection.response.create()
    _until_done(connection)
    assert len(records.lenses) == 1  # the voice agent's is not written while its connection is open
    connection.close()
    first, second = records.calls
    assert first["context"]["lens_run_id"] == second["context"]["lens_run_id"] == run.run_id
    voice = records.lenses[1]["summary"]
    assert (voice["total_api_calls"], voice["open_calls"], voice["cost_complete"]) == (2, 0, True)
    assert run.summary == voice


def test_a_connection_opened_after_its_lens_ended_is_filed_under_no_run_of_it(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A connection a thread opens only after the lens that handed it the work ended counts in no run
    of it, as an HTTP call does: its responses carry the lens key but no run id, so a report over the
    log finds one whole run, not a second one cut short."""
    started = threading.Event()

    def late_session() -> None:
        started.wait(5)
        _conversation(ws)

    with monitor.lens("voice_agent") as run:
        worker = threading.Thread(target=llm_ledger.propagate(late_session))
        worker.start()
    started.set()
    worker.join(10)
    assert run.summary is not None and run.summary["total_api_calls"] == 0
    assert len(records.calls) == 2
    for call in records.calls:
        assert call["context"]["lens_key"] == "voice_agent" and "lens_run_id" not in call["context"]
    [row] = summarise_records(records, by="lens").rows
    assert (row.lens_runs, row.cut_short_runs, row.calls) == (1, 0, 2)


def test_events_read_after_close_record_nothing_and_hold_no_lens(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Events the connection had received when it was closed (a thread reading them while another closes
    the connection) are still the caller's, but record nothing: a response begun after the close holds
    no lens open, and the lens record is written when its block ends. The ``response.create`` whose
    answer was not read at the close is one ``interrupted`` call with no usage: it may have been billed
    (here it was), so its lens's cost is incomplete, not silently complete."""
    with monitor.lens("voice_agent") as run:
        connection = ws.realtime.connect(model=MODEL).enter()
        connection.response.create()
        connection.input_audio_buffer.clear()  # answered once the whole response was sent
        deadline = time.monotonic() + 10
        while not any(e.get("type") == "input_audio_buffer.clear" for e in fake_openai.realtime_events):
            assert time.monotonic() < deadline, "the fake never read input_audio_buffer.clear"
            time.sleep(0.01)
        connection.close()
        assert [connection.recv().type for _ in range(2)] == ["session.created", "response.created"]
    (call,) = records.calls
    assert (call["status"], call["usage"]["total_tokens"], call["cost"]["total_cost_usd"]) == (
        "interrupted",
        None,
        None,
    )
    (lens,) = records.lenses
    summary = lens["summary"]
    assert (summary["total_api_calls"], summary["open_calls"], summary["cost_complete"]) == (1, 0, False)
    assert run.summary == summary


def test_a_connection_closed_while_its_reader_records_its_end_writes_its_lens_once(
    fake_openai: FakeOpenAI,
) -> None:
    """A connection the server broke, closed by another thread while the reader records what the break
    cut short (a response streaming, a transcription of its input audio running): the lens run the
    connection held open is written once, after both calls, counting both."""

    def close_elsewhere(record: Any) -> None:  # a sink: at the first call cut short, another thread closes
        if record["event"] != "lens_summary" and record["status"] == "error":
            closer = threading.Thread(target=connection.close)
            closer.start()
            closer.join(10)

    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[close_elsewhere])
    hearing: Any = {"model": "gpt-4o-transcribe", "prompt": "x-fake-fault: hang"}  # never ends
    with socket_client(fake_openai) as raw, capture(monitor) as records:
        with monitor.lens("voice_agent") as run:
            connection = monitor.instrument(raw).realtime.connect(model=MODEL).enter()
        connection.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": hearing}}}
        )
        connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
        connection.input_audio_buffer.commit()
        connection.response.create(response={"metadata": {"x-fake-fault": "close"}})
        with pytest.raises(ConnectionClosedError):
            _until_done(connection)
    assert [(c["operation"], c["status"]) for c in records.calls] == [
        ("realtime", "error"),
        ("transcription", "error"),
    ]
    (lens,) = records.lenses
    assert (lens["summary"]["total_api_calls"], lens["summary"]["open_calls"]) == (2, 0)
    assert run.summary == lens["summary"]


def test_a_refused_response_create_records_nothing(ws: openai.OpenAI, records: Captured) -> None:
    """A ``response.create`` the server refuses (an ``error`` event) makes no response, so no call; the
    caller gets the error event as the SDK gives it."""
    with ws.realtime.connect(model=MODEL) as connection:
        connection.response.create(response={"metadata": {"x-fake-fault": "error"}})
        event = next(e for e in connection if e.type != "session.created")
        assert event.type == "error"
        connection.response.create()
        _until_done(connection)
    (record,) = records.calls
    assert record["status"] == "ok"


def _refusal_of_http(client: Any) -> str:
    """The message an HTTP call of the same lens run is refused with."""
    with pytest.raises(llm_ledger.BudgetExceededError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return str(raised.value)


def test_raise_mode_refuses_a_response_create_of_a_run_over_its_budget_unsent(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Raise mode: once the connection's lens run went over its budget, ``response.create`` raises
    BudgetExceededError from send() before the event goes out, as an HTTP call of the run is refused;
    a run under its budget is not refused, and the connection carries on with other events."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"voice_agent": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
        for _ in range(2):  # the first within the limit, the second goes over it: neither refused
            connection.response.create()
            _until_done(connection)
        with pytest.raises(llm_ledger.BudgetExceededError) as raised:
            connection.response.create()
        connection.input_audio_buffer.clear()  # answered after every event sent before it was read
        assert connection.recv().type == "input_audio_buffer.cleared"
        assert str(raised.value) == _refusal_of_http(ws)
    sent = [e["type"] for e in fake_openai.realtime_events]
    assert sent == ["response.create", "response.create", "input_audio_buffer.clear"]
    assert "'voice_agent' is over its budget (max_api_calls 1, reached 2;" in str(raised.value)
    assert raised.value.record["context"]["lens_run_id"] == run.run_id
    assert len(records.calls) == 2 and run.summary is not None and run.summary["total_api_calls"] == 2


@pytest.mark.asyncio
async def test_raise_mode_refuses_an_async_response_create_alike(
    aws: openai.AsyncOpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The async connection's awaited send() raises the refusal; nothing reaches the server."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"voice_agent": {"max_api_calls": 0}}}, mode="raise")
    async with monitor.lens("voice_agent"), aws.realtime.connect(model=MODEL) as connection:
        await connection.response.create()
        await _until_done_async(connection)
        with pytest.raises(llm_ledger.BudgetExceededError, match=r"max_api_calls 0, reached 1; .*not sent"):
            await connection.response.create()
        await connection.input_audio_buffer.clear()
        assert (await connection.recv()).type == "input_audio_buffer.cleared"
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create", "input_audio_buffer.clear"]
    assert len(records.calls) == 1


@pytest.mark.sdk3  # the manager's send(), queueing events the connection writes as it opens, is 3.x's
def test_raise_mode_refuses_a_response_create_queued_before_the_connection_opens(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.create`` queued with the connection manager's ``send()`` before ``enter()`` is written
    as the connection opens: within its run's budget it is a call of the connection; once the run went
    over its budget in raise mode the manager's ``send()`` refuses it, unqueued, as ``connection.send()``
    does."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"voice_agent": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("voice_agent") as run:
        manager = ws.realtime.connect(model=MODEL)
        manager.send({"type": "response.create"})
        with manager as connection:
            _until_done(connection)
            connection.response.create()  # goes over the budget: not refused
            _until_done(connection)
        manager = ws.realtime.connect(model=MODEL)
        with pytest.raises(llm_ledger.BudgetExceededError, match=r"max_api_calls 1, reached 2; .*not sent"):
            manager.send({"type": "response.create"})
        with manager as connection:
            connection.input_audio_buffer.clear()
            assert (
                next(e for e in connection if e.type != "session.created").type
                == "input_audio_buffer.cleared"
            )
    sent = [e["type"] for e in fake_openai.realtime_events]
    assert sent == ["response.create", "response.create", "input_audio_buffer.clear"]
    assert [c["status"] for c in records.calls] == ["ok", "ok"]
    assert run.summary is not None and run.summary["total_api_calls"] == 2


@pytest.mark.sdk3  # reconnecting a dropped connection (on_reconnecting) is openai 3.x's
@pytest.mark.parametrize("reconnects", [True, False], ids=["reconnected", "gave up"])
def test_a_response_create_queued_while_reconnecting_is_a_call_only_once_written(
    ws: openai.OpenAI,
    fake_openai: FakeOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    reconnects: bool,
) -> None:
    """openai 3.x reconnects a dropped connection (``on_reconnecting``), queueing what is sent meanwhile:
    the response the drop cut is an ``error`` (billed for what it made, its usage never came: the lens's
    cost is incomplete); a ``response.create`` queued meanwhile is a call once the reconnect writes it,
    and none when the SDK gives up (it hands it back to the caller unsent)."""

    def reconnecting(event: Any) -> Any:
        connection.response.create()  # the SDK is reconnecting: queued
        return None if reconnects else {"abort": True}

    with (
        monitor.lens("voice_agent") as run,
        ws.realtime.connect(model=MODEL, on_reconnecting=reconnecting, initial_delay=0.01) as connection,
    ):
        connection.response.create(response={"metadata": {"x-fake-fault": "close"}})
        if reconnects:
            _until_done(connection)
        else:
            with pytest.raises(openai.WebSocketConnectionClosedError) as raised:
                _until_done(connection)
            assert [json.loads(m)["type"] for m in raised.value.unsent_messages] == ["response.create"]
    assert len(fake_openai.realtime_events) == (2 if reconnects else 1)
    assert [c["status"] for c in records.calls] == (["error", "ok"] if reconnects else ["error"])
    assert records.calls[0]["error"]["type"] == "ConnectionClosedError"
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_transcripts_are_captured_only_with_content_capture_and_scrubbed(fake_openai: FakeOpenAI) -> None:
    """The text and audio transcripts of a response are the record's captured output only when content
    capture is on, through the redact hook as other captured text."""
    plain = llm_ledger.LLMCallMonitor(logger=None)
    capturing = llm_ledger.LLMCallMonitor(
        logger=None, capture_content=True, redact=lambda t: t.replace("weather", "[W]")
    )
    for monitor in (plain, capturing):
        with socket_client(fake_openai) as raw, capture(monitor) as records:
            with monitor.instrument(raw).realtime.connect(model=MODEL) as connection:
                connection.conversation.item.create(item=ASK)
                connection.response.create()
                _until_done(connection)
            (record,) = records.calls
            if monitor is plain:
                assert "content" not in record
            else:
                assert record["content"] == {"output": "Summary: what is the [W] like"}


def test_a_cancelled_responses_word_cut_mid_way_is_not_captured(fake_openai: FakeOpenAI) -> None:
    """A response cancelled mid-word ("Ali" of "Alice") keeps its captured text up to its last whole
    word: a cut word, which a redact hook matching whole words would miss, is never stored; the redact
    hook sees exactly the text stored."""
    seen: list[str] = []

    def redact(text: str) -> str:
        seen.append(text)
        return text.replace("Alice", "[NAME]")

    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True, redact=redact)
    name: Any = {**ASK, "content": [{"type": "input_text", "text": " ".join(["Alice"] * 8)}]}
    metadata = {"x-fake-status": "cancelled", "x-fake-chunks": "5"}
    with (
        socket_client(fake_openai) as raw,
        capture(monitor) as records,
        monitor.instrument(raw).realtime.connect(model=MODEL) as connection,
    ):
        connection.conversation.item.create(item=name)
        connection.response.create(response={"output_modalities": ["text"], "metadata": metadata})
        said = "".join(e.delta for e in _until_done(connection) if e.type == "response.output_text.delta")
    assert said == "Summary: Alice Alice Ali"  # what the caller received, cut mid-name
    (record,) = records.calls
    assert record["status"] == "interrupted" and record["response"]["content_length"] == len(said)
    assert record["content"]["output"] == "Summary: [NAME] [NAME] "
    assert seen == ["Summary: Alice Alice "]


def test_the_beta_realtime_connect_is_watched_too(ws: openai.OpenAI, records: Captured) -> None:
    """``client.beta.realtime.connect()`` (the preview interface, kept by the SDK) is recorded alike."""
    with ws.beta.realtime.connect(model="gpt-4o-realtime-preview") as connection:
        connection.response.create()
        _until_done(connection)
    (record,) = records.calls
    assert record["operation"] == "realtime" and record["request"]["model"] == "gpt-4o-realtime-preview"
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == _genai(record)


SIGTERM = "import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)"


# each API's connection, the response asked on it, and that response's model
OPENED = {
    "realtime": ('realtime.connect(model="gpt-realtime")', "response.create()", "gpt-realtime"),
    "responses": ("responses.connect()", 'response.create(model="gpt-4.1-mini", input="hi")', "gpt-4.1-mini"),
}


@pytest.mark.parametrize(
    ("api", "prelude", "end"),
    [
        ("realtime", "", ""),
        ("realtime", EARLY_FINALIZE, ""),
        ("realtime", "", SIGTERM),
        # responses.connect() is openai 2.x's
        pytest.param("responses", "", "", marks=pytest.mark.sdk2),
        pytest.param("responses", "", SIGTERM, marks=pytest.mark.sdk2),
    ],
    ids=["exit", "exit, finalize made before logging", "SIGTERM", "responses, exit", "responses, SIGTERM"],
)
def test_a_connection_left_open_at_exit_is_written_with_its_lens(
    fake_openai: FakeOpenAI, tmp_path: Path, api: str, prelude: str, end: str
) -> None:
    """A connection still open when the process ends (at exit, or by SIGTERM past every exit hook), a
    response streaming on it, is written: the response as interrupted, then the lens run it held open."""
    connect, create, model = OPENED[api]
    script = textwrap.dedent(
        f"""
        {prelude}
        import openai, llm_ledger
        llm_ledger.configure(log_dir={str(tmp_path)!r})
        raw = openai.OpenAI(api_key="sk-x", base_url={fake_openai.base_url!r},
                            websocket_base_url={fake_openai.websocket_base_url!r})
        with llm_ledger.lens("voice_agent"):
            connection = llm_ledger.instrument(raw).{connect}.enter()
        connection.{create}
        while connection.recv().type != "response.created":
            pass
        {end}
        """
    )
    done = warm_python.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=60)
    assert done.returncode == (-signal.SIGTERM if end else 0)
    call, lens = [json.loads(x) for x in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert (call["operation"], call["status"], call["request"]["model"]) == (api, "interrupted", model)
    assert lens["event"] == "lens_summary" and lens["summary"]["total_api_calls"] == 1


def test_events_read_as_raw_bytes_are_watched_alike(ws: openai.OpenAI, records: Captured) -> None:
    """A caller reading ``recv_bytes()`` and parsing the events itself gets the bytes the SDK gives,
    and each response is recorded as when it reads ``recv()``."""
    with ws.realtime.connect(model=MODEL) as connection:
        connection.response.create()
        kinds: list[str] = []
        while not kinds or kinds[-1] != "response.done":
            data = connection.recv_bytes()
            assert type(data) is bytes
            kinds.append(json.loads(data)["type"])
    (record,) = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"] > 0
    assert kinds[:2] == ["session.created", "response.created"]


@pytest.mark.sdk3
def test_events_dispatched_to_handlers_are_watched_alike(ws: openai.OpenAI, records: Captured) -> None:
    """openai 3.x's push interface (``on()`` handlers run by ``dispatch_events()``) reads through the
    same connection: each response is recorded, and every handler gets its events."""
    done: list[Any] = []
    with ws.realtime.connect(model=MODEL) as connection:

        def finished(event: Any) -> None:
            done.append(event)
            connection.close()

        connection.on("response.done", finished)
        connection.response.create()
        connection.dispatch_events()
    (record,) = records.calls
    assert [event.response.id for event in done] == [record["response"]["id"]]
    assert record["status"] == "ok"


def test_a_response_create_that_failed_to_send_is_no_call(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.create`` whose ``send()`` raised (an event the SDK cannot encode; the socket the
    server dropped) never went out: it is no call, and the next response is timed from its own
    ``response.create``, not from the one that failed."""
    with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
        unencodable: Any = {"type": "response.create", "response": {"metadata": {"at": object()}}}
        with pytest.raises(TypeError):  # not JSON: the SDK raises before writing anything
            connection.send(unencodable)
        time.sleep(0.5)
        created = time.perf_counter()
        connection.response.create()
        _until_done(connection)
        done = time.perf_counter()
        connection.response.create(response={"metadata": {"x-fake-fault": "close"}})
        with pytest.raises(ConnectionClosedError):
            _until_done(connection)
        with pytest.raises(ConnectionClosedError):  # the server is gone: nothing goes out
            connection.response.create()
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create", "response.create"]
    answered, broken = records.calls
    assert answered["status"] == "ok" and answered["timing"]["duration_ms"] <= (done - created) * 1000
    assert broken["status"] == "error" and broken["response"]["id"] is not None
    assert run.summary is not None and run.summary["total_api_calls"] == 2


@pytest.mark.sdk3  # send_raw() is openai 3.x's
def test_a_response_create_sent_raw_is_noted_as_one_sent_with_send(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.create`` written as text or bytes with ``send_raw()`` is noted as ``send()`` notes
    it: its response is timed from it, and a run over its budget in raise mode refuses it, unsent; the
    other messages pass as they are."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"voice_agent": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("voice_agent"), ws.realtime.connect(model=MODEL) as connection:
        connection.send_raw(json.dumps({"event_id": "raw-1", "type": "response.create"}))
        connection.send_raw(b'{"type": "response.create", "response": {"output_modalities": ["text"]}}')
        time.sleep(0.3)
        _until_done(connection)
        _until_done(connection)
        with pytest.raises(llm_ledger.BudgetExceededError):
            connection.send_raw('{"type": "response.create"}')
        connection.send_raw(b'{"type": "input_audio_buffer.clear"}')
        assert connection.recv().type == "input_audio_buffer.cleared"
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create"] * 2 + [
        "input_audio_buffer.clear"
    ]
    assert [c["status"] for c in records.calls] == ["ok", "ok"]
    assert all(c["timing"]["duration_ms"] >= 300 for c in records.calls)


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_the_sessions_input_transcriptions_are_calls_of_its_lens(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, beta: bool
) -> None:
    """A session transcribing its input audio (billed apart, at the transcription model's rates) makes
    each ``input_audio_transcription.completed`` one ``transcription`` call of the lens, priced as
    genai-prices prices its usage; one in seconds (whisper-1) is unpriced and leaves the cost
    incomplete."""
    turns = {"gpt-4o-transcribe": bytes(4000), "whisper-1": bytes(32000)}
    with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
        for model, audio in turns.items():
            hearing: Any = (
                {"input_audio_transcription": {"model": model}}
                if beta
                else {"type": "realtime", "audio": {"input": {"transcription": {"model": model}}}}
            )
            connection.session.update(session=hearing)
            connection.input_audio_buffer.append(audio=base64.b64encode(audio).decode())
            connection.input_audio_buffer.commit()
            connection.response.create()
            events = _until_done(connection)
            assert "conversation.item.input_audio_transcription.completed" in [e.type for e in events]
    heard, _, unpriced, _ = records.calls
    assert [c["operation"] for c in records.calls] == ["transcription", "realtime"] * 2
    assert (heard["request"]["model"], heard["status"]) == ("gpt-4o-transcribe", "ok")
    usage = heard["usage"]
    assert (usage["prompt_tokens"], usage["prompt_audio_tokens"], usage["completion_tokens"]) == (40, 40, 6)
    reference = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=40, input_audio_tokens=40, output_tokens=6),
        "gpt-4o-transcribe",
        provider_id="openai",
    ).total_price
    assert Decimal(repr(heard["cost"]["total_cost_usd"])) == reference > 0
    assert heard["context"]["lens_run_id"] == run.run_id
    assert unpriced["request"]["model"] == "whisper-1" and unpriced["cost"]["total_cost_usd"] is None
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["cost_complete"]) == (4, False)
    assert run.summary["total_cost_usd"] == pytest.approx(
        sum(c["cost"]["total_cost_usd"] or 0 for c in records.calls)
    )


def test_a_failed_input_transcription_is_an_error_and_an_unended_one_interrupted(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A transcription of input audio that failed (``input_audio_transcription.failed``) is a
    ``transcription`` call with status ``error`` and no usage (none billed: its lens's cost complete); one
    not ended when the connection closes is ``interrupted``, with no usage: it may have been billed, so
    its lens's cost is incomplete."""
    audio = base64.b64encode(bytes(4000)).decode()
    runs = []
    for prompt, until in (("x-fake-fault: error", "failed"), ("", "committed")):
        with monitor.lens("voice_agent") as run, ws.realtime.connect(model=MODEL) as connection:
            hearing: Any = {"model": "gpt-4o-transcribe", "prompt": prompt}
            connection.session.update(
                session={"type": "realtime", "audio": {"input": {"transcription": hearing}}}
            )
            connection.input_audio_buffer.append(audio=audio)
            connection.input_audio_buffer.commit()
            heard = cast(Any, next(e for e in connection if e.type.endswith(until))).item_id
            # the second's transcription.completed is left unread at the close
        runs.append(run)
    error, cut = records.calls
    assert [c["operation"] for c in records.calls] == ["transcription"] * 2
    assert (error["status"], error["error"]["type"]) == ("error", "ResponseError")
    assert (cut["status"], cut["error"], cut["response"]["id"]) == ("interrupted", None, heard)
    for call, run in zip(records.calls, runs, strict=True):
        assert call["request"]["model"] == "gpt-4o-transcribe" and call["usage"]["total_tokens"] is None
        assert call["cost"]["total_cost_usd"] is None and call["context"]["lens_run_id"] == run.run_id
    summaries = [cast(dict[str, Any], run.summary) for run in runs]
    assert [(s["errors"], s["cost_complete"]) for s in summaries] == [(1, True), (0, False)]


def test_a_transcription_is_of_the_model_its_audio_was_committed_under(
    ws: openai.OpenAI, records: Captured
) -> None:
    """A transcription still running when the session changes its transcription model is a call of the
    model its audio was committed under, not of the session's latest."""
    with ws.realtime.connect(model=MODEL) as connection:
        for model, prompt in (("gpt-4o-transcribe", "x-fake-fault: hang"), ("whisper-1", "")):
            hearing: Any = {"model": model, "prompt": prompt}  # the first never ends
            connection.session.update(
                session={"type": "realtime", "audio": {"input": {"transcription": hearing}}}
            )
            connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
            connection.input_audio_buffer.commit()
        next(e for e in connection if e.type.endswith("transcription.completed"))  # the second's
    assert [(c["request"]["model"], c["status"]) for c in records.calls] == [
        ("whisper-1", "ok"),
        ("gpt-4o-transcribe", "interrupted"),
    ]


def test_an_error_drops_only_the_response_create_it_names(ws: openai.OpenAI, records: Captured) -> None:
    """An ``error`` naming another client event (``error.event_id``: a ``response.cancel`` refused) leaves
    the ``response.create`` sent after it timed from its send; one naming a ``response.create`` (refused)
    drops that one alone."""
    with ws.realtime.connect(model=MODEL) as connection:
        connection.response.cancel(event_id="cancel-1")
        connection.response.create(event_id="create-1", response={"metadata": {"x-fake-fault": "error"}})
        connection.response.create(event_id="create-2")
        time.sleep(0.3)
        events = _until_done(connection)
    assert [cast(Any, e).error.event_id for e in events if e.type == "error"] == ["cancel-1", "create-1"]
    (record,) = records.calls
    assert record["status"] == "ok" and record["timing"]["duration_ms"] >= 300


def test_a_response_cut_by_close_is_timed_to_when_close_was_called(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """A response cut by the caller's ``close()`` ends when the caller gave up, not when ``close()``
    returned: with messages left unread, the closing handshake waits for its timeout."""
    options: Any = {"close_timeout": 1}
    with ws.realtime.connect(model=MODEL, websocket_connection_options=options) as connection:
        sent = time.perf_counter()
        for _ in range(3):  # more events than the SDK's queue holds: the close frame waits behind them
            connection.response.create(response={"metadata": {"x-fake-chunks": "400"}})
        next(e for e in connection if e.type.endswith(".delta"))
        deadline = time.monotonic() + 10  # the fake reads the third once it sent the first two's events
        while len(fake_openai.realtime_events) < 3:
            assert time.monotonic() < deadline, "the fake never read the third response.create"
            time.sleep(0.01)
        closing = time.perf_counter()
        connection.close()
        assert time.perf_counter() - closing >= 1
    assert [c["status"] for c in records.calls] == ["interrupted"] * 3
    for call in records.calls:
        assert call["timing"]["duration_ms"] <= (closing - sent) * 1000 + 100


@pytest.mark.asyncio
async def test_tasks_sharing_a_connection_and_a_reader_cancelled_mid_response(
    aws: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """One task reads the events while another sends: each response is a call with the context where the
    connection was opened (not the sending task's); a reader cancelled mid-response leaves that
    response ``interrupted`` when the connection closes, and the lens's cost incomplete."""
    with monitor.track_llm_call(user_id="caller-1"):
        async with monitor.lens("voice_agent") as run, aws.realtime.connect(model=MODEL) as connection:
            first_done, second_delta = asyncio.Event(), asyncio.Event()

            async def read() -> None:
                async for event in connection:
                    if event.type == "response.done":
                        first_done.set()
                    elif event.type.endswith(".delta") and first_done.is_set():
                        second_delta.set()
                        await asyncio.sleep(30)  # a slow consumer, cancelled below

            async def speak() -> None:
                with monitor.track_llm_call(user_id="someone-else"):
                    await connection.response.create()
                    await first_done.wait()
                    await connection.response.create()

            reader = asyncio.create_task(read())
            await speak()
            await second_delta.wait()
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
    answered, cut = records.calls
    assert (answered["status"], cut["status"]) == ("ok", "interrupted")
    assert {c["context"]["user_id"] for c in records.calls} == {"caller-1"}
    assert cut["usage"]["total_tokens"] is None and cut["timing"]["time_to_first_token_ms"] is not None
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["open_calls"], run.summary["cost_complete"]) == (
        2, 0, False,
    )  # fmt: skip
    assert run.summary["total_cost_usd"] == answered["cost"]["total_cost_usd"] > 0


def test_a_function_call_is_a_call_with_its_tool_call_counted(ws: openai.OpenAI, records: Captured) -> None:
    """A response that calls a function (``tool_choice: "required"``) is one call with
    ``tool_calls_count`` 1, its first token the first arguments delta, priced from its usage; the answer
    after the function's output is another, calling none."""
    weather: Any = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    with ws.realtime.connect(model=MODEL) as connection:
        connection.conversation.item.create(item=ASK)
        connection.response.create(response={"tools": [weather], "tool_choice": "required"})
        (call,) = _until_done(connection)[-1].response.output
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "fake city"}
        output: Any = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
        connection.conversation.item.create(item=output)
        connection.response.create(response={"output_modalities": ["text"]})
        _until_done(connection)
    called, answered = records.calls
    assert (called["response"]["tool_calls_count"], answered["response"]["tool_calls_count"]) == (1, 0)
    assert called["response"]["finish_reason"] == "completed" and called["status"] == "ok"
    assert called["timing"]["time_to_first_token_ms"] is not None
    assert called["usage"]["completion_tokens"] > 0 and called["usage"]["completion_audio_tokens"] == 0
    for record in records.calls:
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == _genai(record) > 0
