"""Price files give long-context tiers (``long_context``) and service-tier rates (``service_tiers``), as
genai-prices' data does, so a user correcting a tiered or flex-priced model gets the right cost: live,
through ``price()`` and when a log is repriced; and a mistake in them names the file, line, key and fix."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_ledger import LLMCallMonitor, PriceFileError, PriceTable, Rates, price
from llm_ledger._cli import main
from llm_ledger._errors import ConfigError
from llm_ledger._rates import service_tiers
from llm_ledger.testing import Captured

# the tiers a price may be given for: ours, then those genai-prices prices apart (its data grows)
TIERS = ", ".join(service_tiers())

# A negotiated Gemini rate with its long-context cliff, and a gpt-5-mini rate with its flex tier; the
# figures differ from genai-prices' so that a built-in price would show.
PRICES = """\
version: 1
models:
  gemini-2.5-pro:
    input: 1
    cached_input: 0.1
    output: 8
    long_context:
      - {above: 200000, input: 2, cached_input: 0.2, output: 12}
  gpt-5-mini:
    input: 0.2
    cached_input: 0.02
    output: 1.6
    service_tiers:
      flex:
        input: 0.1
        cached_input: 0.01
        output: 0.8
        long_context:
          - {above: 100000, input: 0.3, cached_input: 0.03, output: 2}
