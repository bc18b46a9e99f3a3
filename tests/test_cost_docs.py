"""docs/PRICING.md as a user reads it: its price file loads and prices as it says, its Python example runs,
its table of providers is what the ledger records, its error examples are what a mistake prints."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llm_ledger import LLMCallMonitor, PriceFileError, PriceTable
from llm_ledger._servers import detect_provider, otel_provider_name
from llm_ledger.testing import capture
from tests.conftest import Sdk

DOC = (Path(__file__).parent.parent / "docs" / "PRICING.md").read_text()


def block(language: str, after: str) -> str:
    """The first ``language`` code block of the doc after the heading ``after``."""
    found = re.search(rf"```{language}\n(.*?)```", DOC[DOC.index(after) :], re.S)
    assert found is not None
    return found.group(1)


def test_the_price_file_example_loads_and_prices_as_described(tmp_path: Path) -> None:
    """Each host of the example is priced the way its comment says; the model pattern prices fine-tunes."""
    path = tmp_path / "prices.yaml"
    path.write_text(block("yaml", "## Mapping hosts in the price file"))
    table = PriceTable.from_file(path)
    ollama = table.route("localhost", 11434)
    assert (ollama.provider, ollama.matched_by) == ("ollama", "host")
    free = ollama.cost("llama3.3", prompt_tokens=1_000, completion_tokens=1_000)
    assert free is not None and free.total_cost_usd == 0
    vllm = table.route("gpu-7.vllm.internal.example.com", 443)
    assert vllm.provider == "self-hosted"
    assert table.route("llm-gateway.internal", 443).provider == "openrouter"
    assert table.route("10.0.0.12", 8000).provider == "together"
    assert table.route("10.0.0.12", 9000).matched_by == "model"
    tuned = table.cost("ft:gpt-4o-mini:acme:abc123", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert tuned is not None and tuned.total_cost_usd == Decimal("1.50")


def test_the_python_example_runs_and_prints_what_it_shows() -> None:
    """The Python example builds a monitor, and its cost line gives the figure the comment shows."""
    code = block("python", "In Python, rates are")
    namespace: dict[str, object] = {}
    lines = code.splitlines()
    exec("\n".join(lines[:-2]), namespace)
    shown = lines[-1].removeprefix("# ")
    assert repr(eval(lines[-2], namespace)) == shown


def test_the_providers_table_is_what_is_recorded() -> None:
    """Every base URL in the table is recorded as the provider, and exported under the OTel name, shown."""
    rows = re.findall(r"^\| `(https://[^`]+)` \| `([^`]+)` \| `([^`]+)` \|$", DOC, re.M)
    assert len(rows) >= 10
    for url, provider, otel in rows:
        assert detect_provider(url.replace("...", "v1beta/openai/")) == provider, url
        assert otel_provider_name(provider) == otel, provider


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        (
            '"http://vllm.internal": {input: 0.05, output: 0.05}',
            "hosts.http://vllm.internal: not a host pattern",
        ),
        (
            "gw.internal: {provider: grok}",
            "hosts.gw.internal.provider: unknown provider 'grok' (did you mean",
        ),
    ],
)
def test_the_error_examples_are_what_a_mistake_prints(tmp_path: Path, entry: str, shown: str) -> None:
    """The doc's error lines start as the real messages do (file and line, key, what is wrong)."""
    path = tmp_path / "prices.yaml"
    path.write_text(f"version: 1\nhosts:\n  {entry}\n")
    with pytest.raises(PriceFileError) as error:
        PriceTable.from_file(path)
    message = str(error.value).replace(str(path), "prices.yaml").replace(":3:", ":N:")
    assert message.startswith(f"prices.yaml:N: {shown}")
    assert shown in DOC


TIERS_HEADING = "### Long-context tiers and service tiers in the price file"


