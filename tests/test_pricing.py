"""The cost model: built-in OpenAI prices, user price files, and what bad price files report."""

from __future__ import annotations

import inspect
import pydoc
import re
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import Cost, PriceTable, Rates, _pricing, price
from llm_ledger._errors import ConfigError, PriceFileError

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO_ROOT = Path(__file__).resolve().parent.parent

# Expected figures worked out by hand from the public OpenAI price list as recorded in
# /work/shared/research/cost.md section B (USD per 1M tokens; cached tokens are part of P, reasoning
# tokens R are part of O and never billed again). Columns: model, P, C, O, prompt USD, completion USD, total.
GROUND_TRUTH = [
    # 1: 2.5/10.  1000*2.5e-6 ; 500*1e-5
    ("gpt-4o", 1_000, 0, 500, "0.0025", "0.005", "0.0075"),
    ("gpt-4o-2024-08-06", 1_000, 0, 500, "0.0025", "0.005", "0.0075"),
    ("openai/gpt-4o", 1_000, 0, 500, "0.0025", "0.005", "0.0075"),
    # 2: cached 1.25.  2000*2.5e-6 + 8000*1.25e-6 ; 200*1e-5
    ("gpt-4o", 10_000, 8_000, 200, "0.015", "0.002", "0.017"),
    # 3: the May 2024 snapshot kept its launch price, 5/15.
    ("gpt-4o-2024-05-13", 1_000, 0, 1_000, "0.005", "0.015", "0.020"),
    # 4: 0.15 / cached 0.075 / 0.6.  50000*0.15e-6 + 50000*0.075e-6 ; 10000*0.6e-6
    ("gpt-4o-mini", 100_000, 50_000, 10_000, "0.01125", "0.006", "0.01725"),
    ("gpt-4o-mini-2024-07-18", 100_000, 50_000, 10_000, "0.01125", "0.006", "0.01725"),
    # 5: 2 / cached 0.5 / 8.  5000*2e-6 + 15000*0.5e-6 ; 1000*8e-6
    ("gpt-4.1", 20_000, 15_000, 1_000, "0.0175", "0.008", "0.0255"),
    ("gpt-4.1-2025-04-14", 20_000, 15_000, 1_000, "0.0175", "0.008", "0.0255"),
    # 6: 0.4 / cached 0.1 / 1.6.  100000*0.4e-6 + 100000*0.1e-6 ; 20000*1.6e-6
    ("gpt-4.1-mini", 200_000, 100_000, 20_000, "0.05", "0.032", "0.082"),
    # 7: 2/8, O=5000 of which R=4500.  2000*2e-6 ; 5000*8e-6 (not 9500)
    ("o3", 2_000, 0, 5_000, "0.004", "0.04", "0.044"),
    ("o3-2025-04-16", 2_000, 0, 5_000, "0.004", "0.04", "0.044"),
    # 8: 1.1 / cached 0.275 / 4.4, R=1500 inside O.  1976*1.1e-6 + 1024*0.275e-6 ; 2000*4.4e-6
    ("o4-mini", 3_000, 1_024, 2_000, "0.0024552", "0.0088", "0.0112552"),
    ("o4-mini-2025-04-16", 3_000, 1_024, 2_000, "0.0024552", "0.0088", "0.0112552"),
    # 9: 1.25 / cached 0.125 / 10, R=6000 inside O.  10000*1.25e-6 + 40000*0.125e-6 ; 8000*1e-5
    ("gpt-5", 50_000, 40_000, 8_000, "0.0175", "0.08", "0.0975"),
    ("gpt-5-2025-08-07", 50_000, 40_000, 8_000, "0.0175", "0.08", "0.0975"),
    # 10: 0.25/2, R=3000 inside O.  10000*0.25e-6 ; 4000*2e-6
    ("gpt-5-mini", 10_000, 0, 4_000, "0.0025", "0.008", "0.0105"),
    # 11: 30/60.  1000*3e-5 ; 500*6e-5
    ("gpt-4", 1_000, 0, 500, "0.03", "0.03", "0.06"),
    # 12: 10/30.  10000*1e-5 ; 1000*3e-5
    ("gpt-4-turbo", 10_000, 0, 1_000, "0.1", "0.03", "0.13"),
    ("gpt-4-turbo-2024-04-09", 10_000, 0, 1_000, "0.1", "0.03", "0.13"),
    # 13: 0.5/1.5.  1000*5e-7 ; 1000*1.5e-6
    ("gpt-3.5-turbo", 1_000, 0, 1_000, "0.0005", "0.0015", "0.002"),
    # 15: 2.5/15, above 272k prompt tokens 5/22.5 on ALL tokens.  300000*5e-6 ; 10000*22.5e-6
    ("gpt-5.4", 300_000, 0, 10_000, "1.5", "0.225", "1.725"),
    # ... and exactly 272k is not above the cliff.  272000*2.5e-6 ; 10000*15e-6
    ("gpt-5.4", 272_000, 0, 10_000, "0.68", "0.15", "0.83"),
]


