"""Usage shapes found auditing the cost of calls against genai-prices and the providers' own documentation,
through the real SDK with a client pointed at the provider's own base URL (carried to the loopback server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest

import llm_ledger
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import FAKE_KEY
from tests.sdk import sdk_http
from tests.test_cost_providers import call

HI: Any = [{"role": "user", "content": "summarise the meeting notes for the whole team"}]
GENAI = f"genai-prices {genai_prices.__version__}"


def _to_loopback(server: FakeOpenAI, request: Any, content: bytes) -> Any:
    """``request`` to a provider's host carried to the loopback ``server``, at the endpoint's plain path."""
    loopback = sdk_http.URL(server.base_url)
    endpoint = request.url.path.rsplit("/", 2)
    path = "/v1/" + ("/".join(endpoint[1:]) if endpoint[-2] == "chat" else endpoint[-1])
    url = request.url.copy_with(scheme="http", host=loopback.host, port=loopback.port, path=path)
    return sdk_http.Request(request.method, url, headers=request.headers, content=content)


class _ToLoopback(sdk_http.BaseTransport):
    """The SDK's requests to a provider's host carried to the loopback server (the host cannot be reached
    here); the SDK, and the ledger, still see the base URL the client names."""

    def __init__(self, server: FakeOpenAI) -> None:
        self._server = server
        self._inner = sdk_http.HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        return self._inner.handle_request(_to_loopback(self._server, request, request.read()))

    def close(self) -> None:
        self._inner.close()


class _AsyncToLoopback(sdk_http.AsyncBaseTransport):
    """:class:`_ToLoopback` for an async client."""

    def __init__(self, server: FakeOpenAI) -> None:
        self._server = server
        self._inner = sdk_http.AsyncHTTPTransport()

    async def handle_async_request(self, request: Any) -> Any:
        content = await request.aread()
        return await self._inner.handle_async_request(_to_loopback(self._server, request, content))

    async def aclose(self) -> None:
        await self._inner.aclose()


def provider_client(server: FakeOpenAI, base_url: str) -> openai.OpenAI:
    """An SDK client of the provider at ``base_url`` whose requests reach the loopback ``server``."""
    return openai.OpenAI(
        api_key=FAKE_KEY,
        base_url=base_url,
        max_retries=0,
        http_client=sdk_http.Client(transport=_ToLoopback(server)),
    )


def async_provider_client(server: FakeOpenAI, base_url: str) -> openai.AsyncOpenAI:
    """:func:`provider_client`'s async twin."""
    return openai.AsyncOpenAI(
        api_key=FAKE_KEY,
        base_url=base_url,
        max_retries=0,
        http_client=sdk_http.AsyncClient(transport=_AsyncToLoopback(server)),
    )


@pytest.fixture
def moonshot(fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor) -> Iterator[openai.OpenAI]:
    """A client of Moonshot's API (https://api.moonshot.ai/v1), instrumented by the test's monitor."""
    with provider_client(fake_openai, "https://api.moonshot.ai/v1") as raw:
        yield monitor.instrument(raw)


def genai_usd(provider: str, model: str, prompt: int, cached: int, completion: int) -> Decimal:
    """genai-prices' price of these tokens (the independent reference, given the cache hits)."""
    usage = genai_prices.Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    return genai_prices.calc_price(usage, model, provider_id=provider).total_price


def genai_calc(record: dict[str, Any], provider: str) -> Any:
    """genai-prices' ``calc_price`` of a record's usage: its served model at ``provider``, on the service
    tier that served it, at the moment it was priced at (the independent reference)."""
    usage, priced_at = record["usage"], record["cost"]["priced_at"]
    return genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            cache_read_tokens=usage["cached_tokens"],
            cache_write_tokens=usage["cache_write_tokens"],
            input_audio_tokens=usage["prompt_audio_tokens"],
            output_tokens=usage["completion_tokens"],
            output_audio_tokens=usage["completion_audio_tokens"],
        ),
        record["response"]["model"],
        provider_id=provider,
        genai_request_timestamp=priced_at and datetime.fromisoformat(priced_at),
        price_context={"service_tier": record["response"]["service_tier"]},
    )


ANSWER = {
    "id": "chatcmpl-69bbcc292af1bf47c1d8a74b",
    "object": "chat.completion",
    "created": 1773915177,
    "model": "kimi-k2-0905-preview",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done."}, "finish_reason": "stop"}],
}


