"""Built-in tools billed per use on top of the tokens (Responses' web search, file search, code
interpreter and image generation; a chat search model's search): the record keeps the tokens' cost,
counts the uses (``response.tool_uses``) and says the cost leaves them out (``cost.left_out``), and
its lens says ``cost_complete: false`` however the call was made."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger.testing import Captured, capture
from tests.conftest import Sdk
from tests.cost_helpers import genai_usd

HI: Any = [{"role": "user", "content": "what is new today?"}]
TOOLS: Any = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_fake"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
]
RESPONSES: Any = {"model": "gpt-4.1", "input": "what is new today?", "tools": TOOLS}
PREVIEW: Any = [{"type": "web_search_preview"}]
FILES: Any = [{"type": "file_search", "vector_store_ids": ["vs_fake"]}]
TWICE = {"x-fake-tool-uses": "2"}  # each tool used twice
USES = {"web_search": 2, "file_search": 2, "code_interpreter": 2, "image_generation": 2}


def _create(c: openai.OpenAI) -> None:
    c.responses.create(**RESPONSES, extra_headers=TWICE)


def _stream(c: openai.OpenAI) -> None:
    for _ in c.responses.create(**RESPONSES, stream=True, extra_headers=TWICE):
        pass


def _helper(c: openai.OpenAI) -> None:
    with c.responses.stream(**RESPONSES, extra_headers=TWICE) as stream:
        stream.until_done()


def _raw(c: openai.OpenAI) -> None:
    c.responses.with_raw_response.create(**RESPONSES, extra_headers=TWICE).parse()


def _raw_stream(c: openai.OpenAI) -> None:
    for _ in c.responses.with_raw_response.create(**RESPONSES, stream=True, extra_headers=TWICE).parse():
        pass


def _streaming_response(c: openai.OpenAI) -> None:
    with c.responses.with_streaming_response.create(**RESPONSES, extra_headers=TWICE) as response:
        response.read()


def _streaming_response_stream(c: openai.OpenAI) -> None:
    with c.responses.with_streaming_response.create(
        **RESPONSES, stream=True, extra_headers=TWICE
    ) as response:
        for _ in response.iter_lines():
            pass


WAYS: dict[str, Callable[[openai.OpenAI], None]] = {
    "create": _create,
    "stream": _stream,
    "stream helper": _helper,
    "with_raw_response": _raw,
    "with_raw_response stream": _raw_stream,
    "with_streaming_response": _streaming_response,
    "with_streaming_response stream": _streaming_response_stream,
}


def _token_cost(record: dict[str, Any]) -> Decimal:
    return Decimal(repr(record["cost"]["total_cost_usd"]))


@pytest.mark.parametrize("way", WAYS)
def test_a_responses_call_using_built_in_tools_says_its_cost_leaves_their_fees_out(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, way: str
) -> None:
    """Whichever way the call is made, its record counts each built-in tool's uses, keeps the tokens'
    cost and names the fees it leaves out; its lens's total is the tokens' cost, said incomplete."""
    with monitor.lens("research") as run:
        WAYS[way](client)
    (record,) = records.calls
    assert (record["status"], record["operation"]) == ("ok", "responses")
    assert record["response"]["tool_uses"] == USES
    assert record["response"]["content_length"] == len("Summary: what is new today?")
    assert _token_cost(record) == genai_usd("gpt-4.1", record["usage"]) > 0
    assert record["cost"]["left_out"] == ["code_interpreter", "file_search", "image_generation", "web_search"]
    assert run.summary is not None
    assert run.summary["cost_complete"] is False
    assert Decimal(repr(run.summary["total_cost_usd"])) == _token_cost(record)


@pytest.mark.asyncio
async def test_an_async_responses_call_using_a_built_in_tool_is_recorded_as_a_sync_one(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Async, streamed and not: the same counts, cost and incomplete lens."""
    with monitor.lens("research") as run:
        await aclient.responses.create(model="gpt-4.1", input="hi", tools=PREVIEW)
        stream: Any = await aclient.responses.create(model="gpt-4.1", input="hi", tools=FILES, stream=True)
        async for _ in stream:
            pass
    assert [r["response"]["tool_uses"] for r in records.calls] == [{"web_search": 1}, {"file_search": 1}]
    assert [r["cost"]["left_out"] for r in records.calls] == [["web_search"], ["file_search"]]
    assert all(r["cost"]["total_cost_usd"] for r in records.calls)
    assert run.summary is not None
    assert run.summary["cost_complete"] is False