"""


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    return path


@pytest.mark.parametrize(
    ("prompt", "usd"),
    [
        # at the threshold, not above it: 150000*1e-6 + 50000*0.1e-6 ; 10000*8e-6
        (200_000, ("0.155", "0.08", "0.235")),
        # one token above: every token at the tier's rates. 150001*2e-6 + 50000*0.2e-6 ; 10000*12e-6
        (200_001, ("0.310002", "0.12", "0.430002")),
    ],
)
def test_a_call_under_and_over_a_long_context_threshold(
    prices: Path, prompt: int, usd: tuple[str, ...]
) -> None:
    """The tier's rates apply to all of a call's tokens once its prompt is above ``above``, never at it."""
    table = PriceTable.from_file(prices)
    cost = table.cost("gemini-2.5-pro", prompt_tokens=prompt, cached_tokens=50_000, completion_tokens=10_000)
    assert cost is not None
    assert (cost.prompt_cost_usd, cost.completion_cost_usd, cost.total_cost_usd) == tuple(map(Decimal, usd))
    # the same rates wherever the call went (a price-file entry holds for every provider)
    at_google = table.cost(
        "gemini-2.5-pro",
        prompt_tokens=prompt,
        cached_tokens=50_000,
        completion_tokens=10_000,
        provider="google",
    )
    assert at_google == cost


@pytest.mark.parametrize(
    ("tier", "prompt", "usd"),
    [
        # 8000*0.1e-6 + 2000*0.01e-6 ; 4000*0.8e-6
        ("flex", 10_000, "0.00402"),
        # flex's own cliff: 198000*0.3e-6 + 2000*0.03e-6 ; 4000*2e-6
        ("flex", 200_000, "0.06746"),
        # the standard rates: 8000*0.2e-6 + 2000*0.02e-6 ; 4000*1.6e-6
        ("default", 10_000, "0.00804"),
        (None, 10_000, "0.00804"),
        # a tier the file does not price costs the entry's rates, not genai-prices' priority price
        ("priority", 10_000, "0.00804"),
    ],
)
def test_a_flex_call_costs_the_files_flex_rates(
    prices: Path, tier: str | None, prompt: int, usd: str
) -> None:
    """The service tier that served a call picks the file's rates for it; other tiers the entry's."""
    cost = price(
        "gpt-5-mini",
        prompt_tokens=prompt,
        cached_tokens=2_000,
        completion_tokens=4_000,
        service_tier=tier,
        table=PriceTable.from_file(prices),
    )
    assert cost is not None
    assert cost.total_cost_usd == Decimal(usd)


def test_the_file_rates_are_on_the_rates_it_returns(prices: Path) -> None:
    """``rates()`` shows the tiers as Python builds them: (above, Rates) and (tier name, Rates) pairs."""
    table = PriceTable.from_file(prices)
    gemini = table.rates("gemini-2.5-pro")
    assert gemini is not None
    assert gemini.tiers == ((200_000, Rates("gemini-2.5-pro", Decimal(2), Decimal(12), Decimal("0.2"))),)
    mini = table.rates("gpt-5-mini")
    assert mini is not None
    assert [(name, rates.input, rates.output, rates.tiers[0][0]) for name, rates in mini.service_tiers] == [
        ("flex", Decimal("0.1"), Decimal("0.8"), 100_000)
    ]


def test_a_host_rate_has_tiers_too(tmp_path: Path) -> None:
    """A host priced by the file (self-hosted) takes the same long-context and service-tier keys."""
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\nhosts:\n  gpu.internal:\n    input: 1\n    output: 1\n"
        "    long_context: [{above: 1000, input: 3, output: 3}]\n"
        "    service_tiers: {flex: {input: 0, output: 0}}\n"
    )
    route = PriceTable.from_file(path).route("gpu.internal")
    costs = [
        route.cost("any", prompt_tokens=prompt, completion_tokens=1_000_000, service_tier=tier)
        for prompt, tier in ((1_000, None), (1_001, None), (1_001, "flex"))
    ]
    assert [cost.total_cost_usd if cost else None for cost in costs] == [
        Decimal("1.001"),
        Decimal("3.003003"),
        0,
    ]


def test_calls_through_the_sdk_and_reprice_use_the_files_tiers(
    client: openai.OpenAI,
    monitor: LLMCallMonitor,
    records: Captured,
    prices: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calls recorded live cost the file's tier prices, and ``llm-ledger reprice --price-file`` finds the
    same figures again from the log (one pricing function for both)."""
    monitor.prices = PriceTable.from_file(prices)
    ask: Any = [{"role": "user", "content": "hi"}]
    # all of the prompt from the cache: 250000 cached tokens, above the cliff
    client.chat.completions.create(
        model="gemini-2.5-pro", messages=ask, extra_headers={"x-fake-cached-tokens": "250000"}
    )
    client.chat.completions.create(model="gpt-5-mini", messages=ask, service_tier="flex")
    gemini, flex = records.calls
    assert gemini["usage"]["prompt_tokens"] == gemini["usage"]["cached_tokens"] == 250_000
    completion = gemini["usage"]["completion_tokens"]
    # 250000*0.2e-6 ; completion at 12e-6
    assert Decimal(repr(gemini["cost"]["total_cost_usd"])) == Decimal("0.05") + completion * Decimal("12e-6")
    assert gemini["cost"]["source"] == "price-file"
    usage = flex["usage"]
    assert flex["response"]["service_tier"] == "flex"
    expected = usage["prompt_tokens"] * Decimal("0.1e-6") + usage["completion_tokens"] * Decimal("0.8e-6")
    assert Decimal(repr(flex["cost"]["total_cost_usd"])) == expected

    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert main(["reprice", str(log), "--price-file", str(prices), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["change_usd"] == 0
    assert (
        total["after_usd"]
        == total["before_usd"]
        == float(Decimal(repr(gemini["cost"]["total_cost_usd"])) + expected)
    )


def test_python_service_tiers_are_checked() -> None:
    """``Rates(service_tiers=...)`` takes distinct (name, Rates) pairs, with no service tiers inside."""
    flex = Rates("m", Decimal(1), Decimal(1))
    with pytest.raises(ConfigError, match=r"Rates\('m'\)\.service_tiers: expected \(name, Rates\) pairs"):
        Rates("m", Decimal(2), Decimal(2), service_tiers=(("flex", flex), ("flex", flex)))
    nested = Rates("m", Decimal(1), Decimal(1), service_tiers=(("flex", flex),))
    with pytest.raises(ConfigError, match="no nested service tiers"):
        Rates("m", Decimal(2), Decimal(2), service_tiers=(("priority", nested),))
    with pytest.raises(ConfigError, match="no nested tiers"):
        Rates("m", Decimal(2), Decimal(2), tiers=((1_000, nested),))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "flx",
            f"unknown service tier (did you mean 'flex'?); valid service tiers: {TIERS}",
        ),
        (
            "default",
            "unknown service tier; the standard tier's rates are the entry's own (input, cached_input, "
            f"output); valid service tiers: {TIERS}",
        ),
    ],
)
def test_python_service_tier_names_are_checked_as_in_a_price_file(name: str, message: str) -> None:
    """``Rates(service_tiers=...)`` rejects a tier no response names, with the price file's message (the
    valid choices), instead of keeping rates no call would ever be priced at."""
    other = Rates("m", Decimal("0.5"), Decimal(1))
    with pytest.raises(ConfigError) as excinfo:
        Rates("m", Decimal(1), Decimal(2), Decimal("0.1"), service_tiers=((name, other),))
    assert str(excinfo.value) == f"Rates('m').service_tiers.{name}: {message}"


