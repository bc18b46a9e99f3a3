"""Per-call records for non-streamed calls, through the real SDK over loopback HTTP."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from typing import Any

import openai
import pydantic
import pytest

import llm_ledger
import llm_ledger.testing
from llm_ledger import _rates, _servers
from llm_ledger.testing import Captured, FakeOpenAI
from tests.conftest import FAKE_KEY

SEED_KEYS = {
    "timestamp": None,
    "level": None,
    "logger": None,
    "event": None,
    "context": {"lens_key", "source_id", "service"},
    "request": {
        "model",
        "temperature",
        "max_tokens",
        "messages_count",
        "system_prompt_length",
        "user_prompt_length",
        "has_images",
        "image_count",
    },
    "response": {"content_length", "finish_reason"},
    "usage": {"prompt_tokens", "completion_tokens", "total_tokens"},
    "timing": {"duration_ms", "start_time", "end_time"},
    "cost": {"prompt_cost_usd", "completion_cost_usd", "total_cost_usd"},
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
IMAGE: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def _only(records: Captured) -> dict[str, Any]:
    assert len(records.calls) == 1, records.calls
    return records.calls[0]


def test_record_has_the_seed_keys_and_the_extras(client: openai.OpenAI, records: Captured) -> None:
    """A call record carries every key of the seed's example, nested the same way, plus the extras."""
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    record = _only(records)
    for key, nested in SEED_KEYS.items():
        assert key in record
        if nested:
            assert nested <= set(record[key]), key
    assert {"stream", "tools_count"} <= set(record["request"])
    assert {"model", "id", "request_id", "tool_calls_count"} <= set(record["response"])
    assert {"cached_tokens", "reasoning_tokens"} <= set(record["usage"])
    assert "time_to_first_token_ms" in record["timing"]
    assert record["status"] == "ok" and record["error"] is None and record["retries"] == 0
    assert re.fullmatch(r"[0-9a-f]{32}", record["call_id"])
    assert (
        record["logger"] == "llm_monitor" and record["event"] == "llm_api_call" and record["level"] == "INFO"
    )
    for stamp in (record["timestamp"], record["timing"]["start_time"], record["timing"]["end_time"]):
        assert ISO.match(stamp), stamp
    json.dumps(record)  # JSON-ready as it is


def test_request_shape_counts_text_and_images(client: openai.OpenAI, records: Captured) -> None:
    """Lengths count characters of text parts per role; image parts are counted, not measured."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
            {"role": "user", "content": [{"type": "text", "text": "Describe these."}, IMAGE, IMAGE]},
            {"role": "assistant", "content": "ignored in both lengths"},
            {"role": "user", "content": "And this?"},
        ],
        temperature=0.3,
        max_completion_tokens=200,
    )
    request = _only(records)["request"]
    assert request == {
        "model": "gpt-4o-mini",
        "temperature": 0.3,
        "top_p": None,
        "frequency_penalty": None,
        "presence_penalty": None,
        "max_tokens": 200,
        "seed": None,
        "n": None,
        "reasoning_effort": None,
        "output_type": None,
        "messages_count": 5,
        "system_prompt_length": len("You are terse.") + len("Use English."),
        "user_prompt_length": len("Describe these.") + len("And this?"),
        "has_images": True,
        "image_count": 2,
        "stream": False,
        "tools_count": 0,
        "service_tier": None,
        "dimensions": None,
        "encoding_format": None,
        "stop_sequences": None,
        "verbosity": None,
    }


def test_an_explicit_zero_limit_is_recorded_as_sent(client: openai.OpenAI, records: Captured) -> None:
    """``max_completion_tokens=0`` (refused by the API) is recorded as 0, not as the ``max_tokens``
    also sent: the record shows what the server refused."""
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=0,
            max_tokens=9,
        )
    assert _only(records)["request"]["max_tokens"] == 0


def test_a_lens_names_the_answering_model_of_a_call_that_named_none(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A call asking for no model (``model=""``, as some local servers allow) is listed in its lens's
    ``models_used`` by the model that answered, as reports name it; a named model stays as asked."""
    served = {"x-fake-served-model": "acme-local-7b"}
    with monitor.lens("local") as run:
        client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "hi"}], extra_headers=served
        )
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers=served
        )
    assert run.summary is not None and run.summary["models_used"] == ["acme-local-7b", "gpt-4o"]


def test_parameters_not_passed_are_null(client: openai.OpenAI, records: Captured) -> None:
    """temperature and max_tokens the caller did not pass are null, not a default."""
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    request = _only(records)["request"]
    assert request["temperature"] is None and request["max_tokens"] is None
    assert request["has_images"] is False and request["image_count"] == 0


