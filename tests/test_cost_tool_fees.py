"""A price file's ``tool_fees`` price the built-in tools billed per use (web search, file search, code
interpreter, image generation) on top of the tokens, however these are priced: live (the record's
total, ``cost.tool_fees_usd``, what ``cost.left_out`` still names), in lens totals and budgets, and
when a log is repriced; a mistake in them names the file, line, key and fix."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import LLMCallMonitor, PriceFileError, PriceTable
from llm_ledger._cli import main
from llm_ledger._errors import ConfigError
from llm_ledger.report import REPORT_SCHEMA
from llm_ledger.testing import Captured, capture
from tests.conftest import Sdk
from tests.cost_helpers import genai_usd

# gpt-4.1's web search at its own fee, every model's file search at the catch-all's: each kind takes the
# first entry matching the model that gives it. Code interpreter and image generation have no fee.
PRICES = """\
version: 1
tool_fees:
  "gpt-4.1*": {web_search: 0.03}
  gpt-4o-mini-search-preview: {web_search: 0.0275}
  "*": {web_search: 0.01, file_search: 0.0025}
"""
WEB: Any = {"type": "web_search"}
FILES: Any = {"type": "file_search", "vector_store_ids": ["vs_fake"]}
CODE: Any = {"type": "code_interpreter", "container": {"type": "auto"}}
HI: Any = [{"role": "user", "content": "what is new today?"}]
TWICE = {"x-fake-tool-uses": "2"}  # each tool used twice


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    return path


@pytest.fixture
def priced(prices: Path) -> LLMCallMonitor:
    """A monitor whose price file gives tool fees (genai-prices prices the tokens)."""
    return LLMCallMonitor(logger=None, prices=prices)


def _usd(value: float | None) -> Decimal:
    assert value is not None
    return Decimal(repr(value))


def _tokens_usd(record: dict[str, Any]) -> Decimal:
    return genai_usd(record["response"]["model"], record["usage"])


def test_a_fee_is_added_per_use_and_a_kind_without_one_stays_left_out(
    sdk: Sdk, priced: LLMCallMonitor
) -> None:
    """Two web searches at gpt-4.1's fee join the tokens' cost; code interpreter, which the file gives
    no fee, is still named left out, so the lens stays incomplete."""
    with capture(priced) as records, priced.lens("research") as run:
        sdk(priced).responses.create(model="gpt-4.1", input="news?", tools=[WEB, CODE], extra_headers=TWICE)
    (record,) = records.calls
    cost = record["cost"]
    assert record["response"]["tool_uses"] == {"web_search": 2, "code_interpreter": 2}
    assert _usd(cost["tool_fees_usd"]) == Decimal("0.06")
    assert _usd(cost["total_cost_usd"]) == _tokens_usd(record) + Decimal("0.06")
    assert _usd(cost["prompt_cost_usd"]) + _usd(cost["completion_cost_usd"]) == _tokens_usd(record)
    assert cost["source"].startswith("genai-prices") and cost["left_out"] == ["code_interpreter"]
    assert run.summary is not None
    assert run.summary["cost_complete"] is False
    assert _usd(run.summary["total_cost_usd"]) == _usd(cost["total_cost_usd"])


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_lens_whose_every_tool_has_a_fee_is_complete(
    sdk: Sdk, priced: LLMCallMonitor, stream: bool
) -> None:
    """Web search at gpt-4.1's fee, file search at the catch-all's: nothing is left out, the lens is
    complete and its total is the calls' exact sum; a call that used no tool has no fee part."""
    client = sdk(priced)
    with capture(priced) as records, priced.lens("research") as run:
        answer = client.responses.create(
            model="gpt-4.1", input="news?", tools=[WEB, FILES], stream=stream, extra_headers=TWICE
        )
        for _ in answer if stream else ():
            pass
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    searched, plain = records.calls
    fees = 2 * Decimal("0.03") + 2 * Decimal("0.0025")
    assert (_usd(searched["cost"]["tool_fees_usd"]), searched["cost"]["left_out"]) == (fees, None)
    assert _usd(searched["cost"]["total_cost_usd"]) == _tokens_usd(searched) + fees
    assert (plain["cost"]["tool_fees_usd"], plain["cost"]["left_out"]) == (None, None)
    assert run.summary is not None
    assert run.summary["cost_complete"] is True
    total = sum(_usd(r["cost"]["total_cost_usd"]) for r in records.calls)
    assert _usd(run.summary["total_cost_usd"]) == total


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_chat_search_model_pays_its_fee_per_request(sdk: Sdk, priced: LLMCallMonitor, stream: bool) -> None:
    """A search model's one search per request costs its entry's fee, the model served being a dated
    snapshot of the name the file gives; its lens is complete."""
    with capture(priced) as records, priced.lens("answer") as run:
        answer = sdk(priced).chat.completions.create(
            model="gpt-4o-mini-search-preview",
            messages=HI,
            stream=stream,
            extra_headers={"x-fake-served-model": "dated"},
        )
        for _ in answer if stream else ():
            pass
    (record,) = records.calls
    assert record["response"]["model"] == "gpt-4o-mini-search-preview-2024-07-18"
    assert (_usd(record["cost"]["tool_fees_usd"]), record["cost"]["left_out"]) == (Decimal("0.0275"), None)
    tokens = genai_usd("gpt-4o-mini-search-preview", record["usage"])
    assert _usd(record["cost"]["total_cost_usd"]) == tokens + Decimal("0.0275")
    assert run.summary is not None
    assert run.summary["cost_complete"] is True