@pytest.mark.parametrize(
    "usage",
    [
        # Kimi's API reference: the cache hits at the top of usage, no prompt_tokens_details
        {"prompt_tokens": 1336, "completion_tokens": 31, "total_tokens": 1367, "cached_tokens": 1280},
        # as kimi-k2-0905-preview answered in AstrBotDevs/AstrBot#6614: both
        {
            "prompt_tokens": 1336,
            "completion_tokens": 31,
            "total_tokens": 1367,
            "cached_tokens": 1280,
            "prompt_tokens_details": {"cached_tokens": 1280},
        },
    ],
    ids=["top-level", "both"],
)
def test_moonshot_cache_hits_reported_at_the_top_of_usage_cost_the_cached_rate(
    moonshot: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured, usage: dict[str, Any]
) -> None:
    """Moonshot reports the prompt tokens its cache served as ``usage.cached_tokens`` (not under
    ``prompt_tokens_details``): the record counts them as cached and the call costs Kimi's cache-hit rate
    for them, as Moonshot bills it, not the full input rate."""
    fake_openai.fail_next(200, body={**ANSWER, "usage": usage})
    reply = moonshot.chat.completions.create(model="kimi-k2-0905-preview", messages=HI)
    assert reply.usage is not None and reply.usage.prompt_tokens == 1336  # the caller's answer, unchanged
    (record,) = records.calls
    assert record["server"]["provider"] == "moonshotai" and record["cost"]["matched_by"] == "provider"
    assert record["usage"]["cached_tokens"] == 1280
    assert record["cost"]["source"] == GENAI
    cost = Decimal(repr(record["cost"]["total_cost_usd"]))
    assert cost == genai_usd("moonshotai", "kimi-k2-0905-preview", 1336, 1280, 31)
    assert cost < genai_usd("moonshotai", "kimi-k2-0905-preview", 1336, 0, 31)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_moonshot_call_costs_the_same_streamed_or_not_as_openais_shape_of_it(
    moonshot: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured, stream: bool
) -> None:
    """The same Kimi call answered in OpenAI's usage shape and in Moonshot's (cache hits beside
    ``prompt_tokens``), streamed or not: one usage and one cost, with the cache hits at Kimi's rate. A
    stream's usage comes in OpenAI's shape when the caller asks for it, else in the choice that finishes."""
    for style in ("openai", "moonshot"):
        asked: Any = {"stream_options": {"include_usage": True}} if stream and style == "openai" else {}
        answer = moonshot.chat.completions.create(
            model="kimi-k2-0905-preview",
            messages=HI,
            stream=stream,
            extra_headers={"x-fake-cached-tokens": "2048", "x-fake-usage-style": style},
            **asked,
        )
        if stream:
            for _ in answer:
                pass
    body = fake_openai.answers[-1].body
    sent = body[-1]["choices"][0]["usage"] if isinstance(body, list) else body["usage"]
    assert sent["cached_tokens"] == 2048 and "prompt_tokens_details" not in sent  # Moonshot's shape
    openai_shape, moonshot_shape = records.calls
    assert moonshot_shape["usage"] == openai_shape["usage"]
    assert moonshot_shape["usage"]["cached_tokens"] == 2048
    assert moonshot_shape["cost"] == openai_shape["cost"]
    usage = moonshot_shape["usage"]
    assert Decimal(repr(moonshot_shape["cost"]["total_cost_usd"])) == genai_usd(
        "moonshotai", "kimi-k2-0905-preview", usage["prompt_tokens"], 2048, usage["completion_tokens"]
    )


