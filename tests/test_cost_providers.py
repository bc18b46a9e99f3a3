"""Provider usage shapes that change what a call costs, through the real SDK against the loopback server:
thinking tokens Google and xAI leave out of ``completion_tokens``, and the costs xAI, Perplexity and
OpenRouter (bring-your-own-key included) report in the response."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest

import llm_ledger
from llm_ledger import HostPrice, PriceTable, Rates
from llm_ledger._cli import main
from llm_ledger._jsonl import JsonlFileHandler
from llm_ledger._pricing import reported_cost_units
from llm_ledger._records import USD_UNITS
from llm_ledger.testing import Captured, FakeOpenAI

HI: Any = [{"role": "user", "content": "think it over, then say hello to the whole team"}]
REASONING = 300
GENAI = f"genai-prices {genai_prices.__version__}"


def at(provider: str) -> PriceTable:
    """Prices where the loopback server is ``provider`` (as a price file's ``hosts`` entry makes it)."""
    return PriceTable(hosts={"127.0.0.1": HostPrice(provider)})


def genai_usd(provider: str, model: str, usage: dict[str, Any]) -> Decimal:
    """What genai-prices itself charges for ``usage``'s tokens (the independent reference; a request
    fee it holds, Perplexity's, left out)."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            cache_read_tokens=usage["cached_tokens"],
            output_tokens=usage["completion_tokens"],
        ),
        model,
        provider_id=provider,
    )
    return calc.input_price + calc.output_price


def call(
    client: openai.OpenAI, model: str, stream: bool, service_tier: str | None = None, **headers: str
) -> None:
    """A chat call answered as ``headers`` ask the fake server (``cached_tokens="64"``:
    ``x-fake-cached-tokens``), a stream read to its end."""
    tier: Any = {} if service_tier is None else {"service_tier": service_tier}
    answer = client.chat.completions.create(
        model=model,
        messages=HI,
        stream=stream,
        extra_headers={f"x-fake-{name.replace('_', '-')}": value for name, value in headers.items()},
        **tier,
    )
    if stream:
        for _ in answer:
            pass


def wire_usage(fake: FakeOpenAI) -> dict[str, Any]:
    """The usage object the server last sent, as it was on the wire (streamed or not)."""
    body = fake.answers[-1].body
    usage: dict[str, Any] = body["usage"] if isinstance(body, dict) else body[-1]["usage"]
    return usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("provider", "model", "style"),
    [("x-ai", "grok-3-mini", "xai"), ("google", "gemini-2.5-flash", "gemini")],
)
def test_thinking_left_out_of_completion_tokens_is_billed_as_output(
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    provider: str,
    model: str,
    style: str,
    stream: bool,
) -> None:
    """xAI and Gemini count a thinking model's reasoning in total_tokens but not in completion_tokens
    (Gemini without reasoning_tokens at all): the record holds the same usage and cost as OpenAI's
    shape of the same call (completion includes the reasoning) and the cost genai-prices gives it."""
    monitor.prices = at(provider)
    call(client, model, stream, reasoning_tokens=str(REASONING))  # OpenAI's shape: the reference
    call(client, model, stream, reasoning_tokens=str(REASONING), usage_style=style)
    sent = wire_usage(fake_openai)
    reference, reported = records.calls
    usage = reported["usage"]
    assert sent["completion_tokens"] + REASONING == usage["completion_tokens"]  # the wire left them out
    assert ("completion_tokens_details" in sent) is (style == "xai")
    assert usage == reference["usage"]
    assert usage["reasoning_tokens"] == REASONING
    assert usage["total_tokens"] == sent["total_tokens"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    assert reported["cost"] == reference["cost"]
    assert reported["cost"]["source"] == GENAI
    assert Decimal(repr(reported["cost"]["total_cost_usd"])) == genai_usd(provider, model, usage)


def sent(prompt: int, completion: int, total: int, **details: Any) -> dict[str, Any]:
    """A usage as an OpenAI-compatible Gemini answer sent it."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total, **details}


NO_PREDICTION = {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
ONE_HUB = {"prompt_tokens_details": {}, "completion_tokens_details": {"reasoning_tokens": 0, **NO_PREDICTION}}


@pytest.mark.parametrize(
    ("model", "usage", "completion", "reasoning"),
    [
        # genai-prices' recorded gemini-2.5-pro answer: the thinking in total_tokens only, no details
        ("gemini-2.5-pro", sent(35, 12, 109), 74, 62),
        # MartialBE/one-hub#795: details present, reasoning_tokens 0, the thinking still outside
        ("gemini-2.5-flash", sent(9, 664, 1994, **ONE_HUB), 1985, 1321),
        # router-for-me/CLIProxyAPI#5733: all thinking, completion_tokens 0, reasoning_tokens given
        ("gemini-2.5-flash", sent(21, 0, 81, completion_tokens_details={"reasoning_tokens": 60}), 60, 60),
        # the same once that proxy counts OpenAI's way (#5744): nothing added, nothing billed twice
        ("gemini-2.5-flash", sent(21, 60, 81, completion_tokens_details={"reasoning_tokens": 60}), 60, 60),
    ],
)
def test_gemini_usages_seen_in_the_wild_add_up_and_cost_what_google_bills(
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    model: str,
    usage: dict[str, Any],
    completion: int,
    reasoning: int,
) -> None:
    """Real usages of Gemini's OpenAI-compatible answers, through the SDK: the caller sees them as sent;
    the record's prompt and completion tokens add up to the total Gemini reported, the thinking is its
    reasoning_tokens, and the cost is genai-prices' for those tokens (all output at the output rate)."""
    monitor.prices = at("google")
    choice = {"index": 0, "message": {"role": "assistant", "content": "Hi, team!"}, "finish_reason": "stop"}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [choice],
    }
    fake_openai.fail_next(200, body={**answer, "usage": usage})
    reply = client.chat.completions.create(model=model, messages=HI)
    assert reply.usage == openai.types.CompletionUsage(**usage)
    (record,) = records.calls
    got = record["usage"]
    assert got["prompt_tokens"] + got["completion_tokens"] == got["total_tokens"] == usage["total_tokens"]
    assert (got["completion_tokens"], got["reasoning_tokens"]) == (completion, reasoning)
    assert record["cost"]["source"] == GENAI
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == genai_usd("google", model, got)


def test_a_server_nobody_mapped_keeps_its_usage_as_reported(
    client: openai.OpenAI, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """On a host not known as Google or xAI (a proxy may already count OpenAI's way) nothing is guessed:
    the record says what the server said, total_tokens above prompt + completion included."""
    call(client, "gpt-4o-mini", False, reasoning_tokens=str(REASONING), usage_style="xai")
    sent = wire_usage(fake_openai)
    (record,) = records.calls
    assert record["server"]["provider"] == "openai"
    assert record["usage"]["completion_tokens"] == sent["completion_tokens"]
    assert record["usage"]["total_tokens"] == sent["total_tokens"]
    assert record["usage"]["total_tokens"] - record["usage"]["prompt_tokens"] > sent["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_xai_cost_in_ticks_is_the_provider_reported_cost_and_agrees_with_the_table(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, stream: bool
) -> None:
    """xAI's ``usage.cost_in_usd_ticks`` (10**10 a dollar) is the call's cost; with the thinking tokens
    billed as output the table's figure is the same one, so the record keeps its prompt/completion split."""
    monitor.prices = at("x-ai")
    call(client, "grok-3-mini", stream, reasoning_tokens=str(REASONING))
    billed = records.calls[0]["cost"]["total_cost_usd"]
    call(client, "grok-3-mini", stream, reasoning_tokens=str(REASONING), usage_style="xai", cost=repr(billed))
    cost = records.calls[1]["cost"]
    assert cost["source"] == "provider-reported"
    assert cost["total_cost_usd"] == billed
    assert cost["computed_usd"] is None
    assert cost["prompt_cost_usd"] == records.calls[0]["cost"]["prompt_cost_usd"]
    call(client, "grok-3-mini", stream, usage_style="xai", cost="0.0123")  # a discount the table cannot know
    cost = records.calls[2]["cost"]
    assert (cost["total_cost_usd"], cost["prompt_cost_usd"]) == (0.0123, None)
    assert cost["computed_usd"] is not None and cost["computed_usd"] < 0.0123


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_perplexity_cost_object_includes_its_request_fee(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, stream: bool
) -> None:
    """Perplexity reports ``usage.cost`` as an object; its ``total_cost`` (tokens plus the per-request
    search fee no token price holds) is the call's cost, and the tokens' price is kept beside it."""
    monitor.prices = at("perplexity")
    with monitor.lens("search") as run:
        call(client, "sonar", stream, usage_style="perplexity", cost="0.005084")
    (record,) = records.calls
    assert record["server"]["provider"] == "perplexity"
    assert record["cost"]["total_cost_usd"] == 0.005084
    assert record["cost"]["source"] == "provider-reported"
    tokens = genai_usd("perplexity", "sonar", record["usage"])
    assert Decimal(repr(record["cost"]["computed_usd"])) == tokens < Decimal("0.005")
    assert run.summary is not None and run.summary["total_cost_usd"] == 0.005084


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openrouter_byok_cost_adds_the_upstream_bill_to_openrouters_fee(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, stream: bool
) -> None:
    """With your own provider key (``is_byok: true``) OpenRouter's ``usage.cost`` is only its fee; the
    call cost that plus ``cost_details.upstream_inference_cost``, billed to your key. Without BYOK the
    upstream figure is what OpenRouter already charged, and is not added again."""
    monitor.prices = at("openrouter")
    call(client, "openai/gpt-4o-mini", stream, usage_style="openrouter-byok", cost="0.2")
    call(client, "openai/gpt-4o-mini", stream, usage_style="openrouter", cost="0.2")
    byok, credits = records.calls
    assert byok["cost"]["total_cost_usd"] == pytest.approx(0.21, rel=1e-12)
    assert credits["cost"]["total_cost_usd"] == 0.2
    assert byok["cost"]["source"] == credits["cost"]["source"] == "provider-reported"


@pytest.mark.parametrize(
    "usage",
    [
        {"cost": {"total_cost": "0.1"}},
        {"cost": {"request_cost": 0.005}},
        {"cost": -1.0},
        {"cost": float("nan")},
        {"cost_in_usd_ticks": -5},
        {"cost_in_usd_ticks": 1.5},
        {"cost_in_usd_ticks": True},
        {"prompt_tokens": 3},
        None,
    ],
)
def test_a_reported_cost_the_ledger_cannot_read_is_no_cost(usage: Any) -> None:
    """A malformed cost is ignored (the table's price stands), never a crash or a made-up figure."""
    assert reported_cost_units(usage) is None


def test_a_broken_byok_breakdown_keeps_openrouters_fee() -> None:
    """A BYOK usage whose upstream figure is missing or malformed costs what OpenRouter reported."""
    for details in (None, {}, {"upstream_inference_cost": "0.2"}, [0.2]):
        usage = {"cost": 0.01, "is_byok": True, "cost_details": details}
        assert reported_cost_units(usage) == USD_UNITS // 100


def test_reprice_of_a_logged_xai_call_bills_its_thinking_too(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The log holds the billed completion tokens, so repricing a Grok call on another model prices
    its thinking as well, and repricing it unchanged gives the recorded cost."""
    path = tmp_path / "llm_calls.jsonl"
    handler = JsonlFileHandler(path)
    monitor.add_sink(handler.write_record)
    monitor.prices = at("x-ai")
    with monitor.lens("think"):
        call(client, "grok-3-mini", False, reasoning_tokens=str(REASONING), usage_style="xai")
    handler.close()
    (record,) = [json.loads(line) for line in path.read_text().splitlines() if '"llm_api_call"' in line]
    price_file = tmp_path / "prices.yaml"
    price_file.write_text('version: 1\nhosts:\n  "127.0.0.1": {provider: x-ai}\n')
    for swap, model in (([], "grok-3-mini"), (["--model", "grok-3-mini=grok-4-fast-reasoning"], None)):
        assert main(["reprice", str(path), "--price-file", str(price_file), *swap, "--format", "json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["lenses"]
        expected = genai_usd("x-ai", model or "grok-4-fast-reasoning", record["usage"])
        assert Decimal(repr(row["after_usd"])) == expected
    assert record["usage"]["completion_tokens"] > REASONING


def test_reprice_bills_the_thinking_of_a_gemini_call_logged_without_it(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A log written before the ledger billed Gemini's thinking (completion_tokens as Gemini sent it,
    below total - prompt) is repriced with the thinking billed: after is what the call costs now."""
    monitor.prices = at("google")
    call(client, "gemini-2.5-flash", False, reasoning_tokens=str(REASONING), usage_style="gemini")
    (record,) = records.calls
    old = json.loads(json.dumps(record))
    old["usage"].update(completion_tokens=old["usage"]["completion_tokens"] - REASONING, reasoning_tokens=0)
    old["cost"]["total_cost_usd"] = float(genai_usd("google", "gemini-2.5-flash", old["usage"]))
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    assert main(["reprice", str(path), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["before_usd"] == old["cost"]["total_cost_usd"]
    assert total["after_usd"] == record["cost"]["total_cost_usd"] > total["before_usd"]


def test_a_host_priced_at_its_own_rate_as_google_bills_the_thinking_too(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A gateway the price file names Google but prices itself (its own rate) still counts the thinking
    Gemini left out of completion_tokens, at that rate."""
    monitor.prices = PriceTable(hosts={"127.0.0.1": HostPrice("google", Rates("gw", Decimal(1), Decimal(2)))})
    call(client, "gemini-2.5-flash", False, reasoning_tokens=str(REASONING), usage_style="gemini")
    (record,) = records.calls
    usage = record["usage"]
    assert usage["reasoning_tokens"] == REASONING
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    expected = (Decimal(usage["prompt_tokens"]) + 2 * Decimal(usage["completion_tokens"])) / 10**6
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == expected
    assert record["cost"]["source"] == "price-file"


@pytest.mark.parametrize(
    ("style", "billed"), [("xai", 0.0042), ("perplexity", 0.0042), ("openrouter-byok", 0.00441)]
)
def test_reported_costs_are_read_from_responses_api_usage_too(
    client: openai.OpenAI, records: Captured, style: str, billed: float
) -> None:
    """The Responses API's usage carries the same cost fields; they are read the same way."""
    client.responses.create(
        model="grok-4.5", input="hi", extra_headers={"x-fake-usage-style": style, "x-fake-cost": "0.0042"}
    )
    (record,) = records.calls
    assert record["operation"] == "responses"
    assert record["cost"]["total_cost_usd"] == pytest.approx(billed, rel=1e-12)
    assert record["cost"]["source"] == "provider-reported"