def test_usage_and_cost_match_the_response(
    client: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """Usage is copied from the response, cached tokens priced at the cached rate, costs summed."""
    response = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "x" * 8000}],
        extra_headers={"x-fake-cached-tokens": "1024"},
    )
    record = _only(records)
    usage = response.usage
    assert usage is not None
    assert record["usage"] == {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": 1024,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "prompt_audio_tokens": 0,
        "completion_audio_tokens": 0,
        "cached_audio_tokens": 0,
        "prompt_image_tokens": 0,
        "cached_image_tokens": 0,
    }
    # gpt-4o: $2.50 / 1M input, $1.25 / 1M cached input, $10 / 1M output (public price list)
    expected_prompt = ((usage.prompt_tokens - 1024) * 2.50 + 1024 * 1.25) / 1e6
    expected_completion = usage.completion_tokens * 10.0 / 1e6
    cost = record["cost"]
    assert cost["prompt_cost_usd"] == pytest.approx(expected_prompt, rel=1e-9)
    assert cost["completion_cost_usd"] == pytest.approx(expected_completion, rel=1e-9)
    assert cost["total_cost_usd"] == pytest.approx(expected_prompt + expected_completion, rel=1e-9)
    assert record["response"]["content_length"] == len(response.choices[0].message.content or "")
    assert record["response"]["id"] == response.id
    assert record["response"]["request_id"] == response._request_id is not None
    assert record["response"]["finish_reason"] == "stop"


def test_reasoning_tokens_are_not_billed_twice(client: openai.OpenAI, records: Captured) -> None:
    """Reasoning tokens are inside completion_tokens and priced once at the output rate."""
    response = client.chat.completions.create(
        model="o4-mini",
        messages=[{"role": "user", "content": "think"}],
        extra_headers={"x-fake-reasoning-tokens": "1500"},
    )
    record = _only(records)
    assert response.usage is not None
    assert record["usage"]["reasoning_tokens"] == 1500
    assert record["usage"]["completion_tokens"] == response.usage.completion_tokens
    # o4-mini: $4.40 / 1M output
    assert record["cost"]["completion_cost_usd"] == pytest.approx(
        response.usage.completion_tokens * 4.40 / 1e6, rel=1e-9
    )