@pytest.mark.parametrize(
    ("model", "prompt", "cached", "completion", "prompt_usd", "completion_usd", "total_usd"), GROUND_TRUTH
)
def test_builtin_prices_match_hand_computed_ground_truth(
    model: str,
    prompt: int,
    cached: int,
    completion: int,
    prompt_usd: str,
    completion_usd: str,
    total_usd: str,
) -> None:
    """Each current OpenAI model costs what the public price list says, split into prompt and completion."""
    cost = PriceTable().cost(model, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    assert cost == Cost(Decimal(prompt_usd), Decimal(completion_usd), Decimal(total_usd))


def test_long_context_cliff_applies_to_cached_tokens_too() -> None:
    """Above gpt-5.4's 272k cliff, cached prompt tokens move to the tier's cached rate (0.25 -> 0.5)."""
    cost = PriceTable().cost("gpt-5.4", prompt_tokens=300_000, completion_tokens=0, cached_tokens=100_000)
    # 200000*5e-6 + 100000*0.5e-6
    assert cost == Cost(Decimal("1.05"), Decimal(0), Decimal("1.05"))


def test_rates_name_the_model_that_matched_and_the_source() -> None:
    """A dated snapshot reports the genai-prices model it resolved to, where the price came from, and the
    prices of the service tiers priced apart (priority, and "fast" as genai-prices lists it)."""
    import genai_prices

    source = f"genai-prices {genai_prices.__version__}"
    rates = PriceTable().rates("gpt-4o-2024-08-06")
    priority = Rates("gpt-4o", Decimal("4.25"), Decimal("17"), Decimal("2.125"), source)
    assert rates == Rates(
        model="gpt-4o",
        input=Decimal("2.5"),
        output=Decimal("10"),
        cached_input=Decimal("1.25"),
        source=source,
        service_tiers=(("fast", priority), ("priority", priority)),
    )


def test_long_context_tier_is_exposed_on_rates() -> None:
    """gpt-5.4's rates carry one tier starting above 272,000 prompt tokens."""
    rates = PriceTable().rates("gpt-5.4")
    assert rates is not None
    assert [(start, tier.input, tier.output, tier.cached_input) for start, tier in rates.tiers] == [
        (272_000, Decimal("5"), Decimal("22.5"), Decimal("0.5"))
    ]


def test_unknown_model_is_none_not_zero() -> None:
    """An unknown model has no rates and no cost (None, never a silent 0)."""
    table = PriceTable()
    assert table.rates("my-private-model") is None
    assert table.cost("my-private-model", prompt_tokens=10, completion_tokens=10) is None
    assert price("my-private-model", prompt_tokens=10, completion_tokens=10) is None
    assert table.cost("azure/gpt-4o", prompt_tokens=10, completion_tokens=10) is None


def test_module_level_price_uses_builtin_table_or_the_given_one() -> None:
    """price() prices with built-in rates by default, and with the table passed in otherwise."""
    assert price("gpt-4", prompt_tokens=1_000, completion_tokens=500) == Cost(
        Decimal("0.03"), Decimal("0.03"), Decimal("0.06")
    )
    table = PriceTable({"gpt-4": Rates("gpt-4", Decimal(1), Decimal(2), None, "test")})
    assert price("gpt-4", prompt_tokens=1_000_000, completion_tokens=1_000_000, table=table) == Cost(
        Decimal(1), Decimal(2), Decimal(3)
    )


def test_rates_are_resolved_once_per_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known and unknown names hit genai-prices once; later calls are served from the table's cache."""
    calls: list[str] = []
    real = _pricing._builtin_entry

    def counting(name: str, provider: str = "openai") -> _pricing._Entry | None:
        calls.append(name)
        return real(name, provider)

    monkeypatch.setattr(_pricing, "_builtin_entry", counting)
    table = PriceTable()
    first = table.rates("gpt-4o")
    for _ in range(3):
        assert table.rates("gpt-4o") is first
        table.cost("gpt-4o", prompt_tokens=1, completion_tokens=1)
        assert table.cost("nope", prompt_tokens=1, completion_tokens=1) is None
    assert calls.count("gpt-4o") == 1
    assert calls.count("nope") == 1


def test_cost_matches_genai_prices_for_every_token_priced_openai_model() -> None:
    """Our cached rates reproduce genai_prices.calc_price for every OpenAI model it prices per token."""
    import genai_prices
    from genai_prices.data import providers

    openai = next(p for p in providers if p.id == "openai")
    table = PriceTable()
    checked = 0
    for info in openai.models:
        rates = table.rates(info.id)
        if rates is None:
            continue
        for prompt, cached, completion in [(1_000, 0, 500), (10_000, 8_000, 200), (300_000, 100_000, 9_000)]:
            usage = genai_prices.Usage(
                input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion
            )
            expected = genai_prices.calc_price(usage, info.id, provider_id="openai")
            cost = table.cost(
                info.id, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
            )
            assert cost is not None
            assert (cost.prompt_cost_usd, cost.completion_cost_usd, cost.total_cost_usd) == (
                expected.input_price,
                expected.output_price,
                expected.total_price,
            ), info.id
        checked += 1
    assert checked > 80


def test_cost_ignores_the_callers_decimal_context() -> None:
    """A low-precision decimal context in the caller does not round prices."""
    import decimal

    with decimal.localcontext(decimal.Context(prec=2)):
        cost = PriceTable().cost("o4-mini", prompt_tokens=3_000, completion_tokens=2_000, cached_tokens=1_024)
    assert cost is not None
    assert cost.total_cost_usd == Decimal("0.0112552")


def test_cost_rejects_cached_tokens_above_prompt_tokens() -> None:
    """cached_tokens is a subset of prompt_tokens; more cached than prompt is a caller bug."""
    with pytest.raises(ValueError, match="cached_tokens \\+ cache_write_tokens <= prompt_tokens"):
        PriceTable().cost("gpt-4o", prompt_tokens=10, completion_tokens=0, cached_tokens=11)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"prompt_tokens": "10"}, "prompt_tokens must be a whole number of tokens >= 0, got '10'"),
        ({"prompt_tokens": 10.5}, "prompt_tokens must be a whole number of tokens >= 0, got 10.5"),
        ({"completion_tokens": True}, "completion_tokens must be a whole number of tokens >= 0, got True"),
        ({"cached_tokens": None}, "cached_tokens must be a whole number of tokens >= 0, got None"),
    ],
)
def test_cost_names_a_token_count_that_is_not_a_whole_number(counts: dict[str, Any], message: str) -> None:
    """price() given a count read from a CSV ('10'), a float or a flag says which argument is wrong,
    instead of a TypeError from inside the table or a cost of 10.5 tokens."""
    arguments: dict[str, Any] = {"prompt_tokens": 10, "completion_tokens": 5, **counts}
    with pytest.raises(ValueError, match=re.escape(message)):
        price("gpt-4o", **arguments)


