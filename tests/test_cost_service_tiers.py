"""Service tiers: a call served on OpenAI's flex or priority tier costs that tier's price (the response's
``service_tier``, recorded as ``response.service_tier``), live, streamed or not, and when a log is
repriced, as genai-prices prices it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from llm_ledger import PriceTable, Rates, price
from llm_ledger._cli import main
from llm_ledger.testing import Captured
from tests.cost_helpers import assert_repriced_unchanged, genai_usd

HI: Any = [{"role": "user", "content": "summarise the quarterly numbers " * 40}]


@pytest.mark.parametrize(
    ("model", "usage", "tier", "usd"),
    [
        # research/cost.md case 10: gpt-5-mini, P=10,000, O=4,000 (litellm's _flex and _priority keys)
        ("gpt-5-mini", (10_000, 0, 4_000), None, "0.0105"),
        ("gpt-5-mini", (10_000, 0, 4_000), "default", "0.0105"),
        ("gpt-5-mini", (10_000, 0, 4_000), "flex", "0.00525"),
        ("gpt-5-mini", (10_000, 0, 4_000), "priority", "0.0189"),
        # case 8: o4-mini flex, cached at genai-prices' (and Langfuse's) $0.138, not half of $0.275
        ("o4-mini", (3_000, 1_024, 2_000), "flex", "0.005628112"),
        ("o4-mini-2025-04-16", (3_000, 1_024, 2_000), "flex", "0.005628112"),
        # a tier with no price of its own (Scale Tier, a new name) costs the standard price
        ("o4-mini", (3_000, 1_024, 2_000), "scale", "0.0112552"),
    ],
)
def test_a_tier_costs_its_own_price(
    model: str, usage: tuple[int, int, int], tier: str | None, usd: str
) -> None:
    """The worked cases of research/cost.md, flex halving and priority raising the standard price."""
    prompt, cached, completion = usage
    cost = price(
        model, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion, service_tier=tier
    )
    assert cost is not None
    assert cost.total_cost_usd == Decimal(usd)


def test_every_openai_tier_price_matches_genai_prices() -> None:
    """For every OpenAI model with prices per tier, each tier's cost is genai-prices' own figure."""
    from genai_prices.data import providers

    openai_models = next(p for p in providers if p.id == "openai").models
    usage = {"prompt_tokens": 300_000, "cached_tokens": 100_000, "completion_tokens": 20_000}
    checked = 0
    for info in openai_models:
        for tier in sorted(
            {v.when["service_tier"] for v in info.price_variants or () if "service_tier" in v.when}
        ):
            cost = PriceTable().cost(
                info.id,
                prompt_tokens=300_000,
                cached_tokens=100_000,
                completion_tokens=20_000,
                service_tier=tier,
            )
            if cost is None:  # not priced per token (images, audio): not ours to price
                continue
            assert cost.total_cost_usd == genai_usd(info.id, usage, tier=tier), (info.id, tier)
            checked += 1
    assert checked >= 60


def test_azure_borrows_openais_standard_price_only() -> None:
    """As in genai-prices, OpenAI's tier prices are not Azure's: an Azure call is priced at the
    standard rate whatever its tier."""
    cost = PriceTable().cost(
        "gpt-4o", prompt_tokens=1_000, completion_tokens=500, provider="azure", service_tier="priority"
    )
    assert cost is not None
    assert cost.total_cost_usd == Decimal("0.0075")


def test_a_price_file_rate_holds_on_every_tier() -> None:
    """A rate of your own (negotiated) is the call's price, whatever tier served it."""
    table = PriceTable({"gpt-5-mini": Rates("gpt-5-mini", Decimal(1), Decimal(2))})
    costs = {
        tier: table.cost("gpt-5-mini", prompt_tokens=1_000_000, completion_tokens=0, service_tier=tier)
        for tier in (None, "flex", "priority")
    }
    assert {cost.total_cost_usd for cost in costs.values() if cost} == {Decimal(1)}


def _call(client: openai.OpenAI, api: str, tier: Any, stream: bool) -> None:
    if api == "chat":
        answer: Any = client.chat.completions.create(
            model="gpt-5-mini",
            messages=HI,
            service_tier=tier,
            stream=stream,
            extra_headers={"x-fake-reasoning-tokens": "900"},
        )
    else:
        answer = client.responses.create(
            model="gpt-5-mini",
            input=HI[0]["content"],
            service_tier=tier,
            stream=stream,
            extra_headers={"x-fake-reasoning-tokens": "900"},
        )
    if stream:
        for _ in answer:
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_calls_on_flex_and_priority_are_recorded_at_their_tiers_price_and_reprice_agrees(
    client: openai.OpenAI,
    records: Captured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    api: str,
    stream: bool,
) -> None:
    """The same call on the default, flex and priority tiers through the real SDK: each record names its
    tier and costs genai-prices' price for it (flex half the default, priority more); the report sums
    them by tier, and repricing the log with nothing changed finds no change."""
    for tier in ("default", "flex", "priority"):
        _call(client, api, tier, stream)
    costs = {}
    for record, tier in zip(records.calls, ("default", "flex", "priority"), strict=True):
        assert record["response"]["service_tier"] == tier
        assert record["cost"]["source"].startswith("genai-prices")
        costs[tier] = Decimal(repr(record["cost"]["total_cost_usd"]))
        assert costs[tier] == genai_usd("gpt-5-mini", record["usage"], tier=tier)
    assert costs["flex"] * 2 == costs["default"] < costs["priority"]

    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert main(["report", str(log), "--by", "response.service_tier", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    by_tier = {row["key"]["response.service_tier"]: Decimal(repr(row["cost_usd"])) for row in rows}
    assert by_tier == costs
    assert_repriced_unchanged(log, capsys)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_fast_mode_is_answered_and_priced_as_priority_and_ultrafast_as_itself(
    client: openai.OpenAI, records: Captured, api: str
) -> None:
    """As the API answers (the SDK's ``service_tier`` docs): a call asking for ``fast`` is served, and
    answered, as ``priority``, so its record costs the priority price; ``ultrafast`` is answered as
    itself and costs genai-prices' ultrafast price, above the default one."""
    for tier in ("priority", "fast"):
        _call(client, api, tier, stream=False)
    asked_priority, asked_fast = records.calls
    assert asked_fast["response"]["service_tier"] == "priority"
    assert asked_fast["cost"]["total_cost_usd"] == asked_priority["cost"]["total_cost_usd"]
    usage = asked_fast["usage"]
    assert Decimal(repr(asked_fast["cost"]["total_cost_usd"])) == genai_usd(
        "gpt-5-mini", usage, tier="priority"
    )

    body: Any = {
        "model": "gpt-6.2-sol",
        "service_tier": "ultrafast",
        "extra_headers": {"x-fake-reasoning-tokens": "9"},
    }
    if api == "chat":
        client.chat.completions.create(messages=HI, **body)
    else:
        client.responses.create(input=HI[0]["content"], **body)
    ultrafast = records.calls[-1]
    assert ultrafast["response"]["service_tier"] == "ultrafast"
    usd = Decimal(repr(ultrafast["cost"]["total_cost_usd"]))
    assert usd == genai_usd("gpt-6.2-sol", ultrafast["usage"], tier="ultrafast")
    assert usd > genai_usd("gpt-6.2-sol", ultrafast["usage"])