def test_served_snapshot_is_recorded_and_priced(client: openai.OpenAI, records: Captured) -> None:
    """The model that served the call is recorded; a dated snapshot is priced as its model."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-served-model": "dated"},
    )
    record = _only(records)
    assert record["request"]["model"] == "gpt-4o-mini"
    assert record["response"]["model"] == "gpt-4o-mini-2024-07-18"
    assert record["cost"]["total_cost_usd"] is not None and record["cost"]["total_cost_usd"] > 0


def test_unknown_model_has_null_cost_and_warns_once(
    client: openai.OpenAI, records: Captured, internal_log: pytest.LogCaptureFixture
) -> None:
    """An unpriced model gives null costs (never 0) and one warning per model."""
    for _ in range(3):
        client.chat.completions.create(model="my-private-model", messages=[{"role": "user", "content": "hi"}])
    assert all(r["cost"]["total_cost_usd"] is None for r in records.calls)
    assert all(r["cost"]["prompt_cost_usd"] is None for r in records.calls)
    warnings = [r for r in internal_log.records if "my-private-model" in r.getMessage()]
    assert len(warnings) == 1


def test_tool_calls_are_counted_without_arguments(client: openai.OpenAI, records: Captured) -> None:
    """tools_count and tool_calls_count are recorded; tool arguments are not."""
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "lookup_secret_fn",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    response = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "call it"}],
        tools=tools,
        tool_choice="required",
    )
    record = _only(records)
    assert record["request"]["tools_count"] == 1
    assert record["response"]["tool_calls_count"] == len(response.choices[0].message.tool_calls or [])
    assert record["response"]["finish_reason"] == "tool_calls"
    assert "lookup_secret_fn" not in json.dumps(record)


class Answer(pydantic.BaseModel):
    summary: str


def test_parse_is_recorded(client: openai.OpenAI, records: Captured) -> None:
    """chat.completions.parse() is watched like create()."""
    parsed = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "sum up"}], response_format=Answer
    )
    assert parsed.choices[0].message.parsed is not None
    record = _only(records)
    assert record["status"] == "ok" and record["usage"]["total_tokens"]


def test_failed_parse_raises_unchanged_and_records_no_content(
    client: openai.OpenAI, records: Captured
) -> None:
    """A parse() validation failure reaches the caller as the SDK raises it; the record quotes nothing."""
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "sum up"}],
            response_format=Answer,
            extra_headers={"x-fake-content": '{"summary": 12345, "leak": "CONFIDENTIAL-TEXT"}'},
        )
    record = _only(records)
    assert record["status"] == "error" and record["level"] == "ERROR"
    assert record["error"]["type"] == "ValidationError"
    assert "CONFIDENTIAL" not in json.dumps(record)
    # the answer was billed: its usage and cost are read from the body the SDK received
    assert record["usage"]["total_tokens"] and record["cost"]["total_cost_usd"]
    assert record["response"]["finish_reason"] == "stop"


def test_length_limited_parse_keeps_its_usage(client: openai.OpenAI, records: Captured) -> None:
    """A parse() stopped by max_tokens is an error record that still carries the billed usage."""
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a long answer please"}],
            response_format=Answer,
            max_tokens=2,
        )
    record = _only(records)
    assert record["status"] == "error" and record["usage"]["completion_tokens"]
    assert record["cost"]["total_cost_usd"] is not None


def test_embeddings_are_recorded(client: openai.OpenAI, records: Captured) -> None:
    """embeddings.create() gives a record with prompt tokens, zero completion tokens and a cost."""
    result = client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
    record = _only(records)
    assert record["operation"] == "embeddings"
    assert record["request"]["user_prompt_length"] == len("alpha beta") + len("gamma")
    assert record["usage"]["prompt_tokens"] == result.usage.prompt_tokens
    assert record["usage"]["completion_tokens"] == 0
    assert record["cost"]["total_cost_usd"] == pytest.approx(result.usage.prompt_tokens * 0.02 / 1e6)


def test_responses_api_is_recorded(client: openai.OpenAI, records: Captured) -> None:
    """responses.create() maps input/output tokens onto the record's usage names."""
    response = client.responses.create(
        model="gpt-4.1-mini", instructions="Be brief.", input="Tell me about ledgers", max_output_tokens=300
    )
    record = _only(records)
    assert record["operation"] == "responses"
    assert record["request"]["system_prompt_length"] == len("Be brief.")
    assert record["request"]["user_prompt_length"] == len("Tell me about ledgers")
    assert record["request"]["max_tokens"] == 300
    assert response.usage is not None
    assert record["usage"]["prompt_tokens"] == response.usage.input_tokens
    assert record["usage"]["completion_tokens"] == response.usage.output_tokens
    assert record["response"]["content_length"] == len(response.output_text)
    assert record["response"]["finish_reason"] == "completed"


@pytest.mark.asyncio
async def test_async_client_is_recorded(aclient: openai.AsyncOpenAI, records: Captured) -> None:
    """AsyncOpenAI calls give the same records as sync ones."""
    await aclient.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    await aclient.embeddings.create(model="text-embedding-3-small", input="hi")
    await aclient.responses.create(model="gpt-4o-mini", input="hi")
    assert [r["operation"] for r in records.calls] == ["chat", "embeddings", "responses"]
    assert all(r["status"] == "ok" and r["usage"]["total_tokens"] for r in records.calls)


def test_http_error_reaches_caller_unchanged(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured
) -> None:
    """A 4xx raises exactly what the bare SDK raises, after an ERROR record without content."""
    bare = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    kwargs: Any = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "SECRET-PROMPT"}],
        "extra_headers": {"x-fake-status": "400"},
    }
    with bare, pytest.raises(openai.BadRequestError) as expected:
        bare.chat.completions.create(**kwargs)
    with pytest.raises(openai.BadRequestError) as got:
        client.chat.completions.create(**kwargs)
    assert str(got.value) == str(expected.value)
    assert got.value.status_code == 400 and got.value.body == expected.value.body
    record = _only(records)
    assert record["status"] == "error" and record["level"] == "ERROR"
    assert record["error"]["type"] == "BadRequestError" and record["error"]["status_code"] == 400
    assert record["error"]["message"].startswith("HTTP 400")
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None
    assert "SECRET-PROMPT" not in json.dumps(record)


def test_retries_are_counted(fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured) -> None:
    """A 500 then a success through the SDK's retry gives one ok record with retries=1."""
    fake_openai.fail_next(500)
    client.with_options(max_retries=2).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    record = _only(records)
    assert record["status"] == "ok" and record["retries"] == 1