def test_fees_add_to_a_price_files_own_token_rates(sdk: Sdk, tmp_path: Path) -> None:
    """The fees layer over whatever prices the tokens: here the file's own rates for the model."""
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES + "models:\n  gpt-4.1: {input: 1, output: 2}\n")
    monitor = LLMCallMonitor(logger=None, prices=path)
    with capture(monitor) as records:
        sdk(monitor).responses.create(model="gpt-4.1", input="news?", tools=[WEB])
    (record,) = records.calls
    usage = record["usage"]
    tokens = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) * Decimal("1e-6")
    assert record["cost"]["source"] == "price-file"
    assert _usd(record["cost"]["total_cost_usd"]) == tokens + Decimal("0.03")


def test_a_cost_the_provider_reports_is_kept_as_it_is(sdk: Sdk, priced: LLMCallMonitor) -> None:
    """A provider's own cost includes the fees it billed: no fee is added to it."""
    with capture(priced) as records:
        sdk(priced).responses.create(
            model="gpt-4.1", input="news?", tools=[WEB], extra_headers={"x-fake-cost": "0.05"}
        )
    (record,) = records.calls
    cost = record["cost"]
    assert (cost["total_cost_usd"], cost["tool_fees_usd"], cost["left_out"]) == (0.05, None, None)


def test_a_table_built_in_python_takes_the_same_fees(sdk: Sdk) -> None:
    """``PriceTable(tool_fees=...)`` prices a call as the price file does."""
    table = PriceTable(tool_fees={"gpt-4.1*": {"web_search": Decimal("0.03")}})
    monitor = LLMCallMonitor(logger=None, prices=table)
    with capture(monitor) as records:
        sdk(monitor).responses.create(model="gpt-4.1", input="news?", tools=[WEB])
    (record,) = records.calls
    assert (_usd(record["cost"]["tool_fees_usd"]), record["cost"]["left_out"]) == (Decimal("0.03"), None)