def test_usage_in_the_first_choice_is_recorded_as_usage_beside_it(
    moonshot: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """Moonshot streams the usage in the choice that finishes when the stream was made without
    ``include_usage`` (the caller said False, which the ledger respects; or ``stream_usage=False``), and
    some servers answer it there unstreamed: the record has that usage, and the cost of the same call
    answered in OpenAI's shape, read by the SDK or from the body the caller reads."""
    kimi = "kimi-k2-0905-preview"
    no_usage: Any = {"include_usage": False}  # the caller's: the ledger asks for no usage chunk
    moonshot.chat.completions.create(model=kimi, messages=HI, extra_headers={"x-fake-cached-tokens": "8"})
    for _ in moonshot.chat.completions.create(
        model=kimi,
        messages=HI,
        stream=True,
        stream_options=no_usage,
        extra_headers={"x-fake-usage-style": "moonshot", "x-fake-cached-tokens": "8"},
    ):
        pass
    in_choice = fake_openai.answers[-1].body[-1]["choices"][0]["usage"]
    assert in_choice["cached_tokens"] == 8 and fake_openai.answers[-1].body[-1].get("usage") is None
    with moonshot.chat.completions.with_streaming_response.create(
        model=kimi,
        messages=HI,
        stream=True,
        stream_options=no_usage,
        extra_headers={"x-fake-usage-style": "moonshot", "x-fake-cached-tokens": "8"},
    ) as response:
        response.read()
    answer = moonshot.chat.completions.create(
        model=kimi,
        messages=HI,
        extra_headers={"x-fake-usage-style": "in-choice", "x-fake-cached-tokens": "8"},
    )
    assert answer.usage is None  # the caller's answer, unchanged
    quiet = llm_ledger.LLMCallMonitor(logger=None, stream_usage=False)
    with provider_client(fake_openai, "https://api.moonshot.ai/v1") as raw, capture(quiet) as unasked:
        for _ in quiet.instrument(raw).chat.completions.create(
            model=kimi,
            messages=HI,
            stream=True,
            extra_headers={"x-fake-usage-style": "moonshot", "x-fake-cached-tokens": "8"},
        ):
            pass
    expected, *others = records.calls
    assert len(others) == 3
    assert expected["usage"]["prompt_tokens"] and expected["usage"]["cached_tokens"] == 8
    assert expected["cost"]["total_cost_usd"] is not None
    for record in [*others, *unasked.calls]:
        assert record["usage"] == expected["usage"]
        assert record["cost"] == expected["cost"]


def test_an_unknown_model_costs_null_and_warns_once_per_model_and_provider(
    client: openai.OpenAI, records: Captured, internal_log: pytest.LogCaptureFixture
) -> None:
    """Calls of a model no price table knows are recorded with a null cost (never zero) and no source,
    streamed or not; the warning that says how to price it comes once per model and provider, not per
    call, and a stream read without its usage (nothing to price) raises none."""
    for model, stream in (("acme-llm-7b", False), ("acme-llm-7b", True), ("acme-llm-7b", False)):
        answer = client.chat.completions.create(
            model=model,
            messages=HI,
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )
        if stream:
            for _ in answer:
                pass
    for _ in client.chat.completions.create(model="acme-llm-13b", messages=HI, stream=True):
        pass  # no usage asked for by the caller: the ledger asks for it on the caller's behalf
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.chat.completions.create(
        model="acme-llm-70b", messages=HI, extra_headers={"x-fake-fault": "no-usage"}
    )
    calls = records.calls
    costs = [c["cost"]["total_cost_usd"] for c in calls]
    assert costs[:4] == [None] * 4 and costs[4] is not None and costs[5] is None
    assert [c["cost"]["source"] for c in calls[:4]] == [None] * 4
    assert all(c["usage"]["prompt_tokens"] for c in calls[:5]) and calls[5]["usage"]["prompt_tokens"] is None
    warnings = [r.getMessage() for r in internal_log.records if "no price known" in r.getMessage()]
    fix = "its calls are recorded with null cost. Add it to a price file (LLM_LEDGER_PRICE_FILE or configure("
    assert warnings == [
        f"llm-ledger: no price known for model 'acme-llm-7b' at provider 'openai': {fix}price_file=...)).",
        f"llm-ledger: no price known for model 'acme-llm-13b' at provider 'openai': {fix}price_file=...)).",
    ]


def test_models_with_no_price_are_named_up_to_a_hundred(
    client: openai.OpenAI, records: Captured, internal_log: pytest.LogCaptureFixture
) -> None:
    """A service whose model names are made per request (an id in each) is told of the first 100 models
    with no price by name, then once that the next ones are not named: a long run's warnings, and what
    the monitor keeps to warn once, stay bounded. Every call is still recorded with a null cost."""
    for n in range(120):
        client.chat.completions.create(model=f"acme-{n}", messages=HI)
    warnings = [r.getMessage() for r in internal_log.records if "no price known" in r.getMessage()]
    assert len(warnings) == 101
    assert warnings[99].startswith(
        "llm-ledger: no price known for model 'acme-99' at provider 'openai': its calls"
    )
    assert warnings[100] == (
        "llm-ledger: no price known for model 'acme-100' at provider 'openai' either: over 100 models "
        "have none, and the next ones are not named (a model name made per request?). Their calls are "
        "recorded with null cost."
    )
    assert [c["cost"]["total_cost_usd"] for c in records.calls] == [None] * 120


# (base URL a user gives the client, provider it is, model, how the server answers, service tier asked)
PROVIDER_CALLS = [
    (
        "https://api.openai.com/v1",
        "openai",
        "gpt-4o",
        {"served-model": "gpt-4o-2024-11-20", "cached-tokens": "1024"},
        None,
    ),
    ("https://api.openai.com/v1", "openai", "o3", {"reasoning-tokens": "4500"}, None),
    ("https://api.openai.com/v1", "openai", "gpt-5-mini", {"cached-tokens": "64"}, "flex"),
    ("https://api.openai.com/v1", "openai", "gpt-5-mini", {}, "priority"),
    ("https://api.openai.com/v1", "openai", "gpt-5.4", {"cached-tokens": "280000"}, None),  # long context
    ("https://api.openai.com/v1", "openai", "gpt-audio", {"prompt-audio-tokens": "800"}, None),
    ("https://api.openai.com/v1", "openai", "gpt-5.6", {"cache-write-tokens": "3000"}, None),
    (
        "https://openrouter.ai/api/v1",
        "openrouter",
        "anthropic/claude-sonnet-4.5",
        {"cache-write-tokens": "900"},
        None,
    ),
    (
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        "google",
        "gemini-2.5-pro",  # above its 200k tier, thinking left out of completion_tokens
        {"cached-tokens": "210000", "reasoning-tokens": "300", "usage-style": "gemini"},
        None,
    ),
    ("https://api.anthropic.com/v1/", "anthropic", "claude-sonnet-4-5", {}, None),
    ("https://api.groq.com/openai/v1", "groq", "openai/gpt-oss-120b", {"cached-tokens": "200"}, None),
    (
        "https://api.deepseek.com",
        "deepseek",
        "deepseek-chat",
        {"cached-tokens": "64", "usage-style": "deepseek"},
        None,
    ),
    ("https://api.x.ai/v1", "x-ai", "grok-4", {"reasoning-tokens": "500", "usage-style": "xai"}, None),
    ("https://api.together.xyz/v1", "together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", {}, None),
    ("https://api.mistral.ai/v1", "mistral", "mistral-large-latest", {}, None),
    ("https://api.cerebras.ai/v1", "cerebras", "llama-3.3-70b", {}, None),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("base_url", "provider", "model", "answer", "tier"),
    PROVIDER_CALLS,
    ids=[f"{case[1]}-{case[2]}-{case[4] or 'default'}" for case in PROVIDER_CALLS],
)
def test_a_call_at_a_providers_base_url_costs_what_genai_prices_charges_for_it(
    fake_openai: FakeOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    base_url: str,
    provider: str,
    model: str,
    answer: dict[str, str],
    tier: str | None,
    stream: bool,
) -> None:
    """A client pointed at a provider's base URL records that provider and costs, streamed or not, what
    genai-prices' ``calc_price`` charges for the usage the record holds (cached, cache-write, audio and
    thinking tokens, the long-context tier, the service tier that served it, the moment it was priced at)."""
    with provider_client(fake_openai, base_url) as raw:
        call(monitor.instrument(raw), model, stream, service_tier=tier, **answer)
    (record,) = records.calls
    usage, cost = record["usage"], record["cost"]
    assert (record["server"]["provider"], cost["matched_by"], cost["source"]) == (provider, "provider", GENAI)
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    calc = genai_calc(record, provider)
    assert Decimal(repr(cost["total_cost_usd"])) == calc.total_price
    assert Decimal(repr(cost["prompt_cost_usd"])) == calc.input_price


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_and_embeddings_calls_cost_what_genai_prices_charges_for_them(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, stream: bool
) -> None:
    """The Responses API's usage (input and output tokens, cached and reasoning details) on the flex tier,
    and an embeddings call (prompt tokens only), cost what genai-prices charges, streamed or not."""
    with provider_client(fake_openai, "https://api.openai.com/v1") as raw:
        client = monitor.instrument(raw)
        answer = client.responses.create(
            model="gpt-5-mini",
            input="summarise the meeting notes",
            stream=stream,
            service_tier="flex",
            extra_headers={"x-fake-cached-tokens": "1024", "x-fake-reasoning-tokens": "700"},
        )
        if stream:
            for _ in answer:
                pass
        client.embeddings.create(model="text-embedding-3-small", input=["meeting notes"] * 3)
    responses, embeddings = records.calls
    assert responses["usage"]["cached_tokens"] == 1024 and responses["usage"]["reasoning_tokens"] == 700
    assert responses["response"]["service_tier"] == "flex"
    assert embeddings["usage"]["completion_tokens"] == 0
    for record in (responses, embeddings):
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == genai_calc(record, "openai").total_price


def test_a_price_file_entry_applies_whatever_the_case_of_the_model_name(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Model names match without regard to case, as genai-prices matches them (and hosts are matched):
    an entry written ``Prod-GPT4o`` prices the deployment a client calls ``prod-gpt4o``, and a pattern
    ``FT:GPT-4o-mini:acme:*`` a fine-tune named in lower case, rather than being silently unused."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "version: 1\nmodels:\n"
        "  Prod-GPT4o: {input: 2.0, output: 8.0}\n"
        '  "FT:GPT-4o-mini:acme:*": {input: 0.3, output: 1.2}\n'
    )
    monitor = llm_ledger.LLMCallMonitor(logger=None, prices=prices)
    with (
        provider_client(fake_openai, "https://api.openai.com/v1") as raw,
        llm_ledger.testing.capture(monitor) as records,
    ):
        client = monitor.instrument(raw)
        client.chat.completions.create(
            model="prod-gpt4o", messages=HI, extra_headers={"x-fake-served-model": "gpt-4o-2024-08-06"}
        )
        client.chat.completions.create(model="ft:gpt-4o-mini:acme::abc123", messages=HI)
    deployment, fine_tune = records.calls
    for record, (inp, out) in ((deployment, ("2", "8")), (fine_tune, ("0.3", "1.2"))):
        usage = record["usage"]
        assert record["cost"]["source"] == "price-file"
        expected = (usage["prompt_tokens"] * Decimal(inp) + usage["completion_tokens"] * Decimal(out)).scaleb(
            -6
        )
        assert Decimal(repr(record["cost"]["total_cost_usd"])) == expected


def test_a_model_only_the_price_file_prices_costs_its_rates_at_any_provider(
    fake_openai: FakeOpenAI, tmp_path: Path, internal_log: pytest.LogCaptureFixture
) -> None:
    """A model genai-prices does not list at the client's provider (a fine-tune, a new model) but the price
    file prices costs the file's rates there, recorded as that provider's call, with no warning."""
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nmodels:\n  "ft:gpt-4.1-mini-2025-04-14:*": {input: 0.8, output: 3.2}\n')
    monitor = llm_ledger.LLMCallMonitor(logger=None, prices=prices)
    with pytest.raises(LookupError):  # the reference does not list it
        genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1), "ft:gpt-4.1-mini-2025-04-14:acme::x1", provider_id="openai"
        )
    with (
        provider_client(fake_openai, "https://api.openai.com/v1") as raw,
        llm_ledger.testing.capture(monitor) as records,
    ):
        monitor.instrument(raw).chat.completions.create(
            model="ft:gpt-4.1-mini-2025-04-14:acme::x1", messages=HI
        )
    (record,) = records.calls
    usage, cost = record["usage"], record["cost"]
    assert (record["server"]["provider"], cost["matched_by"], cost["source"]) == (
        "openai",
        "provider",
        "price-file",
    )
    expected = (usage["prompt_tokens"] * Decimal("0.8") + usage["completion_tokens"] * Decimal("3.2")).scaleb(
        -6
    )
    assert Decimal(repr(cost["total_cost_usd"])) == expected
    assert "no price known" not in internal_log.text