def test_the_tiers_example_prices_as_described(tmp_path: Path) -> None:
    """The long-context and service-tier example costs the figures the doc gives for it."""
    path = tmp_path / "prices.yaml"
    path.write_text(block("yaml", TIERS_HEADING))
    table = PriceTable.from_file(path)
    gemini = [
        table.cost("gemini-2.5-pro", prompt_tokens=prompt, cached_tokens=50_000, completion_tokens=10_000)
        for prompt in (200_000, 200_001)
    ]
    mini = [
        table.cost(
            "gpt-5-mini",
            prompt_tokens=10_000,
            cached_tokens=2_000,
            completion_tokens=4_000,
            service_tier=tier,
        )
        for tier in ("flex", "default", "fast")
    ]
    shown = [f"${cost.total_cost_usd}" for cost in gemini + mini if cost is not None]
    assert shown == ["$0.235", "$0.430002", "$0.005025", "$0.01005", "$0.01005"]
    section = DOC[DOC.index(TIERS_HEADING) : DOC.index("In Python, rates are")]
    assert all(figure in section for figure in shown)


@pytest.mark.parametrize(
    ("mistake", "line"),
    [
        (("above: 200000", "above: 200k"), "long_context[0].above: expected a whole number"),
        (("cached_input: 0.2, ", ""), "long_context[0]: missing required key 'cached_input'"),
        (("flex:", "flx:"), "service_tiers.flx: unknown service tier (did you mean 'flex'?)"),
    ],
)
def test_the_tiers_error_examples_are_what_the_mistakes_print(
    tmp_path: Path, mistake: tuple[str, str], line: str
) -> None:
    """Each error the tiers section shows is what that mistake in its example prints, line number included."""
    path = tmp_path / "prices.yaml"
    path.write_text(block("yaml", TIERS_HEADING).replace(*mistake))
    with pytest.raises(PriceFileError) as error:
        PriceTable.from_file(path)
    message = str(error.value).replace(str(path), "prices.yaml")
    shown = re.search(r"```\n(prices\.yaml:.*?)```", DOC[DOC.index(TIERS_HEADING) :], re.S)
    assert shown is not None
    errors = " ".join(shown.group(1).split())  # the doc wraps them
    assert line in message
    assert " ".join(message.split()) in errors


FEES_HEADING = "### Built-in tools billed per use"


def test_the_tool_fees_example_prices_as_described(tmp_path: Path, sdk: Sdk) -> None:
    """gpt-4.1's two web searches cost its own fee and its two file searches the catch-all's, as the
    section says; a dated search model finds its entry."""
    path = tmp_path / "prices.yaml"
    path.write_text(block("yaml", FEES_HEADING))
    monitor = LLMCallMonitor(logger=None, prices=path)
    client = sdk(monitor)
    tools: Any = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]
    hi: Any = [{"role": "user", "content": "hi"}]
    with capture(monitor) as records:
        client.responses.create(
            model="gpt-4.1", input="hi", tools=tools, extra_headers={"x-fake-tool-uses": "2"}
        )
        client.chat.completions.create(
            model="gpt-4o-mini-search-preview", messages=hi, extra_headers={"x-fake-served-model": "dated"}
        )
    fees = [f"${Decimal(repr(r['cost']['tool_fees_usd']))}" for r in records.calls]
    assert fees == ["$0.055", "$0.0275"]
    section = DOC[DOC.index(FEES_HEADING) : DOC.index("### Thinking tokens")]
    assert "add $0.055" in section
    assert "$0.025 and its file searches\n  $0.0025" in section


@pytest.mark.parametrize(
    ("mistake", "line"),
    [
        (("{web_search: 0.01,", "{web_serch: 0.01,"), "5: tool_fees.*.web_serch: unknown key"),
        (
            ("{web_search: 0.025}", "{web_search: 25}"),
            "4: tool_fees.gpt-4.1*.web_search: 25 USD per use looks",
        ),
        (
            ("file_search: 0.0025", "file_search: -0.0025"),
            "5: tool_fees.*.file_search: expected a non-negative",
        ),
    ],
)
def test_the_tool_fees_error_examples_are_what_the_mistakes_print(
    tmp_path: Path, mistake: tuple[str, str], line: str
) -> None:
    """Each error the tool fees section shows is what that mistake in its example prints."""
    path = tmp_path / "prices.yaml"
    path.write_text(block("yaml", FEES_HEADING).replace(*mistake))
    with pytest.raises(PriceFileError) as error:
        PriceTable.from_file(path)
    message = str(error.value).replace(str(path), "prices.yaml")
    shown = re.search(r"```\n(prices\.yaml:.*?)```", DOC[DOC.index(FEES_HEADING) :], re.S)
    assert shown is not None
    assert line in message
    assert " ".join(message.split()) in " ".join(shown.group(1).split())
