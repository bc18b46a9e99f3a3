"""The JSONL file as a log shipper (Vector, Fluent Bit, Promtail, Filebeat) reads and indexes it.

Elasticsearch and OpenSearch map a field by the first value they see: a field that is ``0`` in one
line and ``0.7`` in the next is mapped as an integer, and every later fraction is cut (or the line is
refused when the types cannot be reconciled). So every field of every record keeps one JSON type.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger.testing import FakeOpenAI
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import workload

pytestmark = pytest.mark.sdk_independent


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def _field_types(lines: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Dotted field path (per event) -> the JSON types of its non-null values; context is the caller's."""
    found: dict[str, set[str]] = defaultdict(set)

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}.{key}", item)
        elif isinstance(value, list):
            for item in value:
                walk(f"{path}[]", item)
        elif value is not None:
            found[path].add(_json_type(value))

    for line in lines:
        walk(line["event"], {k: v for k, v in line.items() if k != "context"})
    return found


def test_every_field_keeps_one_json_type_for_an_index_mapping(
    fresh_config: None, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Across chat (temperature 0, 1 and 0.7, max_tokens), streams, responses, embeddings, failed and
    unpriced calls, lens runs and budget breaches (of tokens, cost and calls), each field of the file
    is always the same JSON type (or null)."""
    budgets = {"lenses": {"settings": {"max_total_tokens": 10, "max_cost_usd": 0.000001, "max_api_calls": 2}}}
    llm_ledger.configure(log_dir=tmp_path, budgets=budgets)
    monitor = llm_ledger.get_monitor()
    workload(monitor, fake_openai)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    hi: Any = [{"role": "user", "content": "hi"}]
    with llm_ledger.lens("settings"):
        for temperature in (0, 1, 0.7):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=hi, temperature=temperature, max_tokens=9
            )
        client.responses.create(model="gpt-4o-mini", input="hi", temperature=1, max_output_tokens=16)
    llm_ledger.flush()
    lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    temperatures = [c["request"]["temperature"] for c in lines if c["event"] == "llm_api_call"]
    assert {0, 1, 0.7} <= set(temperatures)
    limits = {b["budget"]["limit"] for b in lines if b["event"] == "budget_exceeded"}
    assert limits == {"max_total_tokens", "max_cost_usd", "max_api_calls"}
    mixed = {path: types for path, types in _field_types(lines).items() if len(types) > 1}
    assert not mixed, f"fields with more than one JSON type: {mixed}"