@pytest.mark.parametrize(
    ("counts", "wrong"),
    [
        (
            {"prompt_tokens": 10, "completion_tokens": 5, "cache_tokens": 1},
            "an unexpected keyword 'cache_tokens'",
        ),
        ({"prompt_tokens": 10}, "no keyword 'completion_tokens'"),
    ],
)
def test_cost_names_a_keyword_it_does_not_take_or_misses(counts: dict[str, Any], wrong: str) -> None:
    """A misspelt count (cache_tokens) is a TypeError naming it and the keywords taken, never a count
    quietly left at 0; so is a missing required count, whichever of price(), PriceTable.cost() and
    Route.cost() is called."""
    for cost in (price, PriceTable().cost, PriceTable().route().cost):
        with pytest.raises(TypeError, match=re.escape(f"cost() got {wrong}; it takes prompt_tokens, ")):
            cost("gpt-4o", **counts)


def test_help_shows_the_keywords_of_a_priced_call() -> None:
    """help() and IDEs reading the signature show every PricedCall keyword, the required counts without
    a default and the others with theirs, on price(), PriceTable.cost() and Route.cost() alike."""
    keys = _pricing.PricedCall.__annotations__
    for cost in (price, PriceTable().cost, PriceTable().route().cost):
        params = inspect.signature(cost).parameters
        assert list(keys) == [name for name in params if name in keys], cost
        assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in keys)
        defaults = {name: params[name].default for name in keys}
        assert defaults == {
            "prompt_tokens": inspect.Parameter.empty,
            "completion_tokens": inspect.Parameter.empty,
            **dict.fromkeys(("cached_tokens", "cache_write_tokens"), 0),
            **dict.fromkeys(("prompt_audio_tokens", "completion_audio_tokens", "cached_audio_tokens"), 0),
            **dict.fromkeys(("prompt_image_tokens", "cached_image_tokens"), 0),
            "at": None,
            "service_tier": None,
            "tool_uses": None,
        }
    assert "completion_audio_tokens: int = 0" in pydoc.render_doc(price)


