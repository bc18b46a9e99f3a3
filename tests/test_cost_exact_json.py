"""One cost, written alike everywhere: a cost with more than nine decimals leaves ``llm-ledger reprice
--format json`` as the same JSON number ``llm-ledger report --format json`` and the records give."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger.testing import Captured


def test_reprice_json_keeps_every_digit_of_the_cost(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calls priced at a negotiated $0.123457 per 1M tokens cost fractions of a nanodollar: reprice's
    "before" is the report's total to the last digit, and "after" at the same prices is the same."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("version: 1\nmodels:\n  acme-small: {input: 0.123457, output: 0.987651}\n")
    monitor.prices = llm_ledger.PriceTable.from_file(prices)
    messages: Any = [{"role": "user", "content": "hello"}]
    for _ in range(3):
        client.chat.completions.create(model="acme-small", messages=messages)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    exact = sum((Decimal(repr(call["cost"]["total_cost_usd"])) for call in records.calls), Decimal(0))
    assert exact != exact.quantize(Decimal("1e-9"))  # more digits than a nanodollar

    assert main(["report", str(log), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)["total"]["cost_usd"]
    assert main(["reprice", str(log), "--price-file", str(prices), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert report == float(exact)
    assert total["before_usd"] == total["after_usd"] == report
    assert total["change_usd"] == 0