def test_calls_using_no_built_in_tool_keep_their_lens_complete(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A function tool is the caller's own (no fee): nothing is left out of a lens of such calls."""
    function: Any = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    with monitor.lens("plain") as run:
        client.responses.create(model="gpt-4.1", input="hi", tools=[function], tool_choice="required")
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert [r["response"]["tool_uses"] for r in records.calls] == [None, None]
    assert [r["cost"]["left_out"] for r in records.calls] == [None, None]
    assert records.calls[0]["response"]["tool_calls_count"] == 1
    assert run.summary is not None
    assert run.summary["cost_complete"] is True


@pytest.mark.parametrize("model", ["gpt-4o-search-preview", "gpt-4o-mini-search-preview"])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_chat_search_model_call_says_its_search_fee_is_left_out(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    model: str,
    stream: bool,
) -> None:
    """A search model searches on every chat request, billed per request: one web search counted,
    the tokens priced, the fee left out and the lens incomplete."""
    with monitor.lens("answer") as run:
        answer = client.chat.completions.create(
            model=model, messages=HI, web_search_options={"search_context_size": "low"}, stream=stream
        )
        if stream:
            for _ in answer:
                pass
    (record,) = records.calls
    assert record["response"]["tool_uses"] == {"web_search": 1}
    assert record["cost"]["left_out"] == ["web_search"]
    assert _token_cost(record) == genai_usd(model, record["usage"]) > 0
    assert run.summary is not None
    assert run.summary["cost_complete"] is False


def test_a_cost_the_provider_reports_includes_the_tools_fees(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A provider's own cost (OpenRouter's ``usage.cost``) is what it billed, fees included: the
    uses are still counted, nothing is left out."""
    with monitor.lens("routed") as run:
        client.responses.create(**RESPONSES, extra_headers={"x-fake-cost": "0.05"})
    (record,) = records.calls
    assert record["response"]["tool_uses"] == dict.fromkeys(USES, 1)
    assert (record["cost"]["total_cost_usd"], record["cost"]["left_out"]) == (0.05, None)
    assert run.summary is not None
    assert run.summary["cost_complete"] is True


def test_reports_and_repricing_count_the_calls_whose_tool_fees_are_left_out(
    client: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger report`` adds the tokens' cost and counts the call among those with no known
    cost; ``reprice`` without a price file reprices its tokens and says both sides leave the fees out."""
    client.responses.create(**RESPONSES)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records.calls))
    capsys.readouterr()
    assert main(["report", str(log), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    costs = sum(_token_cost(r) for r in records.calls)
    assert (total["calls"], total["unpriced_calls"], total["cost_complete"]) == (2, 1, False)
    assert Decimal(repr(total["cost_usd"])) == costs
    assert main(["reprice", str(log), "--format", "json"]) == 0
    repriced = json.loads(capsys.readouterr().out)
    assert repriced["tool_fee_calls"] == 1
    assert repriced["unpriced_tools_after"] == dict.fromkeys(USES, 1)
    assert (repriced["total"]["before_complete"], repriced["total"]["after_complete"]) == (False, False)
    assert Decimal(repr(repriced["total"]["after_usd"])) == costs
    assert main(["reprice", str(log)]) == 0
    said = capsys.readouterr().out
    assert "before leaves out the fees of the built-in tools (web search...) 1 call used" in said
    assert (
        "after leaves out the fees of 1 code_interpreter use, 1 file_search use, 1 image_generation use, "
        "1 web_search use: give them in the price file's tool_fees"
    ) in said


def test_the_exporters_count_a_call_whose_tool_fees_are_left_out_as_unpriced(sdk: Sdk) -> None:
    """Prometheus and OpenTelemetry add the call's tokens' cost and count it among the unpriced
    calls, as its lens says ``cost_complete: false``."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from llm_ledger.exporters import OTelSink, PrometheusSink
    from tests.exporter_helpers import metric_points, samples, total

    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    monitor = llm_ledger.LLMCallMonitor(
        logger=None, sinks=[PrometheusSink(registry), OTelSink(TracerProvider(), MeterProvider([reader]))]
    )
    client = sdk(monitor)
    with capture(monitor) as records:
        client.chat.completions.create(model="gpt-4o-search-preview", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    search = records.calls[0]
    generate_latest(registry)  # the first scrape shows a new series at 0 (tests/exporter_helpers.py)
    found = samples(generate_latest(registry).decode())
    assert total(found, "llm_ledger_unpriced_calls_total", model="gpt-4o-search-preview") == 1
    assert total(found, "llm_ledger_unpriced_calls_total", model="gpt-4o-mini") == 0
    cost = total(found, "llm_ledger_cost_usd_total", model="gpt-4o-search-preview")
    assert cost == pytest.approx(search["cost"]["total_cost_usd"])
    points = [
        (dict(point.attributes or {}).get("gen_ai.request.model"), getattr(point, "value", None))
        for point in metric_points(reader).get("llm_ledger.unpriced_calls", [])
    ]
    assert points == [("gpt-4o-search-preview", 1)]


def test_a_cost_budget_blind_to_tool_fees_says_why(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A cost budget counts the fees as $0: it says so once, naming the tools and the price file's
    tool_fees that prices them, never a price file the model is already in."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"answer": {"max_cost_usd": 1.0}}})
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    for _ in range(2):
        with monitor.lens("answer"):
            client.chat.completions.create(model="gpt-4o-mini-search-preview", messages=HI)
    [said] = [r.getMessage() for r in caplog.records if "max_cost_usd" in r.getMessage()]
    assert "lens 'answer' has calls that used built-in tools billed per use (web search...)" in said
    assert 'a price file\'s tool_fees (tool_fees: {"*": {web_search: 0.01}}' in said
    assert "add their models" not in said
