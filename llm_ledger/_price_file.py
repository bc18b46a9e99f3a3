"""Price files (docs/PRICING.md): a YAML file read and checked into the model :class:`Rates`,
:class:`HostPrice` and built-in tool fee entries of a :class:`~llm_ledger.PriceTable`
(``PriceTable.from_file``); each mistake is a :class:`PriceFileError` naming the file, line, key path
and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Final

import yaml

from llm_ledger._errors import PriceFileError
from llm_ledger._extract import TOOL_KINDS
from llm_ledger._rates import (
    MAX_RATE,
    PRICE_FILE_SOURCE,
    RATE_FIELDS,
    HostPrice,
    Rates,
    _genai_provider,
    host_matcher,
    provider_error,
    same_name,
    service_tier_error,
    service_tiers,
)
from llm_ledger.loading import Document, join, read_file

__all__ = ["load_price_file"]

_RATE_MEANINGS: Final = {
    "input": "USD per 1M input tokens",
    "cached_input": "USD per 1M cached input tokens",
    "cache_write": "USD per 1M input tokens written to the cache",
    "input_audio": "USD per 1M audio input tokens",
    "cached_input_audio": "USD per 1M cached audio input tokens",
    "input_image": "USD per 1M image input tokens",
    "cached_input_image": "USD per 1M cached image input tokens",
    "output": "USD per 1M output tokens",
    "output_audio": "USD per 1M audio output tokens",
}
_MODEL_KEYS: Final = (*RATE_FIELDS, "long_context", "service_tiers")
_HOST_KEYS: Final = ("provider", *_MODEL_KEYS)
_LONG_CONTEXT_KEYS: Final = ("above", *RATE_FIELDS)
_SERVICE_TIER_KEYS: Final = (*RATE_FIELDS, "long_context")
# other tools' names for our keys (litellm's, genai-prices'), some of which look like another key of ours
_KEYS_MEANT: Final = {
    "cache_read": "cached_input",
    "cache_audio_read": "cached_input_audio",
    "cache_image_read": "cached_input_image",
    "cache_creation": "cache_write",
    "tiers": "long_context",
    "service_tier": "service_tiers",
    "start": "above",
    "threshold": "above",
}
_MODEL_EXPECTED: Final = f"a mapping with keys {', '.join(_MODEL_KEYS)} (USD per 1M tokens)"
_HOST_EXPECTED: Final = (
    f"a mapping with 'provider' (a provider's rates) and/or rates {', '.join(map(repr, _MODEL_KEYS))} "
    "(USD per 1M tokens, for every model)"
)
_RATE_EXPECTED: Final = "a non-negative number of USD per 1M tokens"
_TIER_EXPECTED: Final = "a mapping with 'above' (prompt tokens) and the tier's rates"
_TIERS_EXPECTED: Final = f"a list of tiers, each {_TIER_EXPECTED}"
_ABOVE_EXPECTED: Final = (
    "a whole number of prompt tokens above 0 (e.g. 200000: its rates apply to calls with more)"
)
_MAX_ABOVE: Final = Decimal(10**9)
# Input and output rates both under this are prices per token (litellm's unit), not per 1M tokens: the
# cheapest rate genai-prices lists is $0.0011 per 1M, the dearest per token $0.0006 (o1-pro's output).
_LEAST_RATE: Final = Decimal("0.0001")
_FEE_EXPECTED: Final = "a non-negative number of USD per use"
_FEES_EXPECTED: Final = f"a mapping of built-in tool kind ({', '.join(TOOL_KINDS)}) to its fee in USD per use"
# A fee from this up is a price per 1,000 uses, as OpenAI's pricing page quotes them (web search $10 per
# 1k calls), not per use: the dearest per use it lists is a 64 GB code interpreter container's $1.92,
# the cheapest per 1k file search's $2.50.
_LEAST_FEE_PER_1K: Final = Decimal("2.5")


def load_price_file(
    path: str | os.PathLike[str], *, without: str = "give no price file"
) -> tuple[dict[str, Rates], dict[str, HostPrice], dict[str, dict[str, Decimal]]]:
    """The model rates, host prices and built-in tool fees (model name or pattern -> kind -> USD per
    use) of the price file at ``path``; ``without`` says how to do without one when it is missing
    (configure()'s "unset LLM_LEDGER_PRICE_FILE")."""
    if not isinstance(path, (str, os.PathLike)):
        raise PriceFileError(f"a price file is named by a path (str or os.PathLike), got {path!r}")
    name = os.fspath(path)
    doc = Document(name, PriceFileError, "a price file")
    hint = (
        "; create it (version: 1, and models: with each model's input and output USD per 1M tokens; "
        f"docs/PRICING.md), or {without} to use genai-prices alone"
    )
    root = doc.compose(read_file(name, PriceFileError, "price file", hint=hint))
    expected_top = "a mapping with keys 'version', 'models', 'hosts' and/or 'tool_fees'"
    if root is None:
        raise PriceFileError(f"{name}: the file is empty, expected {expected_top}")
    sections = ("models", "hosts", "tool_fees")
    top = doc.fields(root, "", expected_top, ("version", *sections), {"version": "the format, 1"})
    version = top["version"]
    doc.check_tag(version, "version")
    if version.tag != "tag:yaml.org,2002:int" or doc.describe(version) != "1":
        raise doc.error(version, "version", f"expected 1, got {doc.describe(version)}")
    if not top.keys() & set(sections):
        raise doc.error(
            root,
            "",
            "missing key 'models' (rates per model), 'hosts' (prices per host) or 'tool_fees' (built-in "
            "tools' fees per use)",
        )

    lines: dict[str, tuple[str, str]] = {}  # each name as matched (lower case): as written, where

    def entries(section: str, expected: str, kind: str) -> Iterator[tuple[str, yaml.Node, yaml.Node, str]]:
        """The entries of ``section``, if given: each name once, whatever its case."""
        if section not in top:
            return
        for name, key_node, node in doc.mapping(top[section], section, expected):
            path = join(section, name)
            first = lines.setdefault(section + name.strip().lower(), (name, _line(key_node)))
            if first[0] != name:
                raise doc.error(key_node, path, same_name(kind, *first))
            yield name, key_node, node, path

    result: dict[str, Rates] = {}
    for model, _, node, path in entries("models", "a mapping of model name to its rates", "model"):
        result[model] = _rates(
            doc, node, path, model, _rate_fields(doc, node, path, _MODEL_EXPECTED, _MODEL_KEYS)
        )
    hosts: dict[str, HostPrice] = {}
    for pattern, key_node, node, path in entries(
        "hosts", "a mapping of host pattern to its provider or rates", "host pattern"
    ):
        try:
            host_matcher(pattern)
        except ValueError as exc:
            raise doc.error(key_node, path, str(exc)) from None
        hosts[pattern] = _host_price(doc, node, path, pattern)
    fees: dict[str, dict[str, Decimal]] = {}
    for model, _, node, path in entries(
        "tool_fees", "a mapping of model name or pattern to its built-in tools' fees", "model"
    ):
        fees[model] = _tool_fees(doc, node, path)
    return result, hosts, fees


def _line(node: yaml.Node) -> str:
    return f" (line {node.start_mark.line + 1})"


def _rate_fields(
    doc: Document,
    node: yaml.Node,
    entry_path: str,
    expected: str,
    keys: tuple[str, ...],
    required: dict[str, str] | None = None,
) -> dict[str, yaml.Node]:
    """The keys of an entry or tier; a key named as another tool names it is an error naming ours
    (``cache_read`` is ``cached_input``, not the ``cache_write`` it looks like; ``start`` is ``above``)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            meant = _KEYS_MEANT.get(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if meant in keys:
                what = "rate" if meant in RATE_FIELDS else "key"
                raise doc.error(
                    key_node, f"{entry_path}.{key_node.value}", f"unknown key; the {what} meant is {meant!r}"
                )
    return doc.fields(node, entry_path, expected, keys, required)


def _rates(
    doc: Document,
    node: yaml.Node,
    entry_path: str,
    label: str,
    fields: dict[str, yaml.Node],
    entry: tuple[str, ...] = (),
) -> Rates:
    """The rates in ``fields``, the checked keys of ``node``. A tier gives each rate its entry gives
    (``entry``): one it left out would be billed at the tier's own input or output rate."""
    for key in entry or ("input", "output"):
        if key not in fields:
            why = "" if key in ("input", "output") else ": its entry gives one, so each of its tiers must"
            raise doc.error(node, entry_path, f"missing required key {key!r} ({_RATE_MEANINGS[key]}){why}")
    rates = {
        key: doc.number(value, f"{entry_path}.{key}", _RATE_EXPECTED, maximum=MAX_RATE)
        for key, value in fields.items()
        if key in RATE_FIELDS
    }
    if 0 < max(rates["input"], rates["output"]) < _LEAST_RATE:
        written = " and ".join(f"{key} {fields[key].value}" for key in ("input", "output"))
        meant = ", ".join(f"{key}: {rates[key].scaleb(6).normalize():f}" for key in ("input", "output"))
        why = (
            f"{written} USD per 1M tokens look like USD per token; rates here are USD per 1M tokens ({meant})"
        )
        raise doc.error(node, entry_path, f"{why}, or 0 for free")
    given = tuple(key for key in RATE_FIELDS if key in rates)
    return Rates(
        label,
        source=PRICE_FILE_SOURCE,
        **rates,  # named as Rates' fields are (RATE_FIELDS); input and output are always given
        tiers=_long_context(doc, fields, entry_path, label, given),
        service_tiers=_service_tiers(doc, fields, entry_path, label, given),
    )


def _long_context(
    doc: Document, fields: dict[str, yaml.Node], entry_path: str, label: str, given: tuple[str, ...]
) -> tuple[tuple[int, Rates], ...]:
    """An entry's ``long_context``: a list of tiers in ascending order of ``above``, the prompt tokens past
    which a call costs the tier's rates (all of its tokens: a cliff, as genai-prices' tiered prices)."""
    if "long_context" not in fields:
        return ()
    node, key_path = fields["long_context"], f"{entry_path}.long_context"
    tiers: list[tuple[int, Rates]] = []
    for index, item in enumerate(doc.sequence(node, key_path, _TIERS_EXPECTED)):
        tier_path = f"{key_path}[{index}]"
        required = {"above": "the prompt tokens past which it applies"}
        keys = _rate_fields(doc, item, tier_path, _TIER_EXPECTED, _LONG_CONTEXT_KEYS, required)
        above_path = f"{tier_path}.above"
        above = int(doc.number(keys["above"], above_path, _ABOVE_EXPECTED, maximum=_MAX_ABOVE, whole=True))
        if above == 0:
            raise doc.error(keys["above"], above_path, f"expected {_ABOVE_EXPECTED}, got 0")
        if tiers and above <= tiers[-1][0]:
            why = (
                f"{above} is not above the previous tier's {tiers[-1][0]}: list the tiers in ascending order"
            )
            raise doc.error(keys["above"], above_path, why)
        tiers.append((above, _rates(doc, item, tier_path, label, keys, given)))
    return tuple(tiers)


def _service_tiers(
    doc: Document, fields: dict[str, yaml.Node], entry_path: str, label: str, given: tuple[str, ...]
) -> tuple[tuple[str, Rates], ...]:
    """An entry's ``service_tiers``: the rates of a call the response says a tier served (``flex``...)."""
    if "service_tiers" not in fields:
        return ()
    node, key_path = fields["service_tiers"], f"{entry_path}.service_tiers"
    expected = f"a mapping of service tier ({', '.join(service_tiers())}) to its rates"
    tiers: list[tuple[str, Rates]] = []
    for name, key_node, item in doc.mapping(node, key_path, expected):
        tier_path = join(key_path, name)
        if name not in service_tiers():
            raise doc.error(key_node, tier_path, service_tier_error(name, list(given)))
        rates_expected = f"a mapping with keys {', '.join(_SERVICE_TIER_KEYS)} (USD per 1M tokens)"
        keys = _rate_fields(doc, item, tier_path, rates_expected, _SERVICE_TIER_KEYS)
        tiers.append((name, _rates(doc, item, tier_path, label, keys, given)))
    return tuple(tiers)


def _tool_fees(doc: Document, node: yaml.Node, entry_path: str) -> dict[str, Decimal]:
    """A ``tool_fees`` entry: USD per use of each kind it prices (at least one)."""
    fields = doc.fields(node, entry_path, _FEES_EXPECTED, TOOL_KINDS)
    if not fields:
        raise doc.error(node, entry_path, f"expected {_FEES_EXPECTED}, got an empty mapping")
    fees: dict[str, Decimal] = {}
    for kind, value in fields.items():
        fee = fees[kind] = doc.number(value, f"{entry_path}.{kind}", _FEE_EXPECTED, maximum=MAX_RATE)
        if fee >= _LEAST_FEE_PER_1K:
            raise doc.error(
                value,
                f"{entry_path}.{kind}",
                f"{value.value} USD per use looks like USD per 1,000 uses (as OpenAI's pricing page "
                f"quotes them); fees here are USD per use ({kind}: {(fee / 1000).normalize():f})",
            )
    return fees


def _host_price(doc: Document, node: yaml.Node, entry_path: str, pattern: str) -> HostPrice:
    fields = _rate_fields(doc, node, entry_path, _HOST_EXPECTED, _HOST_KEYS)
    rates = _rates(doc, node, entry_path, pattern, fields) if fields.keys() & _MODEL_KEYS else None
    provider_node = fields.get("provider")
    provider = None
    if provider_node is not None:
        key_path = f"{entry_path}.provider"
        provider = doc.string(provider_node, key_path, "a provider name").strip()
        if rates is None and _genai_provider(provider) is None:
            fix = "or give rates (input, output) to price this host yourself"
            raise doc.error(provider_node, key_path, f"{provider_error(provider)}; {fix}")
    elif rates is None:
        raise doc.error(node, entry_path, f"expected {_HOST_EXPECTED}, got an empty mapping")
    return HostPrice(provider, rates)