def test_a_what_if_in_python_prices_the_tool_uses_a_record_gives(sdk: Sdk, priced: LLMCallMonitor) -> None:
    """``PriceTable.cost()`` and ``price()`` given a record's usage and ``tool_uses`` cost what the
    monitor recorded with the same table: the fees in ``tool_fees_usd`` and the total, a kind with no fee
    named in ``left_out``; without ``tool_uses`` they price the tokens alone, as before."""
    with capture(priced) as records:
        sdk(priced).responses.create(model="gpt-4.1", input="news?", tools=[WEB, CODE], extra_headers=TWICE)
    (record,) = records.calls
    usage, uses = record["usage"], record["response"]["tool_uses"]
    tokens: Any = {
        name: usage[name] for name in ("prompt_tokens", "completion_tokens", "cached_tokens") if usage[name]
    }
    model, table = record["response"]["model"], priced.prices
    cost = table.cost(model, **tokens, tool_uses=uses)
    assert cost == llm_ledger.price(model, table=table, **tokens, tool_uses=uses)
    assert cost is not None
    assert (cost.total_cost_usd, cost.tool_fees_usd) == (
        _usd(record["cost"]["total_cost_usd"]),
        _usd(record["cost"]["tool_fees_usd"]),
    )
    assert list(cost.left_out) == record["cost"]["left_out"] == ["code_interpreter"]
    alone = table.cost(model, **tokens)
    assert alone is not None and (alone.tool_fees_usd, alone.left_out) == (Decimal(0), ())
    assert alone.total_cost_usd == cost.total_cost_usd - Decimal("0.06")


@pytest.mark.parametrize(
    ("uses", "error"),
    [
        ({"web_serch": 1}, "tool_uses: unknown tool kind 'web_serch' (did you mean 'web_search'?)"),
        ({"web_search": -1}, "tool_uses['web_search']: expected a whole number of uses >= 0, got -1"),
        ({"web_search": 1.5}, "tool_uses['web_search']: expected a whole number of uses >= 0, got 1.5"),
        (["web_search"], "tool_uses: expected a mapping of built-in tool kind"),
    ],
)
def test_bad_tool_uses_in_a_what_if_say_what_is_wrong(uses: Any, error: str) -> None:
    """A misspelt kind, a count that is not a whole number of uses, or not a mapping: a ValueError
    naming it and the valid kinds, never a cost that leaves the uses out."""
    with pytest.raises(ValueError, match="tool_uses") as caught:
        PriceTable().cost("gpt-4.1", prompt_tokens=10, completion_tokens=5, tool_uses=uses)
    assert error in str(caught.value)
    assert "web_search, file_search, code_interpreter, image_generation" in str(caught.value)


def test_configure_reads_the_fees_of_its_price_file(
    fresh_config: None, prices: Path, fake_openai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LLM_LEDGER_PRICE_FILE`` read by ``configure()`` prices the default monitor's tool fees."""
    monkeypatch.setenv("LLM_LEDGER_PRICE_FILE", str(prices))
    llm_ledger.configure(log_dir=None)
    raw = openai.OpenAI(api_key="sk-fake-0000000000", base_url=fake_openai.base_url, max_retries=0)
    with raw, capture() as records:
        llm_ledger.instrument(raw).responses.create(model="gpt-4.1", input="news?", tools=[FILES])
    (record,) = records.calls
    assert _usd(record["cost"]["tool_fees_usd"]) == Decimal("0.0025")


def test_a_cost_budget_sees_the_fees(
    sdk: Sdk, priced: LLMCallMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    """A max_cost_usd the tokens alone stay under is exceeded by their fees, and is no longer blind."""
    heard: list[llm_ledger.BudgetRecord] = []
    priced.budgets = llm_ledger.BudgetGuard(
        {"lenses": {"answer": {"max_cost_usd": 0.05}}}, on_exceeded=heard.append
    )
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    with capture(priced) as records, priced.lens("answer"):
        sdk(priced).responses.create(
            model="gpt-4.1", input="news?", tools=[WEB], extra_headers={"x-fake-tool-uses": "3"}
        )
    (record,) = records.calls
    assert _tokens_usd(record) < Decimal("0.05") < _usd(record["cost"]["total_cost_usd"])
    [breach] = heard
    assert (breach["budget"]["limit"], breach["budget"]["actual"]) == (
        "max_cost_usd",
        record["cost"]["total_cost_usd"],
    )
    assert "built-in tools" not in caplog.text


def _log(records: Captured, tmp_path: Path) -> Path:
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records.calls))
    return log


