"""Audio tokens (``prompt_tokens_details.audio_tokens``, ``completion_tokens_details.audio_tokens``) cost
the audio rates genai-prices lists (gpt-audio: $32 in, $64 out per 1M against $2.50 and $10 for text),
live, streamed or not, and when a log is repriced."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import PriceTable, price
from llm_ledger._cli import main
from llm_ledger.testing import Captured
from tests.cost_helpers import assert_repriced_unchanged, genai_usd


@pytest.mark.parametrize(
    ("model", "usd"),
    [
        # (200 x 2.50 + 800 x 32 + 100 x 10 + 400 x 64) / 1M
        ("gpt-audio", "0.0527"),
        # (200 x 0.60 + 800 x 10 + 100 x 2.40 + 400 x 20) / 1M
        ("gpt-audio-mini", "0.01636"),
        # genai-prices lists no audio rate for it: its audio costs the text rates, as genai-prices says
        ("gpt-4o-audio-preview", "0.0075"),
    ],
)
def test_audio_tokens_cost_the_audio_rates(model: str, usd: str) -> None:
    """1,000 prompt tokens of which 800 audio, 500 completion tokens of which 400 audio."""
    cost = price(
        model,
        prompt_tokens=1_000,
        prompt_audio_tokens=800,
        completion_tokens=500,
        completion_audio_tokens=400,
    )
    assert cost is not None
    assert cost.total_cost_usd == Decimal(usd)


def test_audio_above_its_total_is_an_error() -> None:
    """Audio is a part of the prompt and of the completion: more audio than either is a caller bug."""
    with pytest.raises(ValueError, match="completion_audio_tokens <= completion_tokens"):
        price("gpt-audio", prompt_tokens=10, completion_tokens=5, completion_audio_tokens=6)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_audio_call_is_recorded_at_the_audio_rates_and_reprice_agrees(
    client: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    """Through the real SDK: the record keeps both audio counts and costs what genai-prices charges,
    many times the same tokens at the text rates; repricing the log finds no change."""
    messages: Any = [{"role": "user", "content": "say hello to the team"}]
    headers = {"x-fake-prompt-audio-tokens": "900", "x-fake-completion-audio-tokens": "1200"}
    answer: Any = client.chat.completions.create(
        model="gpt-audio", messages=messages, stream=stream, extra_headers=headers
    )
    if stream:
        for _ in answer:
            pass
    (record,) = records.calls
    usage = record["usage"]
    assert (usage["prompt_audio_tokens"], usage["completion_audio_tokens"]) == (900, 1200)
    total = Decimal(repr(record["cost"]["total_cost_usd"]))
    assert total == genai_usd("gpt-audio", usage)
    assert total > 6 * genai_usd(
        "gpt-audio", {**usage, "prompt_audio_tokens": 0, "completion_audio_tokens": 0}
    )

    log = tmp_path / "llm_calls.jsonl"
    log.write_text(json.dumps(record) + "\n")
    assert_repriced_unchanged(log, capsys)


@pytest.mark.parametrize(("prompt", "cached"), [(1_000, 400), (1_000, 900), (800, 800)])
def test_cached_audio_on_a_model_without_a_cached_rate_keeps_the_audio_rate(prompt: int, cached: int) -> None:
    """gpt-audio has no cached rate: cached tokens cost what they would uncached, so audio the cache
    served (cached + audio above the prompt) still costs the audio rate, as genai-prices bills it."""
    usage = {
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prompt_audio_tokens": 800,
        "completion_tokens": 10,
        "completion_audio_tokens": 0,
    }
    cost = price(
        "gpt-audio", prompt_tokens=prompt, cached_tokens=cached, prompt_audio_tokens=800, completion_tokens=10
    )
    assert cost is not None
    assert cost.total_cost_usd == genai_usd("gpt-audio", usage)


def test_a_price_file_gives_audio_and_cache_write_rates(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """genai-prices lists no audio rate for gpt-4o-audio-preview: a price file gives its audio (and
    cache write) rates, the call through the real SDK costs them, and reprice with the file agrees."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "version: 1\nmodels:\n  gpt-4o-audio-preview:\n    input: 2.5\n    output: 10\n"
        "    input_audio: 40\n    output_audio: 80\n    cache_write: 3.125\n"
    )
    monitor.prices = PriceTable.from_file(prices)
    headers = {
        "x-fake-prompt-audio-tokens": "800",
        "x-fake-completion-audio-tokens": "400",
        "x-fake-cache-write-tokens": "100",
    }
    client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
    )
    (record,) = records.calls
    usage = record["usage"]
    text_in = usage["prompt_tokens"] - 800 - 100
    expected = (
        Decimal(text_in) * Decimal("2.5")
        + 800 * Decimal(40)
        + 100 * Decimal("3.125")
        + Decimal(usage["completion_tokens"] - 400) * 10
        + 400 * Decimal(80)
    ) / 1_000_000
    assert Decimal(repr(record["cost"]["total_cost_usd"])) == expected
    assert record["cost"]["source"] == "price-file"

    log = tmp_path / "llm_calls.jsonl"
    log.write_text(json.dumps(record) + "\n")
    assert main(["reprice", str(log), "--price-file", str(prices), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["change_usd"] == 0


def test_cached_audio_above_the_cached_tokens_is_an_error() -> None:
    """Cached audio is a part of the cached tokens: more of it than them is a caller bug."""
    with pytest.raises(ValueError, match="cached_audio_tokens \\+ cached_image_tokens <= cached_tokens"):
        price(
            "gpt-realtime-mini", prompt_tokens=10, completion_tokens=1, cached_tokens=2, cached_audio_tokens=3
        )


@pytest.mark.parametrize(
    ("rates", "counts", "usd"),
    [
        # 1M cached audio tokens at its own rate, else the cached rate (not the audio rate)
        ("    cached_input_audio: 0.5\n", {"cached_tokens": 10**6, "cached_audio_tokens": 10**6}, "0.5"),
        ("", {"cached_tokens": 10**6, "cached_audio_tokens": 10**6}, "0.1"),
        # 1M image tokens at the image rate, else the input rate; cached at the cached image rate
        ("    input_image: 1.25\n", {"prompt_image_tokens": 10**6}, "1.25"),
        ("", {"prompt_image_tokens": 10**6}, "1"),
        ("    cached_input_image: 0.2\n", {"cached_tokens": 10**6, "cached_image_tokens": 10**6}, "0.2"),
        ("", {"cached_tokens": 10**6, "cached_image_tokens": 10**6}, "0.1"),
    ],
)
def test_a_price_file_gives_the_cached_audio_and_image_rates(
    tmp_path: Path, rates: str, counts: dict[str, int], usd: str
) -> None:
    """A price file's ``cached_input_audio``, ``input_image`` and ``cached_input_image`` price a
    realtime response's cached audio and its images; without them, they cost the ``cached_input`` and
    ``input`` rates."""
    prices = tmp_path / "prices.yaml"
    entry = "version: 1\nmodels:\n  my-realtime:\n    input: 1\n    output: 2\n    cached_input: 0.1\n"
    prices.write_text(entry + "    input_audio: 10\n" + rates)
    call: Any = {"prompt_tokens": 10**6, "completion_tokens": 0, **counts}
    cost = PriceTable.from_file(prices, builtin=False).cost("my-realtime", **call)
    assert cost is not None and cost.total_cost_usd == Decimal(usd)