ENTRY = "version: 1\nmodels:\n  m:\n    input: 1\n    cached_input: 0.1\n    output: 2\n"

BAD = [
    # (id, what follows the entry, the message after "<path>:")
    (
        "above-zero",
        "    long_context: [{above: 0, input: 2, cached_input: 0.2, output: 4}]\n",
        "7: models.m.long_context[0].above: expected a whole number of prompt tokens above 0 (e.g. 200000: "
        "its rates apply to calls with more), got 0",
    ),
    (
        "above-fraction",
        "    long_context: [{above: 2.5e5, input: 2, cached_input: 0.2, output: 4}]\n"
        "    # fine: 250000\n"
        "  n:\n    input: 1\n    output: 1\n    long_context: [{above: 1000.5, input: 2, output: 4}]\n",
        "12: models.n.long_context[0].above: expected a whole number of prompt tokens above 0",
    ),
    (
        "above-shorthand",
        "    long_context: [{above: 200k, input: 2, cached_input: 0.2, output: 4}]\n",
        "7: models.m.long_context[0].above: expected a whole number of prompt tokens above 0 (e.g. 200000: "
        "its rates apply to calls with more), got '200k'",
    ),
    (
        "above-negative",
        "    long_context: [{above: -1, input: 2, cached_input: 0.2, output: 4}]\n",
        "7: models.m.long_context[0].above: expected a whole number of prompt tokens above 0",
    ),
    (
        "above-missing",
        "    long_context:\n      - {input: 2, cached_input: 0.2, output: 4}\n",
        "8: models.m.long_context[0]: missing required key 'above' (the prompt tokens past which it applies)",
    ),
    (
        "genai-prices-start",
        "    long_context:\n      - {start: 200000, input: 2, cached_input: 0.2, output: 4}\n",
        "8: models.m.long_context[0].start: unknown key; the key meant is 'above'",
    ),
    (
        "tiers-for-long-context",
        "    tiers: []\n",
        "7: models.m.tiers: unknown key; the key meant is 'long_context'",
    ),
    (
        "descending",
        "    long_context:\n      - {above: 200000, input: 2, cached_input: 0.2, output: 4}\n"
        "      - {above: 128000, input: 3, cached_input: 0.3, output: 6}\n",
        "9: models.m.long_context[1].above: 128000 is not above the previous tier's 200000: "
        "list the tiers in ascending order",
    ),
    (
        "not-a-list",
        "    long_context: {above: 200000, input: 2, output: 4}\n",
        "7: models.m.long_context: expected a list of tiers, each a mapping with 'above' (prompt tokens) and "
        "the tier's rates, got a mapping",
    ),
    (
        "tier-not-mapping",
        "    long_context: [200000]\n",
        "7: models.m.long_context[0]: expected a mapping with 'above' (prompt tokens) and the tier's rates, "
        "got 200000",
    ),
    (
        "tier-rates-missing",
        "    long_context: [{above: 200000}]\n",
        "7: models.m.long_context[0]: missing required key 'input' (USD per 1M input tokens)",
    ),
    (
        "tier-output-missing",
        "    long_context: [{above: 200000, input: 2, cached_input: 0.2}]\n",
        "7: models.m.long_context[0]: missing required key 'output' (USD per 1M output tokens)",
    ),
    (
        "tier-cached-missing",
        "    long_context: [{above: 200000, input: 2, output: 4}]\n",
        "7: models.m.long_context[0]: missing required key 'cached_input' (USD per 1M cached input tokens): "
        "its entry gives one, so each of its tiers must",
    ),
    (
        "tier-bad-rate",
        "    long_context: [{above: 200000, input: 2, cached_input: 0.2, output: $4}]\n",
        "7: models.m.long_context[0].output: expected a non-negative number of USD per 1M tokens, got '$4': "
        "write 4, without the $",
    ),
    (
        "unknown-service-tier",
        "    service_tiers:\n      flx: {input: 0.5, cached_input: 0.05, output: 1}\n",
        f"8: models.m.service_tiers.flx: unknown service tier (did you mean 'flex'?); valid service tiers: "
        f"{TIERS}",
    ),
    (
        "default-service-tier",
        "    service_tiers:\n      default: {input: 0.5, cached_input: 0.05, output: 1}\n",
        "8: models.m.service_tiers.default: unknown service tier; the standard tier's rates are the entry's "
        f"own (input, cached_input, output); valid service tiers: {TIERS}",
    ),
    (
        "service-tier-singular",
        "    service_tier: {flex: {input: 0.5, output: 1}}\n",
        "7: models.m.service_tier: unknown key; the key meant is 'service_tiers'",
    ),
    (
        "service-tier-rates-missing",
        "    service_tiers:\n      flex: {input: 0.5, cached_input: 0.05}\n",
        "8: models.m.service_tiers.flex: missing required key 'output' (USD per 1M output tokens)",
    ),
    (
        "service-tier-not-mapping",
        "    service_tiers: [flex]\n",
        f"7: models.m.service_tiers: expected a mapping of service tier ({TIERS}) to its rates, got a list",
    ),
    (
        "nested-service-tiers",
        "    service_tiers:\n      flex:\n        input: 0.5\n        cached_input: 0.05\n        output: 1\n"
        "        service_tiers: {}\n",
        "12: models.m.service_tiers.flex.service_tiers: unknown key; valid keys: input, cached_input, "
        "cache_write, input_audio, cached_input_audio, input_image, cached_input_image, output, "
        "output_audio, long_context",
    ),
]