def test_connection_error_is_recorded(monitor: llm_ledger.LLMCallMonitor, records: Captured) -> None:
    """A server that is not there: the SDK's APIConnectionError, and an error record for it."""
    with FakeOpenAI() as server:
        base_url = server.base_url
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=base_url, max_retries=0))
    with client, pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    record = _only(records)
    assert record["error"] == {
        "type": "APIConnectionError",
        "status_code": None,
        "message": "Connection error.",
    }


def test_instrumenting_with_another_monitor_moves_the_client_and_says_so(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """instrument() by a second monitor returns the same client, which then reports to that monitor only
    (the last instrument() wins, as docs/MONITORING.md says); the first monitor losing its calls is said
    once on llm_ledger.internal, not silently (a client moved back and forth warns once)."""
    other = llm_ledger.LLMCallMonitor(logger=None)
    with llm_ledger.testing.capture(other) as other_records:
        assert other.instrument(client) is client
        assert other.instrument(client) is client
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(other_records.calls) == 1
    assert records.calls == []
    monitor.instrument(other.instrument(client))
    warnings = [r.getMessage() for r in internal_log.records]
    assert len(warnings) == 1, warnings
    assert "already instrumented by another monitor" in warnings[0]
    assert "the other monitor no longer sees its calls" in warnings[0]


def test_instrumenting_twice_with_one_monitor_records_once(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Instrumenting the same client twice with one monitor still gives one record per call."""
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    with raw:
        assert monitor.instrument(monitor.instrument(raw)) is raw
        raw.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(records.calls) == 1


def test_derived_clients_stay_instrumented(client: openai.OpenAI, records: Captured) -> None:
    """Clients from with_options() and copy() (and copies of copies) are instrumented too."""
    derived = client.with_options(timeout=30).copy(max_retries=1)
    derived.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(records.calls) == 1


def test_a_client_derived_per_request_is_not_matched_against_every_provider_again(
    client: openai.OpenAI, records: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``client.with_options(timeout=...)`` per request (the SDK's per-request idiom) makes a new
    client each time: its provider, found by matching the base URL against every provider genai-prices
    knows (tens of microseconds), is found once per base URL, not once per derived client."""
    matched: list[int] = []
    providers = _rates._genai_providers

    def counted() -> Any:
        matched.append(1)
        return providers()

    monkeypatch.setattr(_servers, "_genai_providers", counted)
    for _ in range(5):
        client.with_options(timeout=30).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert len(matched) <= 1
    assert [call["server"]["provider"] for call in records.calls] == ["openai"] * 5


def test_resources_created_before_instrumenting_are_watched(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A resource object taken from the client before instrument() is watched as well."""
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    completions = raw.chat.completions
    with raw:
        monitor.instrument(raw)
        completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert len(records.calls) == 1


def test_raw_response_is_recorded_and_returned_unchanged(client: openai.OpenAI, records: Captured) -> None:
    """with_raw_response returns the SDK's raw response object, and the call still gets usage."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert raw.http_response.status_code == 200
    record = _only(records)
    assert completion.usage is not None
    assert record["usage"]["total_tokens"] == completion.usage.total_tokens


def test_other_endpoints_pass_through(client: openai.OpenAI, records: Captured) -> None:
    """Endpoints the ledger does not price (here a 404 models list) are not recorded."""
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    assert records.calls == []


@pytest.mark.asyncio
async def test_other_endpoints_pass_through_an_async_client(
    aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """On an async client too, an endpoint the ledger does not price is sent unwatched: its error
    reaches the caller as without the ledger, and nothing is recorded."""
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/models/gpt-4o-mini\)"):
        await aclient.models.retrieve("gpt-4o-mini")
    assert records.calls == []


@pytest.mark.parametrize("client_class", [openai.AzureOpenAI, openai.AsyncAzureOpenAI])
def test_azure_clients_can_be_instrumented(
    client_class: type[Any], monitor: llm_ledger.LLMCallMonitor
) -> None:
    """Azure clients are accepted and their derived clients stay instrumented."""
    azure = client_class(api_key=FAKE_KEY, api_version="2024-10-21", azure_endpoint="http://127.0.0.1:9")
    try:
        assert monitor.instrument(azure) is azure
        assert azure.with_options(timeout=3)._llm_ledger_monitor is monitor  # shares azure's connections
    finally:
        if inspect.iscoroutine(closing := azure.close()):  # the async client's close is a coroutine
            asyncio.run(closing)


def test_instrumenting_something_else_is_a_clear_error(monitor: llm_ledger.LLMCallMonitor) -> None:
    """instrument() on an object that is not an OpenAI client names what it expected."""
    with pytest.raises(TypeError, match="expects an openai client"):
        monitor.instrument(object())


@pytest.mark.parametrize("client_class", [openai.OpenAI, openai.AsyncAzureOpenAI])
def test_instrumenting_a_client_class_says_to_pass_an_instance(
    monitor: llm_ledger.LLMCallMonitor, client_class: type
) -> None:
    """instrument(openai.OpenAI), the class for the client, says to pass a client made from it."""
    name = client_class.__name__
    with pytest.raises(
        TypeError, match=rf"got the class {name} itself; pass a client: instrument\({name}\(\.\.\.\)\)"
    ):
        monitor.instrument(client_class)


@pytest.mark.asyncio
async def test_async_retries_and_request_id_are_recorded(
    fake_openai: FakeOpenAI, aclient: openai.AsyncOpenAI, records: Captured
) -> None:
    """The async client's records also carry the SDK's retry count and the request id."""
    fake_openai.fail_next(503)
    await aclient.with_options(max_retries=2).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    record = _only(records)
    assert record["retries"] == 1
    assert record["response"]["request_id"].startswith("req_")


@pytest.mark.parametrize(
    "epoch",
    [0.0, 0.9995, 59.001, 86399.999, 86400.0, 951_782_400.5, 1_732_000_000.25, 4_102_444_799.999],
)
def test_timestamps_are_utc_iso_with_milliseconds(epoch: float) -> None:
    """Record timestamps read like strftime's UTC text, whatever seconds were formatted before."""
    import time

    from llm_ledger._records import iso_timestamp

    for other in (epoch + 1.5, epoch + 3601.0, epoch):  # a call's start and end in other seconds
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(other)))
        assert iso_timestamp(other) == f"{expected}.{int((other - int(other)) * 1000):03d}Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_timestamp(epoch))


def test_durations_are_milliseconds_rounded_like_round() -> None:
    """duration_ms and time_to_first_token_ms read as round(seconds * 1000, 3) would give."""
    import random

    from llm_ledger._records import rounded_ms as _ms

    rng = random.Random(7)
    for scale in (1e-6, 1e-3, 1.0, 60.0, 3600.0):
        for _ in range(20_000):
            seconds = rng.random() * scale
            assert _ms(seconds) == round(seconds * 1000, 3), seconds
    assert (_ms(0.0), _ms(0.0123456), _ms(1.5)) == (0.0, 12.346, 1500.0)


def test_a_global_sink_given_as_a_bound_method_is_removed_again(client: openai.OpenAI) -> None:
    """``remove_global_sink(obj.method)`` removes what ``add_global_sink(obj.method)`` added, although
    each attribute read makes a new bound method (the plugin's sink is one)."""

    class Keeper:
        def __init__(self) -> None:
            self.records: list[Any] = []

        def take(self, record: Any) -> None:
            self.records.append(record)

    keeper = Keeper()
    llm_ledger.testing.add_global_sink(keeper.take)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        llm_ledger.testing.remove_global_sink(keeper.take)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert [r["event"] for r in keeper.records] == ["llm_api_call"]


async def _read_broken_body(client: openai.AsyncOpenAI, path: str, fault: str) -> None:
    hi: Any = [{"role": "user", "content": "hi"}]
    headers = {"x-fake-fault": fault}
    if path == "create":
        await client.chat.completions.create(model="gpt-4o-mini", messages=hi, extra_headers=headers)
    else:
        manager = client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=hi, extra_headers=headers
        )
        async with manager as response:
            await response.parse()


@pytest.mark.asyncio
@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("fault", ["cut-stream", "reset"])
@pytest.mark.parametrize("path", ["create", "with_streaming_response"])
async def test_an_answer_whose_body_broke_leaves_its_lens_cost_incomplete(
    path: str,
    fault: str,
    retries: int,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    """The server answered 200 (it generated the answer: billed), then the body broke (a proxy's idle
    timeout, a reset): the caller gets the SDK's error, the record says the status the server answered,
    and the lens does not claim a complete cost, as for a stream that broke after it began."""
    client = aclient.with_options(max_retries=retries)
    with monitor.lens("digest") as run, pytest.raises(Exception) as raised:  # noqa: PT011 - the SDK's own
        await _read_broken_body(client, path, fault)
    assert not isinstance(raised.value, llm_ledger.LedgerError)
    [record] = records.calls
    assert record["status"] == "error" and record["error"]["status_code"] == 200
    assert record["retries"] == (retries if path == "create" else 0)  # a body the caller reads: not retried
    assert record["cost"]["total_cost_usd"] is None
    assert run.summary is not None and run.summary["errors"] == 1
    assert run.summary["cost_complete"] is False
