"""The references the cost tests check llm-ledger against: genai-prices' own price of a record's usage,
and ``llm-ledger reprice`` over a log."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from llm_ledger._cli import main


def genai_usd(
    model: str, usage: dict[str, Any], *, provider: str = "openai", tier: str | None = None
) -> Decimal:
    """What genai-prices charges for a record's ``usage`` at ``provider`` on service ``tier`` (every
    count it prices: cache reads and writes, audio in and out)."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            cache_read_tokens=usage.get("cached_tokens") or 0,
            cache_write_tokens=usage.get("cache_write_tokens") or 0,
            input_audio_tokens=usage.get("prompt_audio_tokens") or 0,
            output_tokens=usage["completion_tokens"],
            output_audio_tokens=usage.get("completion_audio_tokens") or 0,
        ),
        model,
        provider_id=provider,
        price_context=None if tier is None else {"service_tier": tier},
    )
    return calc.total_price


def assert_repriced_unchanged(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``llm-ledger reprice`` of ``log`` with nothing changed finds what the records cost."""
    assert main(["reprice", str(log), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["change_usd"] == 0
    assert total["after_usd"] == total["before_usd"]
