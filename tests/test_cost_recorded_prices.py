"""A report sums the costs recorded when each call was made; the footer says so and names the command
that prices the calls again, which does price them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_ledger._cli import main
from llm_ledger.testing import Captured


def test_unpriced_calls_point_to_reprice_which_prices_them(
    client: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tuned model nobody priced: adding a price file afterwards leaves the report as recorded (the
    footer says the costs are the recorded ones and names `llm-ledger reprice --price-file`), and that
    command, with the new file, gives those calls their price."""
    messages: Any = [{"role": "user", "content": "classify this ticket"}]
    client.chat.completions.create(model="ft:gpt-4o-mini:acme::x1", messages=messages)
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    prices = tmp_path / "prices.yaml"
    prices.write_text('version: 1\nmodels:\n  "ft:gpt-4o-mini:acme::*": {input: 0.30, output: 1.20}\n')

    assert main(["report", str(log)]) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer.startswith("* 1 billed call has no known cost")
    assert "costs are those recorded when each call was made" in footer
    assert "llm-ledger reprice LOG --price-file F" in footer

    assert main(["reprice", str(log), "--price-file", str(prices), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["before_complete"] is False
    assert total["after_complete"] is True
    assert total["after_usd"] > total["before_usd"] > 0