def test_rates_reject_float_and_negative_prices() -> None:
    """Rates accept only finite, non-negative Decimals (no float money)."""
    with pytest.raises(ConfigError, match=r"Rates\('m'\)\.input"):
        Rates("m", 2.5, Decimal(1), None, "test")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Rates\('m'\)\.cached_input"):
        Rates("m", Decimal(1), Decimal(1), Decimal(-1), "test")


def test_overrides_must_be_named_rates() -> None:
    """PriceTable overrides need non-empty names mapped to Rates."""
    with pytest.raises(ConfigError, match="non-empty string"):
        PriceTable({"": Rates("m", Decimal(1), Decimal(1), None, "test")})
    with pytest.raises(ConfigError, match=r"overrides\['m'\]: expected a Rates"):
        PriceTable({"m": {"input": 1}})  # type: ignore[dict-item]


def test_importing_the_module_does_not_load_genai_prices_data() -> None:
    """genai-prices' large data module is imported only when a price is first resolved."""
    code = "import sys, llm_ledger._pricing; assert 'genai_prices.data' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --- user price files ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_price_file_that_is_not_a_path_is_a_price_file_error() -> None:
    """PriceTable.from_file(5) names what a price file is given by, not Python's own TypeError."""
    with pytest.raises(
        PriceFileError, match=r"a price file is named by a path \(str or os.PathLike\), got 5"
    ):
        PriceTable.from_file(5)  # type: ignore[arg-type]


def test_price_file_overrides_builtin_prices(tmp_path: Path) -> None:
    """A price file entry replaces genai-prices' rate for that model, snapshots included."""
    path = write(
        tmp_path,
        """\
        version: 1
        models:
          gpt-4o:
            input: 2.00
            cached_input: 0.5
            output: 8
        """,
    )
    table = PriceTable.from_file(path)
    assert table.rates("gpt-4o") == Rates("gpt-4o", Decimal("2.00"), Decimal(8), Decimal("0.5"), "price-file")
    # 2000*2e-6 + 8000*0.5e-6 ; 200*8e-6
    expected = Cost(Decimal("0.008"), Decimal("0.0016"), Decimal("0.0096"))
    assert table.cost("gpt-4o", prompt_tokens=10_000, completion_tokens=200, cached_tokens=8_000) == expected
    assert table.cost(
        "gpt-4o-2024-08-06", prompt_tokens=10_000, completion_tokens=200, cached_tokens=8_000
    ) == (expected)
    # Models the file does not mention keep their built-in price.
    assert table.cost("gpt-4", prompt_tokens=1_000, completion_tokens=500) == Cost(
        Decimal("0.03"), Decimal("0.03"), Decimal("0.06")
    )