def _reprice(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["reprice", *args, "--format", "json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_repricing_a_log_with_a_fee_file_prices_the_uses_recorded_without_fees(
    client: openai.OpenAI, records: Captured, prices: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log recorded with no fees: "before" is what was recorded (incomplete), "after" adds each use at
    the file's fee; a kind the file gives no fee for is named, with its uses, as left out after."""
    client.responses.create(model="gpt-4.1", input="news?", tools=[WEB, FILES], extra_headers=TWICE)
    client.responses.create(model="gpt-4.1", input="run it", tools=[CODE])
    log = _log(records, tmp_path)
    tokens = sum(_tokens_usd(r) for r in records.calls)
    fees = 2 * Decimal("0.03") + 2 * Decimal("0.0025")
    result = _reprice(capsys, str(log), "--price-file", str(prices))
    total = result["total"]
    assert _usd(total["before_usd"]) == tokens
    assert _usd(total["after_usd"]) == tokens + fees
    assert (total["before_complete"], total["after_complete"]) == (False, False)
    assert (result["tool_fee_calls"], result["unpriced_tools_after"]) == (2, {"code_interpreter": 1})
    assert total["change_usd"] is None  # no call's cost is complete on both sides


def test_repricing_a_log_recorded_with_fees(
    sdk: Sdk, priced: LLMCallMonitor, prices: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded with the fees: the same file changes nothing; genai-prices alone leaves them out after."""
    with capture(priced) as records:
        sdk(priced).responses.create(model="gpt-4.1", input="news?", tools=[WEB, FILES])
    log = _log(records, tmp_path)
    (record,) = records.calls
    same = _reprice(capsys, str(log), "--price-file", str(prices))["total"]
    assert _usd(same["before_usd"]) == _usd(same["after_usd"]) == _usd(record["cost"]["total_cost_usd"])
    assert (same["before_complete"], same["after_complete"], same["change_usd"]) == (True, True, 0)
    alone = _reprice(capsys, str(log))
    assert _usd(alone["total"]["after_usd"]) == _tokens_usd(record)
    assert alone["total"]["after_complete"] is False
    assert alone["unpriced_tools_after"] == {"file_search": 1, "web_search": 1}
    capsys.readouterr()
    assert main(["reprice", str(log)]) == 0
    assert (
        "after leaves out the fees of 1 file_search use, 1 web_search use: give them in the price file's "
        "tool_fees (USD per use, docs/PRICING.md) and pass it (--price-file)"
    ) in capsys.readouterr().out


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as caught:
        PriceTable.from_file(path)
    return str(caught.value).removeprefix(str(path) + ":")


KINDS = "web_search, file_search, code_interpreter, image_generation"


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        pytest.param(
            '  "*": {web_serch: 0.01}\n',
            f"3: tool_fees.*.web_serch: unknown key (did you mean 'web_search'?); valid keys: {KINDS}",
            id="unknown-kind",
        ),
        pytest.param(
            '  "*": {web_search_preview: 0.01}\n',
            "3: tool_fees.*.web_search_preview: unknown key (did you mean 'web_search'?); valid keys: "
            + KINDS,
            id="tool-type-for-kind",
        ),
        pytest.param(
            '  "*": {web_search: -0.01}\n',
            "3: tool_fees.*.web_search: expected a non-negative number of USD per use, got -0.01",
            id="negative",
        ),
        pytest.param(
            '  "*": {web_search: cheap}\n',
            "3: tool_fees.*.web_search: expected a non-negative number of USD per use, got 'cheap'",
            id="not-a-number",
        ),
        pytest.param(
            '  "*": {web_search: "$0.01"}\n',
            "3: tool_fees.*.web_search: expected a non-negative number of USD per use, got '$0.01': write "
            "0.01, without the $ (the unit is USD)",
            id="dollar-sign",
        ),
        pytest.param(
            '  "*": {web_search: 10}\n',
            "3: tool_fees.*.web_search: 10 USD per use looks like USD per 1,000 uses (as OpenAI's pricing "
            "page quotes them); fees here are USD per use (web_search: 0.01)",
            id="per-1k",
        ),
        pytest.param(
            '  "*": {}\n',
            f"3: tool_fees.*: expected a mapping of built-in tool kind ({KINDS}) to its fee in USD per use, "
            "got an empty mapping",
            id="empty-entry",
        ),
        pytest.param(
            "  gpt-4o: 0.01\n",
            f"3: tool_fees.gpt-4o: expected a mapping of built-in tool kind ({KINDS}) to its fee in USD per "
            "use, got 0.01",
            id="fee-without-kind",
        ),
        pytest.param(
            "  gpt-4o: {web_search: 0.01}\n  GPT-4o: {web_search: 0.02}\n",
            "4: tool_fees.GPT-4o: the same model as 'gpt-4o' (line 3) but for case, which matching ignores; "
            "keep one entry",
            id="same-name-other-case",
        ),
    ],
)
def test_a_bad_tool_fee_names_file_line_and_key(tmp_path: Path, entries: str, error: str) -> None:
    """Each mistake in ``tool_fees`` is a PriceFileError naming the line, the key path and the fix."""
    assert _error(tmp_path, "version: 1\ntool_fees:\n" + entries) == error


def test_tool_fees_must_be_a_mapping(tmp_path: Path) -> None:
    """A list where the model entries go names what is expected."""
    said = _error(tmp_path, "version: 1\ntool_fees:\n  - web_search: 0.01\n")
    assert said == (
        "3: tool_fees: expected a mapping of model name or pattern to its built-in tools' fees, got a list"
    )


@pytest.mark.parametrize(
    ("fees", "error"),
    [
        (
            {"*": {"web_serch": Decimal("0.01")}},
            "tool_fees['*']['web_serch']: unknown tool kind (did you mean 'web_search'?); valid kinds: "
            + KINDS,
        ),
        (
            {"*": {"web_search": 0.01}},
            "tool_fees['*']['web_search']: expected a finite Decimal between 0 and 1000000 USD per use, "
            "got 0.01",
        ),
        (
            {"*": {"web_search": Decimal("-1")}},
            "tool_fees['*']['web_search']: expected a finite Decimal between 0 and 1000000 USD per use, got "
            "Decimal('-1')",
        ),
        (
            {"*": {}},
            f"tool_fees['*']: expected a mapping of built-in tool kind ({KINDS}) to its USD per use "
            "(a Decimal), got {}",
        ),
        (
            {"gpt-4o": {"web_search": Decimal(1)}, "GPT-4o": {"web_search": Decimal(1)}},
            "tool_fees['GPT-4o']: the same model as 'gpt-4o' but for case, which matching ignores; keep "
            "one entry",
        ),
    ],
)
def test_a_bad_tool_fee_in_python_is_a_config_error(fees: Any, error: str) -> None:
    """``PriceTable(tool_fees=...)`` checks kinds and fees as the price file does."""
    with pytest.raises(ConfigError) as caught:
        PriceTable(tool_fees=fees)
    assert str(caught.value) == error


def test_a_price_file_may_give_tool_fees_alone(tmp_path: Path) -> None:
    """A file with only ``tool_fees`` leaves the tokens to genai-prices."""
    path = tmp_path / "prices.yaml"
    path.write_text('version: 1\ntool_fees:\n  "*": {web_search: 0.01}\n')
    table = PriceTable.from_file(path)
    rates = table.rates("gpt-4.1")
    assert rates is not None and rates.source.startswith("genai-prices")


def test_a_report_row_with_bad_tool_uses_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-edited report whose row counts uses as anything but whole numbers >= 0 is an error naming
    the row and field, never uses read as 0."""
    row = {"calls": 1, "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.1, "uncosted_calls": 0}
    report = {
        "schema": REPORT_SCHEMA,
        "version": 1,
        "lenses": {},
        "total": {"api_calls": 1, "total_tokens": 2, "cost_usd": 0.1, "errors": 0},
        "usage": [{**row, "tool_uses": {"web_search": -1}}],
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["reprice", str(path)]) == 2
    assert (
        "report.json: usage[0].tool_uses: expected an object of built-in tool kind to whole number of uses "
        ">= 0, got {'web_search': -1}"
    ) in capsys.readouterr().err
