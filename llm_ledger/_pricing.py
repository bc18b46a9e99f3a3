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
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from llm_ledger._errors import ConfigError, PriceFileError
from llm_ledger._loading import Document, join, read_file
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

_MODEL_KEYS: Final = ("input", "cached_input", "output")
_RATE_EXPECTED: Final = "a non-negative number of USD per 1M tokens"


def _load_price_file(path: str | os.PathLike[str]) -> dict[str, Rates]:
    name = os.fspath(path)
    doc = Document(name, PriceFileError, "a price file")
    root = doc.compose(read_file(name, PriceFileError, "price file"))
    expected_top = "a mapping with keys 'version' and 'models'"
    if root is None:
        raise PriceFileError(f"{name}: the file is empty, expected {expected_top}")
    top = doc.fields(
        root, "", expected_top, ("version", "models"), {"version": "the format, 1", "models": "the rates"}
    )
    version = top["version"]
    doc.check_tag(version, "version")
    if version.tag != "tag:yaml.org,2002:int" or doc.describe(version) != "1":
        raise doc.error(version, "version", f"expected 1, got {doc.describe(version)}")

    source = f"price file {name}"
    result: dict[str, Rates] = {}
    for model, _, entry_node in doc.mapping(top["models"], "models", "a mapping of model name to its rates"):
        entry_path = join("models", model)
        expected = f"a mapping with keys {', '.join(_MODEL_KEYS)} (USD per 1M tokens)"
        required = {"input": "USD per 1M input tokens", "output": "USD per 1M output tokens"}
        fields = doc.fields(entry_node, entry_path, expected, _MODEL_KEYS, required)
        rates = {
            key: doc.number(node, f"{entry_path}.{key}", _RATE_EXPECTED, maximum=_MAX_RATE)
            for key, node in fields.items()
        }
        result[model] = Rates(model, rates["input"], rates["output"], rates.get("cached_input"), source)
    return result


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