def test_price_file_cached_input_defaults_to_input_rate(tmp_path: Path) -> None:
    """Without cached_input, cached prompt tokens are billed at the input rate."""
    path = write(tmp_path, "version: 1\nmodels:\n  my-model:\n    input: 1\n    output: 4\n")
    table = PriceTable.from_file(path)
    rates = table.rates("my-model")
    assert rates is not None
    assert rates.cached_input is None
    assert table.cost(
        "my-model", prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=600_000
    ) == Cost(Decimal(1), Decimal(0), Decimal(1))


def test_price_file_patterns_exact_first_then_file_order(tmp_path: Path) -> None:
    """Exact names beat patterns; among patterns the first in the file wins; globs match fine-tunes."""
    path = write(
        tmp_path,
        """\
        version: 1
        models:
          "ft:gpt-4o-mini:*": {input: 0.3, output: 1.2}
          "my-*": {input: 1, output: 1}
          "my-model-*": {input: 2, output: 2}
          my-model-exact: {input: 3, output: 3}
          acme-model: {input: 4, output: 4}
        """,
    )
    table = PriceTable.from_file(path, builtin=False)

    def model_of(name: str) -> str | None:
        rates = table.rates(name)
        return None if rates is None else rates.model

    assert model_of("ft:gpt-4o-mini:acme::abc123") == "ft:gpt-4o-mini:*"
    assert model_of("my-model-exact") == "my-model-exact"
    assert model_of("my-model-other") == "my-*"
    assert model_of("acme-model-2025-01-31") == "acme-model"
    assert model_of("openai/acme-model") == "acme-model"
    assert model_of("gpt-4o") is None  # builtin=False: only the file's prices


def test_exact_name_wins_over_pattern_for_dated_snapshot(tmp_path: Path) -> None:
    """A dated snapshot takes its base model's exact entry over a catch-all pattern."""
    path = write(
        tmp_path, "version: 1\nmodels:\n  'gpt-*': {input: 9, output: 9}\n  gpt-4o: {input: 1, output: 2}\n"
    )
    rates = PriceTable.from_file(path).rates("gpt-4o-2024-11-20")
    assert rates is not None
    assert rates.model == "gpt-4o"


def test_price_file_numbers_are_exact_decimals(tmp_path: Path) -> None:
    """Rates keep the digits written (0.1 is Decimal('0.1')); ints and 1e-1 spellings are accepted."""
    path = write(tmp_path, "version: 1\nmodels:\n  m: {input: 0.1, cached_input: 1e-2, output: 3}\n")
    rates = PriceTable.from_file(path).rates("m")
    assert rates is not None
    assert (rates.input, rates.cached_input, rates.output) == (Decimal("0.1"), Decimal("0.01"), Decimal(3))


def test_empty_models_mapping_is_allowed(tmp_path: Path) -> None:
    """A file with no model entries is valid and leaves the built-in prices."""
    table = PriceTable.from_file(write(tmp_path, "version: 1\nmodels: {}\n"))
    assert table.rates("gpt-4o") is not None


GOOD_ENTRY = "version: 1\nmodels:\n  gpt-4o:\n"