@pytest.mark.parametrize(("tail", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_tiers_name_the_file_line_key_and_fix(tmp_path: Path, tail: str, message: str) -> None:
    """A mistake in a tier is a PriceFileError at load time naming the file, line, key path and the fix."""
    path = tmp_path / "prices.yaml"
    path.write_text(ENTRY + tail)
    with pytest.raises(PriceFileError) as error:
        PriceTable.from_file(path)
    assert str(error.value).startswith(f"{path}:{message}")


def test_a_tier_genai_prices_prices_apart_can_be_given_and_is_listed_after_ours(tmp_path: Path) -> None:
    """A tier a provider adds (OpenAI's ultrafast, in genai-prices' data) is priced apart built in, so a
    price file may correct it too; the valid choices list ours first, then genai-prices' own."""
    assert service_tiers()[:4] == ("flex", "priority", "fast", "scale") and "ultrafast" in service_tiers()
    path = tmp_path / "prices.yaml"
    path.write_text(ENTRY + "    service_tiers:\n      ultrafast: {input: 3, cached_input: 0.3, output: 6}\n")
    counts: dict[str, Any] = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    table = PriceTable.from_file(path, builtin=False)
    assert (cost := table.cost("m", **counts, service_tier="ultrafast")) is not None
    assert cost.total_cost_usd == Decimal(9)
    assert (cost := table.cost("m", **counts)) is not None and cost.total_cost_usd == Decimal(3)
