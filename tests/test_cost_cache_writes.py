"""Prompt tokens written to the prompt cache (``cache_write_tokens``, which OpenAI reports from gpt-5.6 on and
OpenRouter for Claude) cost the cache write rate where genai-prices lists one, live, streamed or not,
and when a log is repriced."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import HostPrice, PriceTable, price
from llm_ledger._pricing import PricedCall
from llm_ledger.testing import Captured
from tests.cost_helpers import assert_repriced_unchanged, genai_usd

WORDS = "the quarterly figures by region and product line " * 400


@pytest.mark.parametrize(
    ("model", "usd"),
    [
        # gpt-6-sol: input $2, cache write $2.50, cache read $0.20, output $10 per 1M tokens
        ("gpt-6-sol", "0.0242"),  # (2,000 x 2 + 4,000 x 2.5 + 1,000 x 0.2 + 1,000 x 10) / 1M
        # gpt-4o lists no cache write rate: written tokens cost the input rate
        ("gpt-4o", "0.02625"),  # (6,000 x 2.5 + 1,000 x 1.25 + 1,000 x 10) / 1M
    ],
)
def test_cache_writes_cost_the_cache_write_rate(model: str, usd: str) -> None:
    """7,000 prompt tokens of which 1,000 read from the cache and 4,000 written to it, 1,000 out."""
    cost = price(
        model, prompt_tokens=7_000, cached_tokens=1_000, cache_write_tokens=4_000, completion_tokens=1_000
    )
    assert cost is not None
    assert cost.total_cost_usd == Decimal(usd)


def test_every_cache_write_rate_matches_genai_prices() -> None:
    """For every OpenAI and OpenRouter model with a cache write rate, genai-prices' own figure, long
    context tiers included."""
    from genai_prices.data import providers

    usage = {
        "prompt_tokens": 300_000,
        "cached_tokens": 50_000,
        "cache_write_tokens": 200_000,
        "completion_tokens": 9_000,
    }
    checked = 0
    for provider in (p for p in providers if p.id in ("openai", "openrouter")):
        for info in provider.models:
            if isinstance(info.prices, list) or info.prices.cache_write_mtok is None:
                continue
            cost = PriceTable().cost(
                info.id,
                prompt_tokens=300_000,
                cached_tokens=50_000,
                cache_write_tokens=200_000,
                completion_tokens=9_000,
                provider=provider.id,
            )
            if cost is None:  # not priced per token: not ours to price
                continue
            assert cost.total_cost_usd == genai_usd(info.id, usage, provider=provider.id), (
                provider.id,
                info.id,
            )
            checked += 1
    assert checked >= 100


def test_more_cached_and_written_tokens_than_prompt_tokens_is_an_error() -> None:
    """Reads and writes are both parts of the prompt: together they cannot exceed it."""
    with pytest.raises(ValueError, match="cached_tokens \\+ cache_write_tokens <= prompt_tokens"):
        price("gpt-6-sol", prompt_tokens=10, cached_tokens=6, cache_write_tokens=6, completion_tokens=1)


def _call(client: openai.OpenAI, api: str, model: str, stream: bool) -> None:
    headers = {"x-fake-cached-tokens": "1024", "x-fake-cache-write-tokens": "2048"}
    answer: Any
    if api == "chat":
        messages: Any = [{"role": "user", "content": WORDS}]
        answer = client.chat.completions.create(
            model=model, messages=messages, stream=stream, extra_headers=headers
        )
    else:
        answer = client.responses.create(model=model, input=WORDS, stream=stream, extra_headers=headers)
    if stream:
        for _ in answer:
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_call_that_writes_to_the_cache_is_recorded_at_the_write_rate_and_reprice_agrees(
    client: openai.OpenAI,
    records: Captured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    api: str,
    stream: bool,
) -> None:
    """Through the real SDK: the record keeps ``cache_write_tokens`` and costs what genai-prices charges
    (more than the same prompt billed at the input rate); repricing the log finds no change."""
    _call(client, api, "gpt-6-sol", stream)
    (record,) = records.calls
    usage = record["usage"]
    assert usage["cache_write_tokens"] == 2048 and usage["cached_tokens"] == 1024
    total = Decimal(repr(record["cost"]["total_cost_usd"]))
    assert total == genai_usd("gpt-6-sol", usage)
    assert total > genai_usd("gpt-6-sol", {**usage, "cache_write_tokens": 0})

    log = tmp_path / "llm_calls.jsonl"
    log.write_text(json.dumps(record) + "\n")
    assert_repriced_unchanged(log, capsys)


def test_claude_through_openrouter_bills_its_cache_writes(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """OpenRouter reports Claude's cache writes as ``prompt_tokens_details.cache_write_tokens``; with no
    cost in the answer the table prices them at Claude's cache write rate (1.25x its input rate)."""
    monitor.prices = PriceTable(hosts={"127.0.0.1": HostPrice("openrouter")})
    _call(client, "chat", "anthropic/claude-haiku-4.5", False)
    (record,) = records.calls
    assert record["server"]["provider"] == "openrouter"
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == genai_usd(
        "anthropic/claude-haiku-4.5", record["usage"], provider="openrouter"
    )


def test_claude_cache_writes_cost_the_five_minute_rate_unless_a_price_file_gives_another(
    tmp_path: Path,
) -> None:
    """No OpenAI-compatible usage says how long a write is cached (docs/PRICING.md): Claude's writes cost
    the five-minute rate genai-prices lists, and a price file whose cache_write is the one-hour rate prices
    calls that write one-hour caches."""
    # claude-haiku-4-5: input $1, 5-minute cache write $1.25, 1-hour cache write $2, output $5 per 1M tokens
    call: PricedCall = {"prompt_tokens": 10_000, "cache_write_tokens": 4_000, "completion_tokens": 100}
    five = price("claude-haiku-4-5", provider="anthropic", **call)
    # (6,000 x 1 + 4,000 x 1.25 + 100 x 5) / 1M
    assert five is not None and five.total_cost_usd == Decimal("0.0115")
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\nmodels:\n  claude-haiku-4-5: {input: 1, cached_input: 0.1, cache_write: 2, output: 5}"
    )
    hour = price("claude-haiku-4-5", provider="anthropic", table=PriceTable.from_file(path), **call)
    assert hour is not None and hour.total_cost_usd == Decimal("0.0145")  # 4,000 x 2 in place of x 1.25