BAD_FILES = [
    # (id, file text, the message after "<path>:")
    (
        "invalid-yaml",
        "version: 1\nmodels: [1,\n",
        "3: invalid YAML: while parsing a flow node, did not find expected node content",
    ),
    (
        "two-documents",
        "version: 1\n---\nversion: 1\n",
        "2: invalid YAML: expected a single document in the stream, but found another document",
    ),
    (
        "empty-file",
        "",
        " the file is empty, expected a mapping with keys 'version', 'models', 'hosts' and/or 'tool_fees'",
    ),
    (
        "top-level-list",
        "- version\n",
        "1: expected a mapping with keys 'version', 'models', 'hosts' and/or 'tool_fees', got a list",
    ),
    (
        "top-level-scalar",
        "hello\n",
        "1: expected a mapping with keys 'version', 'models', 'hosts' and/or 'tool_fees', got a string of 5 "
        "characters",
    ),
    (
        "unknown-top-level-key",
        "version: 1\nmodels: {}\nprices: {}\n",
        "3: prices: unknown key; valid keys: version, models",
    ),
    ("missing-version", "models: {}\n", "1: missing required key 'version' (the format, 1)"),
    (
        "missing-models",
        "version: 1\n",
        "1: missing key 'models' (rates per model), 'hosts' (prices per host) or 'tool_fees' (built-in "
        "tools' fees per use)",
    ),
    ("wrong-version", "version: 2\nmodels: {}\n", "1: version: expected 1, got 2"),
    ("string-version", "version: '1'\nmodels: {}\n", "1: version: expected 1, got '1'"),
    ("bool-version", "version: true\nmodels: {}\n", "1: version: expected 1, got True"),
    (
        "models-not-mapping",
        "version: 1\nmodels: [gpt-4o]\n",
        "2: models: expected a mapping of model name to its rates, got a list",
    ),
    (
        "entry-not-mapping",
        "version: 1\nmodels:\n  gpt-4o: 2.5\n",
        "3: models.gpt-4o: expected a mapping with keys input, cached_input, cache_write, input_audio, "
        "cached_input_audio, input_image, cached_input_image, output, output_audio, long_context, "
        "service_tiers (USD per 1M tokens), got 2.5",
    ),
    (
        "unknown-entry-key",
        GOOD_ENTRY + "    input: 1\n    output: 2\n    cache_read: 1\n",
        "6: models.gpt-4o.cache_read: unknown key; the rate meant is 'cached_input'",
    ),
    (
        "unknown-entry-key-like-ours",
        GOOD_ENTRY + "    input: 1\n    output: 2\n    audio_in: 1\n",
        "6: models.gpt-4o.audio_in: unknown key; valid keys: input, cached_input, cache_write, input_audio, "
        "cached_input_audio, input_image, cached_input_image, output, output_audio",
    ),
    (
        "missing-output",
        GOOD_ENTRY + "    input: 1\n",
        "4: models.gpt-4o: missing required key 'output' (USD per 1M output tokens)",
    ),
    (
        "missing-input",
        GOOD_ENTRY + "    output: 1\n",
        "4: models.gpt-4o: missing required key 'input' (USD per 1M input tokens)",
    ),
    (
        "comma-decimal",
        GOOD_ENTRY + "    output: 10\n    input: 2,50\n",
        "5: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens, got '2,50'",
    ),
    (
        "quoted-number",
        GOOD_ENTRY + "    input: '2.5'\n    output: 10\n",
        "4: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens, got '2.5'",
    ),
    (
        "negative",
        GOOD_ENTRY + "    input: 1\n    output: -10\n",
        "5: models.gpt-4o.output: expected a non-negative number of USD per 1M tokens, got -10",
    ),
    (
        "nan",
        GOOD_ENTRY + "    input: .nan\n    output: 1\n",
        "4: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens, got nan",
    ),
    (
        "infinite",
        GOOD_ENTRY + "    input: 1\n    output: .inf\n",
        "5: models.gpt-4o.output: expected a non-negative number of USD per 1M tokens, got inf",
    ),
    (
        "bool",
        GOOD_ENTRY + "    input: yes\n    output: 1\n",
        "4: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens, got True",
    ),
    (
        "null",
        GOOD_ENTRY + "    input: 1\n    output:\n",
        "5: models.gpt-4o.output: expected a non-negative number of USD per 1M tokens, got None",
    ),
    (
        "list-value",
        GOOD_ENTRY + "    input: [1]\n    output: 1\n",
        "4: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens, got a list",
    ),
    (
        "absurd-rate",
        GOOD_ENTRY + "    input: 1e9\n    output: 1\n",
        "4: models.gpt-4o.input: expected a non-negative number of USD per 1M tokens (at most 1000000), "
        "got '1e9'",
    ),
    ("empty-model-name", "version: 1\nmodels:\n  '': {input: 1, output: 1}\n", "3: models: keys must be"),
    ("blank-model-name", "version: 1\nmodels:\n  '  ': {input: 1, output: 1}\n", "3: models: keys must be"),
    (
        "numeric-model-name",
        "version: 1\nmodels:\n  123: {input: 1, output: 1}\n",
        "3: models: keys must be non-empty names (quote them), got 123",
    ),
    (
        "duplicate-model",
        "version: 1\nmodels:\n  m: {input: 1, output: 1}\n  m: {input: 2, output: 2}\n",
        "4: models.m: duplicate key (first on line 3)",
    ),
    (
        "python-tag-on-value",
        GOOD_ENTRY + "    input: !!python/object/apply:os.getpid []\n    output: 1\n",
        "4: models.gpt-4o.input: YAML tag '!!python/object/apply:os.getpid' is not allowed",
    ),
    (
        "python-tag-on-entry",
        "version: 1\nmodels:\n  m: !!python/object:collections.OrderedDict {input: 1, output: 1}\n",
        "3: models.m: YAML tag '!!python/object:collections.OrderedDict' is not allowed",
    ),
    (
        "local-tag",
        GOOD_ENTRY + "    input: !usd 1\n    output: 1\n",
        "4: models.gpt-4o.input: YAML tag '!usd'",
    ),
    ("set-tag", "version: 1\nmodels: !!set {a}\n", "2: models: YAML tag '!!set' is not allowed"),
    (
        "per-token-rates",  # litellm's unit: 1,000,000 times too cheap here
        GOOD_ENTRY + "    input: 0.0000025\n    output: 1e-5\n",
        "4: models.gpt-4o: input 0.0000025 and output 1e-5 USD per 1M tokens look like USD per token; "
        "rates here are USD per 1M tokens (input: 2.5, output: 10), or 0 for free",
    ),
    (
        "per-token-tier-rates",
        GOOD_ENTRY
        + "    input: 1\n    output: 2\n    long_context:\n      - {above: 1000, input: 2e-6, output: 0}\n",
        "7: models.gpt-4o.long_context[0]: input 2e-6 and output 0 USD per 1M tokens look like USD per "
        "token; rates here are USD per 1M tokens (input: 2, output: 0), or 0 for free",
    ),
    (
        "same-model-in-other-case",
        "version: 1\nmodels:\n  gpt-4o: {input: 1, output: 2}\n  GPT-4o: {input: 3, output: 4}\n",
        "4: models.GPT-4o: the same model as 'gpt-4o' (line 3) but for case, which matching ignores; "
        "keep one entry",
    ),
    (
        "same-host-in-other-case",
        "version: 1\nhosts:\n  gw.internal: {provider: groq}\n  GW.Internal: {provider: openai}\n",
        "4: hosts.GW.Internal: the same host pattern as 'gw.internal' (line 3) but for case, which "
        "matching ignores; keep one entry",
    ),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_price_file_names_file_line_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    """Every kind of bad price file raises PriceFileError naming the file, line, key path and bad value."""
    path = write(tmp_path, text)
    with pytest.raises(PriceFileError) as excinfo:
        PriceTable.from_file(path)
    assert str(excinfo.value).startswith(f"{path}:{message}")
    # No YAML/KeyError/TypeError traceback chained underneath.
    error = excinfo.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_missing_price_file(tmp_path: Path) -> None:
    """A missing price file is one PriceFileError, wherever it is named: the path, then how to create it
    or do without it (configure() says which setting to drop: tests/test_ledger_config.py)."""
    path = tmp_path / "nope.yaml"
    message = (
        f"{path}: price file not found; create it (version: 1, and models: with each model's input and "
        "output USD per 1M tokens; docs/PRICING.md), or give no price file to use genai-prices alone"
    )
    with pytest.raises(PriceFileError) as excinfo:
        PriceTable.from_file(path)
    assert str(excinfo.value) == message
    with pytest.raises(PriceFileError) as excinfo:
        llm_ledger.LLMCallMonitor(logger=None, prices=path)
    assert str(excinfo.value) == message


def test_unreadable_price_files(tmp_path: Path) -> None:
    """A directory or non-UTF-8 bytes where the price file should be give a PriceFileError, not OSError."""
    with pytest.raises(PriceFileError, match="is a directory"):
        PriceTable.from_file(tmp_path)
    path = tmp_path / "prices.yaml"
    path.write_bytes(b"version: 1\nmodels: {\xff: 1}\n")
    with pytest.raises(PriceFileError, match="not UTF-8 text"):
        PriceTable.from_file(path)
    path.write_text("version: 1\nmodels:\n  m\x00: {}\n", encoding="utf-8")
    with pytest.raises(
        PriceFileError, match=r"prices\.yaml:3: invalid YAML: control characters are not allowed"
    ):
        PriceTable.from_file(path)


def test_python_object_tag_executes_nothing(tmp_path: Path) -> None:
    """A !!python/object/apply tag that would run a command is refused before anything is constructed."""
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    for text in (
        f"{payload}\n",
        f"version: 1\nmodels: {payload}\n",
        f"version: 1\nmodels:\n  m:\n    input: {payload}\n    output: 1\n",
        f"version: 1\nmodels:\n  ? {payload}\n  : {{input: 1, output: 1}}\n",
    ):
        with pytest.raises(
            PriceFileError, match=r"YAML tag '!!python/object/apply:os\.system' is not allowed"
        ):
            PriceTable.from_file(write(tmp_path, text))
    assert not marker.exists()


def test_record_and_lens_costs_are_exact_sums_rounded_once() -> None:
    """Each record's USD floats and a lens's total are the exact Decimal costs, rounded once to float."""
    from llm_ledger._records import LensTotals, call_record
    from tests.report_helpers import usage

    table = PriceTable({"m": Rates("m", Decimal("0.1"), Decimal("0.3"), Decimal("0.07"), "test")})
    totals = LensTotals()
    exact_total = Decimal(0)
    float_sum = 0.0
    usages = [(7, 3, 0), (1_000_003, 17, 999_999), (3, 1_000_000, 1)] * 50
    for prompt, completion, cached in usages:
        counts = usage(prompt, completion, cached)
        units = table.route()._costs("m", counts)  # as the monitor prices a call's usage
        exact = table.cost("m", prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
        assert units is not None and exact is not None
        record = call_record(
            status="ok",
            operation="chat",
            context={},
            request={"model": "m"},  # type: ignore[typeddict-item]
            response={"model": "m"},  # type: ignore[typeddict-item]
            usage=counts,
            start_epoch=1_732_000_000.0,
            duration_s=0.25,
            ttft_s=None,
            prompt_cost_units=units[0],
            completion_cost_units=units[1],
            retries=0,
            error=None,
            cost_source=units[2],
        )
        assert record["cost"] == {
            "prompt_cost_usd": float(exact.prompt_cost_usd),
            "completion_cost_usd": float(exact.completion_cost_usd),
            "total_cost_usd": float(exact.total_cost_usd),
            "source": "test",
            "matched_by": "model",
            "computed_usd": None,
            "priced_at": None,
            "left_out": None,
            "tool_fees_usd": None,
        }
        totals.add(record, units[0] + units[1])
        exact_total += exact.total_cost_usd
        float_sum += float(exact.total_cost_usd)
    assert totals.summary(1.0)["total_cost_usd"] == float(exact_total)
    assert float_sum != float(exact_total)  # what summing the records' floats would have drifted to
