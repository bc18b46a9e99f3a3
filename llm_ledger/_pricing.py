"""What a call costs: USD rates per 1M tokens for OpenAI models, and the cost of one call's usage.

Built-in rates come from the data bundled with the ``genai-prices`` package (never fetched at run time);
a user price file (YAML, see :meth:`PriceTable.from_file`) overrides them.

Resolving a model name to its rates walks genai-prices' match rules, which is slow next to a call, so a
:class:`PriceTable` resolves each model name once and caches the answer (unknown names included); after
that :meth:`PriceTable.cost` is a handful of Decimal multiplications.

Token accounting follows OpenAI's ``usage``: ``cached_tokens`` are a subset of ``prompt_tokens`` and
reasoning tokens are inside ``completion_tokens``, so each token is billed exactly once. Only the standard
text rates are modelled: no batch/flex/priority tiers, no separate audio or image token rates, no
cache-write charges (OpenAI chat usage does not report cache writes).
"""

from __future__ import annotations

import decimal
import fnmatch
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Final

import yaml

from llm_ledger._errors import ConfigError, PriceFileError
from llm_ledger._records import USD_UNIT_DIGITS

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, TieredPrices

__all__ = ["Cost", "PriceTable", "Rates", "price"]

_DATE_SUFFIX: Final = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_PROVIDER_PREFIX: Final = "openai/"
_GLOB_CHARS: Final = frozenset("*?[")
# Resolved names kept per table; past this, new names are still resolved but no longer cached, so a
# stream of distinct bogus names cannot grow memory without bound.
_MAX_CACHED_NAMES: Final = 10_000
# Rates above this are certainly typos (a dollar per token) and would only risk Decimal overflow.
_MAX_RATE: Final = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Rates:
    """A model's prices in USD per 1,000,000 tokens.

    ``tiers`` holds long-context prices as ``(start, rates)`` pairs in ascending ``start`` order: when a
    call's ``prompt_tokens`` is strictly greater than ``start``, the tier's rates apply to *all* of that
    call's tokens (a cliff, as OpenAI bills gpt-5.4 above 272k prompt tokens). The highest tier passed wins.
    """

    model: str
    """The name that matched: the genai-prices model id, or the price file's key (a name or a pattern)."""
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    """``None`` when cached prompt tokens are billed at the ``input`` rate."""
    source: str
    """``"genai-prices <version>"`` or ``"price file <path>"``."""
    tiers: tuple[tuple[int, Rates], ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("input", "output", "cached_input"):
            value = getattr(self, field_name)
            if value is None and field_name == "cached_input":
                continue
            if not (isinstance(value, Decimal) and value.is_finite() and 0 <= value <= _MAX_RATE):
                raise ConfigError(
                    f"Rates({self.model!r}).{field_name}: expected a finite Decimal between 0 and "
                    f"{_MAX_RATE} USD per 1M tokens, got {value!r}"
                )
        previous = -1
        for start, tier in self.tiers:
            if type(start) is not int or start <= previous or not isinstance(tier, Rates) or tier.tiers:
                raise ConfigError(
                    f"Rates({self.model!r}).tiers: expected (start, Rates) pairs with int starts in "
                    f"ascending order and no nested tiers, got {self.tiers!r}"
                )
            previous = start


@dataclass(frozen=True, slots=True)
class Cost:
    """The USD cost of one call, split the way OpenAI bills it."""

    prompt_cost_usd: Decimal
    """Uncached plus cached prompt tokens."""
    completion_cost_usd: Decimal
    """Completion tokens, reasoning tokens included (they are part of ``completion_tokens``)."""
    total_cost_usd: Decimal


_MISSING: Final = object()
# Our own context, so the caller's decimal context (a low precision, traps) cannot round or break prices;
# 60 digits keep every conversion between rates, units and USD exact.
_CONTEXT: Final = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)

# Calls are priced in integers of 10**-24 USD (USD_UNITS per dollar): a rate of up to 18 decimals per
# 1M tokens is a whole number of units per token, so costs and their sums are exact, as with Decimal,
# at a fraction of its cost on the path of every call.
# (input, cached input, output) in units per token; the cached rate is already defaulted.
_PerToken = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Entry:
    rates: Rates
    base: _PerToken
    tiers_desc: tuple[tuple[int, _PerToken], ...]  # highest start first, so the first hit is the tier