@pytest.mark.parametrize(
    "served",
    ["ft:gpt-4.1-2025-04-14:acme::BXy1kq2", "ft:gpt-4.1-2025-04-14:acme:tickets:BXy1kq2:ckpt-step-285"],
    ids=["fine-tune", "checkpoint"],
)
def test_a_fine_tune_is_priced_by_a_price_file_pattern_written_without_its_base_models_date(
    fake_openai: FakeOpenAI, tmp_path: Path, internal_log: pytest.LogCaptureFixture, served: str
) -> None:
    """OpenAI names a fine-tune after its base model's dated snapshot (``ft:gpt-4.1-2025-04-14:acme::id``);
    a price-file pattern written as docs/PRICING.md shows it, ``ft:gpt-4.1:acme:*``, prices its calls, as
    ``gpt-4o-2024-08-06`` finds an entry for ``gpt-4o``, rather than leaving them with no cost (genai-prices
    lists no gpt-4.1 fine-tune)."""
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nmodels:\n  "ft:gpt-4.1:acme:*": {input: 3, output: 12}\n')
    monitor = llm_ledger.LLMCallMonitor(logger=None, prices=prices)
    with (
        provider_client(fake_openai, "https://api.openai.com/v1") as raw,
        llm_ledger.testing.capture(monitor) as records,
    ):
        monitor.instrument(raw).chat.completions.create(model=served, messages=HI)
    (record,) = records.calls
    usage, cost = record["usage"], record["cost"]
    assert record["response"]["model"] == served
    assert cost["source"] == "price-file"
    expected = (usage["prompt_tokens"] * 3 + usage["completion_tokens"] * 12) * Decimal("1e-6")
    assert Decimal(repr(cost["total_cost_usd"])) == expected
    assert "no price known" not in internal_log.text