def _units(rate_per_mtok: Decimal) -> int:
    # rates with more than 18 decimals per 1M tokens round to the nearest 10**-24 USD per token
    return int(_CONTEXT.scaleb(rate_per_mtok, USD_UNIT_DIGITS - 6).to_integral_value(context=_CONTEXT))


def _per_token(rates: Rates) -> _PerToken:
    inp = _units(rates.input)
    cached = inp if rates.cached_input is None else _units(rates.cached_input)
    return inp, cached, _units(rates.output)


def _compile(rates: Rates) -> _Entry:
    tiers = tuple((start, _per_token(tier)) for start, tier in reversed(rates.tiers))
    return _Entry(rates, _per_token(rates), tiers)


def _usd(units: int) -> Decimal:
    # the exact value, written with no trailing zeros: Decimal('0.017'), Decimal('100')
    usd = _CONTEXT.scaleb(Decimal(units), -USD_UNIT_DIGITS).normalize(_CONTEXT)
    exponent = usd.as_tuple().exponent
    return usd.quantize(_ONE, context=_CONTEXT) if isinstance(exponent, int) and exponent > 0 else usd


class PriceTable:
    """Rates per model: user overrides first, then genai-prices' bundled OpenAI prices.

    ``overrides`` maps an exact model name, or a glob pattern such as ``"ft:gpt-4o-mini:*"``, to its
    :class:`Rates`. Exact names win over patterns, patterns are tried in mapping order, and every
    override wins over the built-in prices. ``builtin=False`` leaves only the overrides.

    A name is tried as given, then without an ``openai/`` prefix, then without a ``-YYYY-MM-DD`` snapshot
    suffix, so ``gpt-4o-2024-08-06`` finds an override for ``gpt-4o``.
    """

    def __init__(self, overrides: Mapping[str, Rates] | None = None, *, builtin: bool = True) -> None:
        self._exact: dict[str, Rates] = {}
        self._patterns: list[tuple[re.Pattern[str], Rates]] = []
        self._builtin = builtin
        self._cache: dict[str, _Entry | None] = {}
        for name, rates in (overrides or {}).items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"price overrides: model name must be a non-empty string, got {name!r}")
            if not isinstance(rates, Rates):
                raise ConfigError(f"price overrides[{name!r}]: expected a Rates, got {rates!r}")
            if _GLOB_CHARS.isdisjoint(name):
                self._exact[name] = rates
            else:
                self._patterns.append((re.compile(fnmatch.translate(name)), rates))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, builtin: bool = True) -> PriceTable:
        """Build a table whose overrides come from a YAML price file.

        The file looks like::

            version: 1
            models:
              gpt-4o:                 # an exact model name, or a glob pattern such as "my-model-*"
                input: 2.50           # USD per 1M input tokens (required)
                cached_input: 1.25    # USD per 1M cached input tokens (optional; default: input)
                output: 10.00         # USD per 1M output tokens (required)

        Raises :class:`~llm_ledger.PriceFileError` naming the file, line and key for any problem.
        """
        return cls(_load_price_file(path), builtin=builtin)

    def rates(self, model: str) -> Rates | None:
        """The rates that price ``model``, or ``None`` if no override or built-in price matches it."""
        entry = self._cache.get(model, _MISSING)
        if entry is _MISSING:
            entry = self._resolve_and_cache(model)
        return entry.rates if isinstance(entry, _Entry) else None

    def cost(
        self, model: str, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> Cost | None:
        """The cost of one call, or ``None`` (never zero) when ``model`` has no known price.

        ``cached_tokens`` is the part of ``prompt_tokens`` served from the prompt cache; reasoning tokens
        are counted inside ``completion_tokens`` and must not be added again.
        """
        costs = self._costs(model, prompt_tokens, completion_tokens, cached_tokens)
        if costs is None:
            return None
        prompt_cost, completion_cost = costs
        return Cost(_usd(prompt_cost), _usd(completion_cost), _usd(prompt_cost + completion_cost))

    def _costs(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int
    ) -> tuple[int, int] | None:
        """(prompt cost, completion cost) in 10**-24 USD (``USD_UNITS`` per dollar), or ``None``."""
        entry = self._cache.get(model, _MISSING)
        if entry is _MISSING:
            entry = self._resolve_and_cache(model)
        if not isinstance(entry, _Entry):
            return None
        if not 0 <= cached_tokens <= prompt_tokens or completion_tokens < 0:
            raise ValueError(
                f"token counts must satisfy 0 <= cached_tokens <= prompt_tokens and completion_tokens >= 0, "
                f"got prompt_tokens={prompt_tokens!r}, cached_tokens={cached_tokens!r}, "
                f"completion_tokens={completion_tokens!r}"
            )
        inp, cached, out = entry.base
        for start, per_token in entry.tiers_desc:
            if prompt_tokens > start:
                inp, cached, out = per_token
                break
        return (prompt_tokens - cached_tokens) * inp + cached_tokens * cached, completion_tokens * out

    def _resolve_and_cache(self, model: str) -> _Entry | None:
        rates = self._resolve(model)
        entry = None if rates is None else _compile(rates)
        if len(self._cache) < _MAX_CACHED_NAMES:
            self._cache[model] = entry
        return entry

    def _resolve(self, model: str) -> Rates | None:
        if not isinstance(model, str) or not model:
            return None
        candidates = list(_candidate_names(model))
        for name in candidates:
            if (rates := self._exact.get(name)) is not None:
                return rates
        for name in candidates:
            for pattern, rates in self._patterns:
                if pattern.match(name):
                    return rates
        if self._builtin:
            for name in candidates:
                if (rates := _builtin_rates(name)) is not None:
                    return rates
        return None


def _candidate_names(model: str) -> Iterator[str]:
    """The names to try for ``model``, most specific first, without repeats."""
    seen: set[str] = set()
    bare = model[len(_PROVIDER_PREFIX) :] if model.lower().startswith(_PROVIDER_PREFIX) else model
    for name in (model, bare, _DATE_SUFFIX.sub("", model), _DATE_SUFFIX.sub("", bare)):
        if name and name not in seen:
            seen.add(name)
            yield name


# --- built-in prices (genai-prices) ------------------------------------------------------------------


def _builtin_rates(name: str) -> Rates | None:
    # Imported here: genai-prices' data module takes ~0.2 s to import, paid only when a price is needed.
    import genai_prices
    from genai_prices.data import providers
    from genai_prices.data_snapshot import find_provider_by_id

    # The bundled data, not get_snapshot(): an UpdatePrices running elsewhere in the process must not
    # change our prices (or make them depend on the network) mid-run.
    provider = find_provider_by_id(providers, "openai")
    if provider is None:
        return None
    info = provider.find_model(name)
    if info is None:
        return None
    try:
        return _rates_from_model_info(info, f"genai-prices {genai_prices.__version__}")
    except ConfigError:
        return None  # a price genai-prices itself would reject: better unknown than wrong


def _rates_from_model_info(info: ModelInfo, source: str) -> Rates | None:
    from genai_prices.types import TieredPrices

    prices = info.get_prices(datetime.now(tz=UTC))
    input_price = prices.input_mtok
    output_price = prices.output_mtok
    cached_price = prices.cache_read_mtok
    if input_price is None:
        if any(value is not None for value in vars(prices).values()):
            return None  # priced per second, per character...: not something token usage can price
        input_price = output_price = Decimal(0)  # genai-prices lists it with no price at all: free
    if output_price is None:
        output_price = Decimal(0)  # input-only models (embeddings) never produce completion tokens

    def at(price: Decimal | TieredPrices, start: int | None) -> Decimal:
        if not isinstance(price, TieredPrices):
            return price
        rate = price.base
        if start is not None:
            for tier in price.tiers:  # sorted ascending by genai-prices
                if tier.start <= start:
                    rate = tier.price
        return rate

    def at_cached(start: int | None) -> Decimal | None:
        return None if cached_price is None else at(cached_price, start)

    kinds = (input_price, output_price, cached_price)
    starts = sorted({tier.start for p in kinds if isinstance(p, TieredPrices) for tier in p.tiers})
    # genai-prices applies a tier when total input tokens > tier.start; between two consecutive starts,
    # every price kind is at its highest tier whose start is <= the lower start.
    tiers = tuple(
        (start, Rates(info.id, at(input_price, start), at(output_price, start), at_cached(start), source))
        for start in starts
    )
    return Rates(info.id, at(input_price, None), at(output_price, None), at_cached(None), source, tiers)


# --- user price file ---------------------------------------------------------------------------------

_TAG_PREFIX: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG_PREFIX + "str"
_INT: Final = _TAG_PREFIX + "int"
_FLOAT: Final = _TAG_PREFIX + "float"
_SAFE_TAGS: Final = frozenset(
    _TAG_PREFIX + name for name in ("str", "int", "float", "bool", "null", "map", "seq")
)
_TOP_KEYS: Final = ("version", "models")
_MODEL_KEYS: Final = ("input", "cached_input", "output")
_REQUIRED_MODEL_KEYS: Final = ("input", "output")
_VERSION: Final = 1
# Unquoted plain scalars YAML 1.1 reads as strings but everyone means as numbers (1e-3, 2E+1).
_PLAIN_NUMBER: Final = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_RATE_EXPECTED: Final = "expected a non-negative number of USD per 1M tokens"


class _FileContext:
    """Turns YAML nodes into values, raising PriceFileError that names file, line and key path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> PriceFileError:
        where = self.name if node is None else f"{self.name}:{node.start_mark.line + 1}"
        return PriceFileError(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")

    def check_tag(self, node: yaml.Node, key_path: str) -> None:
        if node.tag not in _SAFE_TAGS:
            tag = node.tag.replace(_TAG_PREFIX, "!!")
            raise self.error(
                node,
                key_path,
                f"YAML tag {tag!r} is not allowed: a price file holds only plain numbers, names and mappings",
            )

    def describe(self, node: yaml.Node) -> str:
        """The node's value as the user wrote it, for "got ..." (safe: tags are checked first)."""
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        try:
            return repr(self._constructor.construct_object(node))
        except (yaml.YAMLError, ValueError, TypeError):
            return repr(node.value)

    def mapping(
        self, node: yaml.Node, key_path: str, expected: str
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping node's (key, key node, value node) items; keys are non-empty strings seen once."""
        self.check_tag(node, key_path)
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key_path, f"expected {expected}, got {self.describe(node)}")
        items: list[tuple[str, yaml.Node, yaml.Node]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            self.check_tag(key_node, key_path)
            if not (
                isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR and key_node.value.strip()
            ):
                got = self.describe(key_node) if key_node.tag != _STR else repr(key_node.value)
                raise self.error(key_node, key_path, f"keys must be non-empty names, got {got}")
            key = key_node.value
            if key in first_line:
                raise self.error(
                    key_node, _join(key_path, key), f"duplicate key (first on line {first_line[key]})"
                )
            first_line[key] = key_node.start_mark.line + 1
            items.append((key, key_node, value_node))
        return items

    def rate(self, node: yaml.Node, key_path: str) -> Decimal:
        self.check_tag(node, key_path)
        value: Decimal | None = None
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _INT:
                try:
                    value = Decimal(self._constructor.construct_yaml_int(node))
                except (ValueError, TypeError):
                    value = None
            elif node.tag == _FLOAT or (node.tag == _STR and node.style is None):
                text = node.value.replace("_", "")
                if node.tag == _FLOAT or _PLAIN_NUMBER.fullmatch(text):
                    value = _to_decimal(text) or _to_decimal(self._float_text(node))
        if value is None or not value.is_finite() or value < 0:
            raise self.error(node, key_path, f"{_RATE_EXPECTED}, got {self.describe(node)}")
        if value > _MAX_RATE:
            raise self.error(
                node, key_path, f"{_RATE_EXPECTED} (at most {_MAX_RATE}), got {self.describe(node)}"
            )
        return value

    def _float_text(self, node: yaml.ScalarNode) -> str:
        # YAML 1.1 spellings Decimal cannot read (".inf", "1:30.5" sexagesimal) go through PyYAML's float.
        try:
            return repr(self._constructor.construct_yaml_float(node))
        except (ValueError, TypeError):
            return ""


def _to_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _join(key_path: str, key: str) -> str:
    return f"{key_path}.{key}" if key_path else key


def _load_price_file(path: str | os.PathLike[str]) -> dict[str, Rates]:
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceFileError(f"{name}: price file not found") from None
    except IsADirectoryError:
        raise PriceFileError(f"{name}: is a directory, expected a YAML price file") from None
    except UnicodeDecodeError as exc:
        raise PriceFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PriceFileError(f"{name}: cannot read price file: {exc.strerror or exc}") from None

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing is constructed
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise PriceFileError(f"{where}: invalid YAML: {what}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise PriceFileError(f"{name}:{line}: invalid YAML: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise PriceFileError(f"{name}: invalid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise PriceFileError(f"{name}: invalid YAML: nested too deeply to be a price file") from None
    return _parse_price_document(root, name)


def _parse_price_document(root: yaml.Node | None, name: str) -> dict[str, Rates]:
    ctx = _FileContext(name)
    expected_top = "a mapping with keys 'version' and 'models'"
    if root is None:
        raise PriceFileError(f"{name}: the file is empty, expected {expected_top}")
    top = ctx.mapping(root, "", expected_top)
    values: dict[str, yaml.Node] = {}
    for key, key_node, value_node in top:
        if key not in _TOP_KEYS:
            raise ctx.error(key_node, key, f"unknown top-level key; valid keys: {', '.join(_TOP_KEYS)}")
        values[key] = value_node
    for key in _TOP_KEYS:
        if key not in values:
            raise ctx.error(root, key, f"missing required top-level key (expected {expected_top})")

    version_node = values["version"]
    ctx.check_tag(version_node, "version")
    if not (
        isinstance(version_node, yaml.ScalarNode) and version_node.tag == _INT and _is_version(version_node)
    ):
        raise ctx.error(version_node, "version", f"expected {_VERSION}, got {ctx.describe(version_node)}")

    source = f"price file {name}"
    result: dict[str, Rates] = {}
    entries = ctx.mapping(values["models"], "models", "a mapping of model name to its rates")
    for model, _, entry_node in entries:
        entry_path = f"models.{model}"
        fields = ctx.mapping(
            entry_node, entry_path, f"a mapping with keys {', '.join(_MODEL_KEYS)} (USD per 1M tokens)"
        )
        rates: dict[str, Decimal] = {}
        for key, key_node, value_node in fields:
            if key not in _MODEL_KEYS:
                raise ctx.error(
                    key_node, _join(entry_path, key), f"unknown key; valid keys: {', '.join(_MODEL_KEYS)}"
                )
            rates[key] = ctx.rate(value_node, _join(entry_path, key))
        for key in _REQUIRED_MODEL_KEYS:
            if key not in rates:
                raise ctx.error(
                    entry_node, entry_path, f"missing required key {key!r} (USD per 1M {key} tokens)"
                )
        result[model] = Rates(
            model=model,
            input=rates["input"],
            output=rates["output"],
            cached_input=rates.get("cached_input"),
            source=source,
        )
    return result


def _is_version(node: yaml.ScalarNode) -> bool:
    try:
        return bool(yaml.constructor.SafeConstructor().construct_yaml_int(node) == _VERSION)
    except (ValueError, TypeError):
        return False


# --- module-level convenience ------------------------------------------------------------------------

_default_table: PriceTable | None = None


def price(
    model: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    table: PriceTable | None = None,
) -> Cost | None:
    """The cost of one call priced by ``table`` (default: built-in prices), ``None`` for an unknown model."""
    global _default_table
    if table is None:
        if _default_table is None:
            _default_table = PriceTable()
        table = _default_table
    return table.cost(
        model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached_tokens
    )
