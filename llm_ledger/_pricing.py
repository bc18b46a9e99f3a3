"""What a call costs: USD rates per 1M tokens per provider and model, and the cost of one call's usage.

Built-in rates come from genai-prices' bundled data (never fetched at run time); a price file (read by
``_price_file``) overrides them per model and maps hosts to a provider or a rate (docs/PRICING.md).
Resolving a model name walks genai-prices' match rules, slow next to a call, so each :class:`Route`
resolves a name once and caches the answer (unknown names included).
"""

from __future__ import annotations

import decimal
import fnmatch
import functools
import inspect
import math
import operator
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, Required, TypedDict, TypeVar, Unpack, get_type_hints

from llm_ledger._errors import ConfigError
from llm_ledger._extract import TOOL_KINDS, JsonView
from llm_ledger._price_file import load_price_file
from llm_ledger._rates import (
    DEFAULT_PROVIDER,
    MAX_RATE,
    PRICE_FILE_SOURCE,
    HostPrice,
    Rates,
    _genai_provider,
    _genai_providers,
    host_matcher,
    priced_tiers,
    provider_error,
    same_name,
    service_tiers,
)
from llm_ledger._records import USD_UNIT_DIGITS, cost_decimal
from llm_ledger.loading import did_you_mean

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, TieredPrices

__all__ = [
    "PROVIDER_REPORTED",
    "Cost",
    "MatchedBy",
    "PriceTable",
    "PricedCall",
    "Route",
    "UnpricedCounts",
    "day_parts",
    "price",
    "price_time_of_day",
    "reasoning_outside",
    "reported_cost_units",
]


class UnpricedCounts(ValueError):
    """Token counts that do not add up (more cached than prompt tokens): a server's usage no rate
    can price."""


PROVIDER_REPORTED: Final = "provider-reported"
SELF_HOSTED: Final = "self-hosted"  # the provider recorded for a host the price file gives a rate
MatchedBy = Literal["host", "provider", "model"]
_T = TypeVar("_T")

_DATE_SUFFIX: Final = re.compile(r"-\d{4}-\d{2}-\d{2}$")
# a fine-tune is named after its base model's snapshot: ft:gpt-4.1-2025-04-14:org:suffix:id
_FINE_TUNE_DATE: Final = re.compile(r"^(ft:[^:]+?)-\d{4}-\d{2}-\d{2}(?=:)", re.IGNORECASE)
_PROVIDER_PREFIX: Final = "openai/"
_OPENAI_NAMED: Final = frozenset({"openai", "azure"})  # providers whose ids may carry "openai/"
_GLOB_CHARS: Final = frozenset("*?[")
# Providers whose prices by the time of day hold Monday to Friday only, from a day on: DeepSeek bills a
# weekend (Beijing time: its peak hours, 01:00-04:00 and 06:00-10:00 UTC, fall on the same date in UTC)
# at the off-peak rate all day from 2026-08-23, which genai-prices' time-of-day prices cannot say.
_WEEKENDS_OFF_PEAK: Final = {"deepseek": date(2026, 8, 23)}
# Resolved names kept per route; past this, new names are still resolved but no longer cached, so a
# stream of distinct bogus names cannot grow memory without bound.
_MAX_CACHED_NAMES: Final = 10_000


class PricedCall(TypedDict, total=False):
    """One call as it is priced: the keywords :func:`price`, :meth:`PriceTable.cost` and
    :meth:`Route.cost` take after the model (docs/PRICING.md). ``prompt_tokens`` and
    ``completion_tokens`` are required, the other counts parts of them (default 0): ``cached_tokens``
    served from the prompt cache, ``cache_write_tokens`` written to it, the audio parts, and a Realtime
    response's cached audio and images and uncached images (its ``prompt_audio_tokens`` then the audio
    the cache did not serve). Reasoning tokens are inside ``completion_tokens``. ``at`` (default now):
    when the call was made; ``service_tier``: the tier that served it (default the standard one);
    ``tool_uses``: built-in tool kind -> uses, priced at the table's ``tool_fees``."""

    prompt_tokens: Required[int]
    completion_tokens: Required[int]
    cached_tokens: int
    cache_write_tokens: int
    prompt_audio_tokens: int
    completion_audio_tokens: int
    cached_audio_tokens: int
    prompt_image_tokens: int
    cached_image_tokens: int
    at: datetime | None
    service_tier: str | None
    tool_uses: Mapping[str, int] | None


_CALL_KEYS: Final = tuple(PricedCall.__annotations__)
_COUNTS: Final = _CALL_KEYS[:9]  # the token counts, the two required first
_read_counts: Final = operator.itemgetter(*_COUNTS)


@dataclass(frozen=True, slots=True)
class Cost:
    """The USD cost of one call, split the way OpenAI bills it."""

    prompt_cost_usd: Decimal
    """Uncached plus cached prompt tokens."""
    completion_cost_usd: Decimal
    """Completion tokens, reasoning tokens included (they are part of ``completion_tokens``)."""
    total_cost_usd: Decimal
    """The tokens' cost plus ``tool_fees_usd``."""
    tool_fees_usd: Decimal = Decimal(0)
    """The fees of the ``tool_uses`` priced (uses times the table's ``tool_fees``)."""
    left_out: tuple[str, ...] = ()
    """The kinds of ``tool_uses`` the table has no fee for, sorted: the total leaves them out."""


_MISSING: Final[Any] = object()
_REPORTED_FIELDS: Final = ("cost", "cost_details", "is_byok", "cost_in_usd_ticks")
_UNITS_PER_TICK: Final = 10 ** (USD_UNIT_DIGITS - 10)  # xAI's cost_in_usd_ticks: 10**10 ticks per USD
_REASONING_OUTSIDE: Final = frozenset({"google", "x-ai"})
# Our own context, so the caller's decimal context (a low precision, traps) cannot round or break prices;
# 60 digits keep every conversion between rates, units and USD exact.
_CONTEXT: Final = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)
_FOREVER: Final = math.inf
_DAY: Final = 24 * 60 * 60
_TIME_OF_DAY: Final = re.compile(r"(\d{1,2}):(\d{2})")
_DEAREST: Final = -1
# The time of day the monitors price calls at when their price depends on it (price_time_of_day): None,
# the moment each call started; _DEAREST, the dearest part of the day; else a second of the UTC day.
_fixed_second: int | None = None

# Calls are priced in integers of 10**-24 USD (USD_UNITS per dollar): a rate of up to 18 decimals per
# 1M tokens is a whole number of units per token, so costs and their sums are exact, as with Decimal,
# at a fraction of its cost on the path of every call.
# (input, cached input, cache write, audio input, output, audio output, (cached audio input, image input,
# cached image input)) in units per token; the cache, audio and image rates already defaulted. The last
# three, which only a Realtime response uses, apart: a chat call does not unpack them.
_PerToken = tuple[int, int, int, int, int, int, tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class _Entry:
    rates: Rates
    base: _PerToken
    tiers_desc: tuple[tuple[int, _PerToken], ...]  # highest start first, so the first hit is the tier
    # prices by UTC time of day (DeepSeek's off-peak hours): (second of the day it starts, its entry),
    # latest start first; empty when the price is the same all day
    by_time: tuple[tuple[int, _Entry], ...] = ()
    # prices of the service tiers priced apart from the standard one: tier -> its entry, e.g. OpenAI's flex
    by_tier: Mapping[str, _Entry] = field(default_factory=dict)
    # the moments (epoch seconds) these prices hold from and until: the price changes genai-prices lists
    # either side of the day they were resolved on (o3's cut, the end of an introductory rate)
    since: float = -_FOREVER
    until: float = _FOREVER
    dearest: int = 0  # the second of the day the dearest part of by_time starts (its rates are highest)
    # the entry of the UTC day of a moment outside since..until (a logged call's day); None: no other day
    on_day: Callable[[float], _Entry | None] | None = None
    # a weekend day's prices when they are off-peak all day (DeepSeek's): the Friday before's, which a test
    # session's fixed time of day takes (CI costs do not change with the day of the week either)
    friday: _Entry | None = None


def _units(usd: Decimal, per: int = 0) -> int:
    # USD per 10**per tokens (or uses) in 10**-24 USD per one; past 18 decimals per 1M tokens, rounded
    return int(_CONTEXT.scaleb(usd, USD_UNIT_DIGITS - per).to_integral_value(context=_CONTEXT))


def _per_token(rates: Rates) -> _PerToken:
    inp = _units(rates.input, 6)
    cached = inp if rates.cached_input is None else _units(rates.cached_input, 6)
    written = inp if rates.cache_write is None else _units(rates.cache_write, 6)
    heard = inp if rates.input_audio is None else _units(rates.input_audio, 6)
    out = _units(rates.output, 6)
    spoken = out if rates.output_audio is None else _units(rates.output_audio, 6)
    seen = inp if rates.input_image is None else _units(rates.input_image, 6)
    # audio and images the cache served: at their own cached rate, else as other cached tokens, else as
    # other audio and images
    cached_heard, cached_seen = (
        _units(own, 6) if own is not None else uncached if rates.cached_input is None else cached
        for own, uncached in ((rates.cached_input_audio, heard), (rates.cached_input_image, seen))
    )
    return inp, cached, written, heard, out, spoken, (cached_heard, seen, cached_seen)


def _compile(rates: Rates) -> _Entry:
    tiers = tuple((start, _per_token(tier)) for start, tier in reversed(rates.tiers))
    by_tier = {name: _compile(other) for name, other in rates.service_tiers}
    return _Entry(rates, _per_token(rates), tiers, (), by_tier)


def _usd(units: int) -> Decimal:
    # the exact value, written with no trailing zeros: Decimal('0.017'), Decimal('100')
    usd = _CONTEXT.scaleb(Decimal(units), -USD_UNIT_DIGITS).normalize(_CONTEXT)
    exponent = usd.as_tuple().exponent
    return usd.quantize(_ONE, context=_CONTEXT) if isinstance(exponent, int) and exponent > 0 else usd


def reported_cost_units(usage: Any) -> int | None:
    """The USD cost the provider put in the call's ``usage``, in 10**-24 USD; ``None`` when there is none
    (OpenAI reports none) or it is not a finite number >= 0. Never raises. The fields read, per provider
    (OpenRouter's ``cost``, Perplexity's ``cost.total_cost``, xAI's ``cost_in_usd_ticks``): docs/PRICING.md.
    """
    try:
        if type(usage) is dict:
            fields = usage
        elif type(usage) is JsonView:  # a body the ledger parsed itself (raw responses, streams)
            fields = usage._data
        else:
            # the SDK's models keep fields they do not declare in __pydantic_extra__ (a slot: cheap)
            fields = getattr(usage, "__pydantic_extra__", _MISSING)
            if fields is _MISSING:
                fields = {name: getattr(usage, name, None) for name in _REPORTED_FIELDS}
            elif not fields:
                return None  # OpenAI's own usage: nothing beyond the declared fields
        value = fields.get("cost")
        if type(value) is dict:
            value = value.get("total_cost")
        cost = cost_decimal(value)
        if cost is None:
            ticks = fields.get("cost_in_usd_ticks")
            return ticks * _UNITS_PER_TICK if type(ticks) is int and ticks >= 0 else None
        if fields.get("is_byok") is True:
            details = fields.get("cost_details")
            upstream = cost_decimal(details.get("upstream_inference_cost")) if type(details) is dict else None
            if upstream is not None:
                cost += upstream
        return _units(cost)
    except Exception:
        return None


def reasoning_outside(provider: str | None) -> bool:
    """Whether ``provider``'s OpenAI-compatible usage leaves reasoning tokens out of ``completion_tokens``
    (Google, xAI; docs/PRICING.md): the monitor puts them back (``_extract.reasoning_in_completion``)
    before pricing."""
    return provider in _REASONING_OUTSIDE


class Route:
    """How the calls to one server are priced: a host's rate, a provider's rates, or the model name alone.
    Built by :meth:`PriceTable.route`; the monitor keeps one per instrumented client, so choosing it costs
    nothing per call. ``provider`` and ``matched_by`` are what the record's ``server.provider`` and
    ``cost.matched_by`` say (docs/PRICING.md)."""

    __slots__ = ("_cache", "_flat", "_table", "matched_by", "provider", "reasoning_outside")

    def __init__(
        self, table: PriceTable, provider: str, matched_by: MatchedBy, *, flat: Rates | None = None
    ) -> None:
        self._table = table
        self.provider: str = provider
        self.matched_by: MatchedBy = matched_by
        self.reasoning_outside: bool = reasoning_outside(provider)
        self._flat = None if flat is None else _compile(flat)
        self._cache: dict[str, _Entry | None] = {}

    def __repr__(self) -> str:
        return f"Route(provider={self.provider!r}, matched_by={self.matched_by!r})"

    def rates(self, model: str) -> Rates | None:
        """The rates that price ``model`` on this route, or ``None`` if nothing prices it."""
        entry = self._flat or self._entry(model)
        return None if entry is None else entry.rates

    def cost(self, model: str, **call: Unpack[PricedCall]) -> Cost | None:
        """The cost of one call (the keywords: :class:`PricedCall`), or ``None`` (never zero) when
        ``model`` has no known price here."""
        unknown = sorted(call.keys() - _CALL_KEYS)
        missing = [name for name in _COUNTS[:2] if name not in call]
        if unknown or missing:
            wrong = f"an unexpected keyword {unknown[0]!r}" if unknown else f"no keyword {missing[0]!r}"
            raise TypeError(f"cost() got {wrong}; it takes {', '.join(_CALL_KEYS)}")
        counts = {name: call.get(name, 0) for name in _COUNTS}
        for name, count in counts.items():
            if type(count) is not int or count < 0:  # the monitor's counts are checked where they are read
                raise ValueError(f"{name} must be a whole number of tokens >= 0, got {count!r}")
        at = call.get("at")
        if at is not None and not (isinstance(at, datetime) and at.tzinfo is not None):
            raise ValueError(f"at must be a datetime with a time zone (e.g. datetime.now(UTC)), got {at!r}")
        uses = _checked_uses(call.get("tool_uses"))
        costs = self._costs(
            model, counts, at=None if at is None else at.timestamp(), tier=call.get("service_tier")
        )
        if costs is None:
            return None
        prompt_cost, completion_cost = costs[:2]
        fees, left_out = self._table._tool_fees(model, None, uses) if uses else (None, None)
        total = prompt_cost + completion_cost + (fees or 0)
        return Cost(
            _usd(prompt_cost), _usd(completion_cost), _usd(total), _usd(fees or 0), tuple(left_out or ())
        )

    def _costs(
        self,
        model: str | None,
        counts: Mapping[str, Any],
        calls: int = 1,
        fallback: str | None = None,
        at: float | None = None,
        tier: str | None = None,
        live: bool = False,
    ) -> tuple[int, int, str, float | None] | None:
        """(prompt cost, completion cost) in 10**-24 USD, the rates' source and the moment they were
        taken at (epoch seconds; None: the time of day does not change them), or ``None``, at
        ``model``'s rates, else at ``fallback``'s (the model asked for, when ``model`` is the one
        served). A price-file entry for ``fallback`` wins over a built-in price for ``model``: an Azure
        deployment's negotiated rate, although Azure answers with a listed model. ``counts``: every
        count of :class:`PricedCall` (a record's ``usage``), maybe summed over ``calls`` calls (a
        report's row: a long-context tier is judged on their average). ``at`` (epoch seconds, default
        now), ``tier`` as :class:`PricedCall`; ``live``: a call a monitor records, priced at the time of
        day :func:`price_time_of_day` fixes, if any, on the day of ``at``."""
        entry = self._flat
        if entry is None:
            entry = self._entry(model) if model else None
            if (
                fallback
                and fallback != model
                and (entry is None or (self._table._overridden and entry.rates.source != PRICE_FILE_SOURCE))
            ):
                other = self._entry(fallback)
                if other is not None and (entry is None or other.rates.source == PRICE_FILE_SOURCE):
                    entry = other
            if entry is None:
                return None
        # every count is >= 0 already: cost() checks its keywords, the monitor's and reprice's counts are
        # checked where they are read (_extract.usage_of, usage_row, load_report); ``written`` prompt
        # tokens were written to the prompt cache, ``heard`` prompt and ``spoken`` completion tokens are
        # audio (``cached_heard`` of the cached ones), ``seen`` prompt tokens the cache did not serve and
        # ``cached_seen`` it did are images
        (
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            written,
            heard,
            spoken,
            cached_heard,
            seen,
            cached_seen,
        ) = _read_counts(counts)
        media = cached_heard or seen or cached_seen  # a Realtime response's cached audio, images
        if (
            cached_tokens + written > prompt_tokens
            or heard > prompt_tokens
            or spoken > completion_tokens
            or (
                media
                and (
                    cached_heard + cached_seen > cached_tokens
                    or seen + heard > prompt_tokens - cached_tokens - written
                )
            )
        ):
            got = ", ".join(f"{name}={n!r}" for name, n in zip(_COUNTS, _read_counts(counts), strict=True))
            raise UnpricedCounts(
                "token counts must satisfy cached_tokens + cache_write_tokens <= prompt_tokens, "
                "prompt_audio_tokens <= prompt_tokens, completion_audio_tokens <= completion_tokens, "
                "cached_audio_tokens + cached_image_tokens <= cached_tokens and (with those) "
                "prompt_audio_tokens + prompt_image_tokens + cached_tokens + cache_write_tokens "
                f"<= prompt_tokens, each >= 0, got {got}"
            )
        # a call made on a day priced apart from the one the entry holds (a log's call before a price
        # change; a DeepSeek call on a weekend): that day's prices (an entry without on_day holds forever)
        if at is not None and not entry.since <= at < entry.until:
            entry = entry.on_day(at)  # type: ignore[misc]
            if entry is None:
                return None
        moment = None
        if entry.by_time:
            moment = time.time() if at is None else at
            if live and _fixed_second is not None:
                entry, moment = _fixed_moment(entry, moment)
            second = int(moment) % _DAY
            entry = next(timed for start, timed in entry.by_time if second >= start)
        if tier is not None:
            entry = entry.by_tier.get(tier, entry)
        inp, cached, write, audio_in, out, audio_out, media_rates = entry.base
        for start, per_token in entry.tiers_desc:
            if prompt_tokens > start * calls:
                inp, cached, write, audio_in, out, audio_out, media_rates = per_token
                break
        # Audio the cache served is counted in cached_tokens too: billed there, at the cached rate. A model
        # with no cached rate bills cached tokens as any other (cached == inp: text may go below 0 and
        # cancel them out), so its audio keeps the audio rate, as genai-prices bills it.
        if heard and cached != inp:
            heard -= max(0, cached_tokens + written + heard - prompt_tokens)
        text = prompt_tokens - cached_tokens - written - heard
        prompt_cost = text * inp + cached_tokens * cached + written * write + heard * audio_in
        if media:  # counted as text or cached text so far: their own rates
            cached_audio, image_in, cached_image = media_rates
            prompt_cost += (
                cached_heard * (cached_audio - cached)
                + seen * (image_in - inp)
                + cached_seen * (cached_image - cached)
            )
        return (
            prompt_cost,
            (completion_tokens - spoken) * out + spoken * audio_out,
            entry.rates.source,
            moment,
        )

    def _entry(self, model: str) -> _Entry | None:
        """``model``'s rates here, resolved once (unknown names too), and again when they expire."""
        entry: _Entry | None = self._cache.get(model, _MISSING)
        if entry is _MISSING or (
            entry is not None and entry.until != _FOREVER and time.time() >= entry.until
        ):
            entry = self._resolve(model)
            if model in self._cache or len(self._cache) < _MAX_CACHED_NAMES:
                self._cache[model] = entry
        return entry

    def _resolve(self, model: str) -> _Entry | None:
        if not isinstance(model, str) or not model:
            return None
        # genai-prices' provider whose rates apply: OpenAI's for a name priced alone
        provider_id = DEFAULT_PROVIDER if self.matched_by == "model" else self.provider
        candidates = _candidate_names(model, strip_openai=provider_id in _OPENAI_NAMED)
        rates = self._table._override(candidates)
        if rates is not None:
            return _compile(rates)
        if self._table._builtin:
            for name in candidates:
                if (entry := _builtin_entry(name, provider_id)) is not None:
                    return entry
        return None


class PriceTable:
    """Rates per provider and model: user overrides first, then genai-prices' bundled prices.

    ``overrides`` maps an exact model name, or a glob pattern such as ``"ft:gpt-4o-mini:*"``, to its
    :class:`Rates`, matched whatever the case (as genai-prices matches names; two names differing only
    in case are a ``ConfigError``). Exact names win over patterns, patterns are tried in mapping order,
    and every override wins over the built-in prices, whatever the provider. ``builtin=False`` leaves
    only the overrides.

    ``hosts`` maps a host pattern (``"localhost:11434"``, ``"*.internal.example.com"``) to a
    :class:`HostPrice`: calls to a matching server are priced that way, whatever the client says.
    Exact hosts win over patterns, patterns are tried in mapping order.

    ``tool_fees`` maps a model name or glob pattern to the fees of built-in tools billed per use, kind
    (``"web_search"``, ``"file_search"``, ``"code_interpreter"``, ``"image_generation"``) to USD per
    use as a ``Decimal``: a call's cost adds uses times fee, on top of its tokens however they are
    priced. Each kind takes the fee of the first entry giving one whose name matches the model served
    (else the one asked for): exact names first, then patterns in mapping order.

    A name is tried as given, then (for OpenAI and Azure) without an ``openai/`` prefix, then without a
    ``-YYYY-MM-DD`` snapshot suffix, so ``gpt-4o-2024-08-06`` finds an override for ``gpt-4o``, and a
    fine-tune without its base model's (``ft:gpt-4.1-2025-04-14:acme::id`` finds ``ft:gpt-4.1:acme:*``).
    """

    def __init__(
        self,
        overrides: Mapping[str, Rates] | None = None,
        *,
        builtin: bool = True,
        hosts: Mapping[str, HostPrice] | None = None,
        tool_fees: Mapping[str, Mapping[str, Decimal]] | None = None,
    ) -> None:
        self._exact, self._patterns = _by_name(overrides, "price overrides", _checked_rates)
        self._builtin = builtin
        self._overridden = bool(overrides)  # a model name may have a price-file entry
        rules: list[tuple[tuple[bool, bool], str, re.Pattern[str], int | None, HostPrice]] = []
        seen: dict[str, str] = {}  # each pattern as matched (lower case): as given
        for pattern, host_price in (hosts or {}).items():
            if not isinstance(pattern, str):
                raise ConfigError(f"price hosts: a host pattern must be a string, got {pattern!r}")
            if (first := seen.setdefault(pattern.strip().lower(), pattern)) != pattern:
                raise ConfigError(f"price hosts[{pattern!r}]: {same_name('host pattern', first)}")
            try:
                regex, port, is_glob = host_matcher(pattern)
            except ValueError as exc:
                raise ConfigError(f"price hosts[{pattern!r}]: {exc}") from None
            if not isinstance(host_price, HostPrice):
                raise ConfigError(f"price hosts[{pattern!r}]: expected a HostPrice, got {host_price!r}")
            # exact hosts first, host:port before the bare host; patterns after, in mapping order
            rules.append(((is_glob, not is_glob and port is None), pattern, regex, port, host_price))
        self._hosts = [rule[1:] for rule in sorted(rules, key=lambda rule: rule[0])]
        # built-in tools' fees: kind -> 10**-24 USD per use
        self._exact_fees, self._fee_patterns = _by_name(tool_fees, "tool_fees", _fee_units)
        self._fees_of: dict[str, dict[str, int]] = {}  # by model name, resolved once
        self._routes: dict[tuple[str, str], Route] = {}
        self._model_route = Route(self, DEFAULT_PROVIDER, "model")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, builtin: bool = True) -> PriceTable:
        """Build a table whose overrides and hosts come from a YAML price file (format: docs/PRICING.md);
        :class:`~llm_ledger.PriceFileError` names the file, line and key of any problem."""
        overrides, hosts, fees = load_price_file(path)
        return cls(overrides, builtin=builtin, hosts=hosts, tool_fees=fees)

    def route(
        self, host: str | None = None, port: int | None = None, *, provider: str | None = None
    ) -> Route:
        """How calls to ``host:port`` are priced: the first ``hosts`` entry matching it, else ``provider``'s
        rates when genai-prices knows that provider, else the model name alone (``provider``, when given,
        is still what the record says)."""
        if host:
            host = host.lower()
            for pattern, regex, rule_port, rule in self._hosts:
                if (rule_port is None or rule_port == port) and regex.fullmatch(host):
                    key = ("host", pattern)
                    return self._routes.get(key) or self._routes.setdefault(key, self._host_route(rule))
        if provider is None:
            return self._model_route
        key = ("provider", provider)
        return self._routes.get(key) or self._routes.setdefault(key, self._provider_route(provider))

    def _priced_at(self, provider: str | None) -> Route:
        """``provider``'s route for :meth:`cost` and :meth:`rates`: a name genai-prices does not know
        (a typo) is an error, not a price at OpenAI's list price."""
        route = self.route(provider=provider)
        if provider is not None and route.matched_by == "model":
            raise ConfigError(provider_error(provider))
        return route

    def _host_route(self, rule: HostPrice) -> Route:
        if rule.rates is not None:
            return Route(self, rule.provider or SELF_HOSTED, "host", flat=rule.rates)
        return self._provider_route(rule.provider or "", "host")  # a provider HostPrice checked

    def _provider_route(self, name: str, matched_by: MatchedBy = "provider") -> Route:
        provider = _genai_provider(name)
        if provider is None:
            return Route(self, name, "model")  # not a provider genai-prices prices: by model name
        return Route(self, provider.id, matched_by)

    def rates(self, model: str, *, provider: str | None = None) -> Rates | None:
        """The rates that price ``model`` (at ``provider``, else by name alone), or ``None`` if none does."""
        return self._priced_at(provider).rates(model)

    def priced_by_time(self, model: str, *, provider: str | None = None) -> bool:
        """Whether ``model``'s price at ``provider`` (else by name alone) depends on the time of day
        (DeepSeek's off-peak discount): only then does the moment of a call change its cost."""
        return self._timed_entry(model, provider) is not None

    def _timed_entry(self, model: str, provider: str | None, at: float | None = None) -> _Entry | None:
        """``model``'s prices at ``provider`` (on the day of ``at``, default today) when they depend on
        the time of day, else None."""
        entry = self.route(provider=provider)._entry(model)  # a provider's route: never a host's flat rate
        if entry is not None and at is not None and not entry.since <= at < entry.until and entry.on_day:
            entry = entry.on_day(at)
        return entry if entry is not None and entry.by_time else None

    def priced_at(self, model: str, at: datetime, *, provider: str | None = None) -> datetime:
        """The moment a monitor prices a call of ``model`` made at ``at`` (UTC): ``at`` itself, unless
        the price depends on the time of day and :func:`price_time_of_day` fixed one (a pytest session):
        then that time of day on ``at``'s UTC date."""
        entry = self._timed_entry(model, provider, at.timestamp())
        if entry is None or _fixed_second is None:
            return at.astimezone(UTC)
        return datetime.fromtimestamp(_fixed_moment(entry, at.timestamp())[1], UTC)

    def cost(self, model: str, *, provider: str | None = None, **call: Unpack[PricedCall]) -> Cost | None:
        """The cost of one call (the keywords: :class:`PricedCall`) at ``provider``, else by model name
        alone, or ``None`` (never zero) when ``model`` has no known price."""
        return self._priced_at(provider).cost(model, **call)

    def _tool_fees(
        self, served: str | None, requested: str | None, uses: Mapping[str, int]
    ) -> tuple[int | None, list[str] | None]:
        """The fees of a call's built-in tool ``uses`` (kind -> uses) in 10**-24 USD, None when no kind
        used has a fee; and the kinds used that have none, None when every one has."""
        fees = self._fees(requested) | self._fees(served)  # the served model's fee first, kind by kind
        priced = [uses[kind] * fees[kind] for kind in uses if kind in fees]
        left_out = sorted(kind for kind in uses if kind not in fees)
        return sum(priced) if priced else None, left_out or None

    def _fees(self, model: str | None) -> dict[str, int]:
        """``model``'s fee per use of each kind a ``tool_fees`` entry gives, resolved once per name."""
        if not (isinstance(model, str) and model and (self._exact_fees or self._fee_patterns)):
            return {}
        fees = self._fees_of.get(model)
        if fees is None:
            candidates = [name.lower() for name in _candidate_names(model)]
            entries = [self._exact_fees[name] for name in candidates if name in self._exact_fees]
            entries += [units for pattern, units in self._fee_patterns if any(map(pattern.match, candidates))]
            fees = {}
            for entry in entries:  # the first entry giving a kind's fee wins
                for kind, fee in entry.items():
                    fees.setdefault(kind, fee)
            if len(self._fees_of) < _MAX_CACHED_NAMES:
                self._fees_of[model] = fees
        return fees

    def _override(self, candidates: list[str]) -> Rates | None:
        for name in candidates:
            if (rates := self._exact.get(name.lower())) is not None:
                return rates
        for name in candidates:
            for pattern, rates in self._patterns:
                if pattern.match(name):
                    return rates
        return None

    def model_names(self, provider: str | None = None) -> list[str]:
        """Every model name this table prices at ``provider`` (else OpenAI's list): for "did you mean"."""
        names = [rates.model for rates in self._exact.values()]
        if self._builtin:
            found = _genai_provider(provider or DEFAULT_PROVIDER)
            if found is not None:
                names += [model.id for model in found.models]
        return names


def _by_name(
    entries: Mapping[str, Any] | None, where: str, check: Callable[[str, Any], _T]
) -> tuple[dict[str, _T], list[tuple[re.Pattern[str], _T]]]:
    """``entries`` (a model name or glob pattern -> a value ``check`` checks) as exact names (in lower
    case: names match whatever their case) and patterns, in mapping order."""
    exact: dict[str, _T] = {}
    patterns: list[tuple[re.Pattern[str], _T]] = []
    names: dict[str, str] = {}  # each name in lower case: as given
    for name, value in (entries or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: model name must be a non-empty string, got {name!r}")
        checked = check(name, value)
        if (first := names.setdefault(name.strip().lower(), name)) != name:
            raise ConfigError(f"{where}[{name!r}]: {same_name('model', first)}")
        if _GLOB_CHARS.isdisjoint(name):
            exact[name.strip().lower()] = checked
        else:
            patterns.append((re.compile(fnmatch.translate(name.strip()), re.IGNORECASE), checked))
    return exact, patterns


def _checked_rates(name: str, rates: Any) -> Rates:
    if not isinstance(rates, Rates):
        raise ConfigError(f"price overrides[{name!r}]: expected a Rates, got {rates!r}")
    return rates


def _checked_uses(uses: Any) -> dict[str, int]:
    """A what-if's ``tool_uses`` checked (kind -> whole number of uses >= 0), without its kinds used 0
    times; ValueError names a mistake."""
    if uses is None:
        return {}
    kinds = ", ".join(TOOL_KINDS)
    if not isinstance(uses, Mapping):
        raise ValueError(
            f"tool_uses: expected a mapping of built-in tool kind ({kinds}) to uses, got {uses!r}"
        )
    for kind, count in uses.items():
        if kind not in TOOL_KINDS:
            hint = did_you_mean(kind, TOOL_KINDS) if isinstance(kind, str) else ""
            raise ValueError(f"tool_uses: unknown tool kind {kind!r}{hint}; valid kinds: {kinds}")
        if type(count) is not int or count < 0:
            raise ValueError(
                f"tool_uses[{kind!r}]: expected a whole number of uses >= 0, got {count!r} (kinds: {kinds})"
            )
    return {kind: count for kind, count in uses.items() if count}


def _fee_units(name: str, fees: Mapping[str, Decimal]) -> dict[str, int]:
    """A ``tool_fees`` entry checked, as 10**-24 USD per use of each kind; ConfigError names a mistake."""
    kinds = ", ".join(TOOL_KINDS)
    if not isinstance(fees, Mapping) or not fees:
        raise ConfigError(
            f"tool_fees[{name!r}]: expected a mapping of built-in tool kind ({kinds}) to its USD per use "
            f"(a Decimal), got {fees!r}"
        )
    units: dict[str, int] = {}
    for kind, fee in fees.items():
        if kind not in TOOL_KINDS:
            hint = did_you_mean(kind, TOOL_KINDS) if isinstance(kind, str) else ""
            raise ConfigError(f"tool_fees[{name!r}][{kind!r}]: unknown tool kind{hint}; valid kinds: {kinds}")
        if not (isinstance(fee, Decimal) and fee.is_finite() and 0 <= fee <= MAX_RATE):
            raise ConfigError(
                f"tool_fees[{name!r}][{kind!r}]: expected a finite Decimal between 0 and {MAX_RATE} USD per "
                f"use, got {fee!r}"
            )
        units[kind] = _units(fee)
    return units


def _candidate_names(model: str, *, strip_openai: bool = True) -> list[str]:
    """The names to try for ``model``, most specific first, without repeats: as given, without an
    ``openai/`` prefix, without a snapshot date (``gpt-4o-2024-08-06``: ``gpt-4o``; a fine-tune's base
    model's: ``ft:gpt-4.1-2025-04-14:org::id``: ``ft:gpt-4.1:org::id``)."""
    bare = model
    if strip_openai and model.lower().startswith(_PROVIDER_PREFIX):
        bare = model[len(_PROVIDER_PREFIX) :]
    undated = _FINE_TUNE_DATE.sub(r"\1", _DATE_SUFFIX.sub("", bare))
    names = (model, bare, _DATE_SUFFIX.sub("", model), undated)
    return [name for name in dict.fromkeys(names) if name]


def _builtin_entry(name: str, provider_id: str) -> _Entry | None:
    import genai_prices
    from genai_prices.types import StartDateConstraint

    providers = _genai_providers()
    provider = _genai_provider(provider_id)
    if provider is None:
        return None
    info = provider.find_model(name, all_providers=providers)  # Azure falls back to OpenAI's models
    if info is None:
        return None
    source = f"genai-prices {genai_prices.__version__}"
    # the service tiers genai-prices prices apart (OpenAI's flex, priority, fast...); as in genai-prices,
    # only at the model's own provider, not for a model another provider borrows (Azure's of OpenAI's)
    own = any(info is model for model in provider.models)
    served = sorted(priced_tiers(info) & set(service_tiers()))

    def entry(moment: datetime) -> _Entry | None:
        rates = _rates_from_model_info(info, source, moment)
        by_tier = []
        for tier in served if own and rates is not None else ():
            other = _rates_from_model_info(info, source, moment, {"service_tier": tier})
            if other is None:
                return None
            if other != rates:
                by_tier.append((tier, other))
        return None if rates is None else _compile(replace(rates, service_tiers=tuple(by_tier)))

    # Prices of a day and, for a model priced by time of day, those of each part of it: the name is
    # resolved once, and each call is priced at the part of the day it was made in. The price changes
    # genai-prices lists (StartDateConstraint) bound the days these prices hold: a call made outside them
    # (a logged call before a change; after one, in a running process) is priced at its own day's.
    conditional = info.prices if isinstance(info.prices, list) else []
    constraints = [c.constraint for c in conditional] + [v.constraint for v in info.price_variants or ()]
    # each change's UTC midnight, in epoch seconds
    changes = {
        datetime.combine(c.start_date, dt_time(), UTC).timestamp()
        for c in constraints
        if isinstance(c, StartDateConstraint)
    }
    starts = sorted({0} | _price_changes(info))
    weekends_off_peak = _WEEKENDS_OFF_PEAK.get(provider.id) if own and len(starts) > 1 else None
    days: dict[float, _Entry | None] = {}  # the entries of other days, by their midnight

    def on_day(moment: float) -> _Entry | None:
        day = moment // _DAY * _DAY  # its midnight
        if day in days:
            return days[day]
        midnight = datetime.fromtimestamp(day, UTC)
        since = max((change for change in changes if change <= day), default=-_FOREVER)
        until = min((change for change in changes if change > day), default=_FOREVER)
        try:
            current = entry(datetime.fromtimestamp(moment, UTC))
            by_time = [(start, entry(midnight + timedelta(seconds=start))) for start in reversed(starts)]
        except ConfigError:
            current = None  # a price genai-prices itself would reject: better unknown than wrong
            by_time = []
        timed = tuple((start, other) for start, other in by_time if other is not None)
        result = friday = None
        if current is not None and len(timed) == len(by_time):
            if weekends_off_peak and midnight.date() >= weekends_off_peak:
                since, until = max(since, day), min(until, day + _DAY)
                if midnight.weekday() >= 5:  # Saturday or Sunday: the cheapest part of the day, all day
                    friday = on_day(day - (midnight.weekday() - 4) * _DAY)
                    current = min(timed, key=lambda part: part[1].base)[1]
                    timed = tuple((start, current) for start, _ in timed)
            # the dearest part of the day: the highest rates, compared input first (DeepSeek's parts differ
            # by one factor on every rate, so it is the dearest for any call); the earliest of equal parts
            result = replace(
                current,
                by_time=timed if len(timed) > 1 else (),
                since=since,
                until=until,
                dearest=max(reversed(timed), key=lambda part: part[1].base)[0],
                on_day=on_day if changes or weekends_off_peak else None,
                friday=friday,
            )
        if len(days) < _MAX_CACHED_NAMES:
            days[day] = result
        return result

    return on_day(time.time())


def price_time_of_day(when: str) -> str:
    """Price the calls every monitor records from now on whose price depends on the time of day
    (DeepSeek's peak hours) at one time of day, on the UTC day each started, rather than at the moment it
    started: ``"dearest"`` (the part of the day whose rates are highest), ``"HH:MM"`` (UTC) or ``"now"``
    (the moment: the default, production's rule). Returns the setting it replaces, to restore it. The
    pytest plugin sets it for its session (docs/CI.md); ``price()``, ``PriceTable.cost()`` and
    ``llm-ledger reprice`` price at the ``at`` they are given, whatever it is."""
    global _fixed_second
    text = when.strip().lower() if isinstance(when, str) else ""
    hour_minute = _TIME_OF_DAY.fullmatch(text)
    if text == "now":
        second = None
    elif text == "dearest":
        second = _DEAREST
    elif hour_minute and int(hour_minute[1]) < 24 and int(hour_minute[2]) < 60:
        second = (int(hour_minute[1]) * 60 + int(hour_minute[2])) * 60
    else:
        raise ConfigError(
            f"{when!r} is not a time of day; use dearest (the day's dearest rate), HH:MM (UTC, e.g. 13:30) "
            "or now (when each call ran)"
        )
    previous, _fixed_second = _fixed_second, second
    if previous is None:
        return "now"
    return "dearest" if previous == _DEAREST else f"{previous // 3600:02}:{previous // 60 % 60:02}"


def _fixed_moment(entry: _Entry, moment: float) -> tuple[_Entry, float]:
    """The prices and the moment a call made at ``moment`` is priced at under :func:`price_time_of_day`'s
    setting: that time of day on its day, or on a weekend whose prices are off-peak all day, the Friday's."""
    assert _fixed_second is not None
    if (friday := entry.friday) is not None:
        entry, moment = friday, friday.since  # a weekday's prices hold that day only
    return entry, moment // _DAY * _DAY + (entry.dearest if _fixed_second == _DEAREST else _fixed_second)


@functools.lru_cache(maxsize=1024)
def day_parts(model: str) -> tuple[int, ...]:
    """The seconds of the UTC day at which ``model``'s price changes at a provider listing it, ascending
    (DeepSeek's off-peak hours, as genai-prices lists them); empty when it costs the same all day."""
    return tuple(sorted(set().union(*(_price_changes(p.find_model(model)) for p in _genai_providers()))))


def _price_changes(info: ModelInfo | None) -> set[int]:
    """The seconds of the UTC day at which a model's price by time of day changes."""
    from genai_prices.types import TimeOfDateConstraint

    prices = info.prices if info is not None and isinstance(info.prices, list) else []
    windows = [p.constraint for p in prices if isinstance(p.constraint, TimeOfDateConstraint)]
    return {_utc_second(w.start_time) for w in windows} | {_utc_second(w.end_time) for w in windows}


def _utc_second(moment: dt_time) -> int:
    """The second of the UTC day a time of day is (a time without a zone is UTC, as genai-prices reads it)."""
    if moment.tzinfo is not None:
        moment = datetime.combine(date(2000, 1, 1), moment).astimezone(UTC).time()
    return (moment.hour * 60 + moment.minute) * 60 + moment.second


# genai-prices' other prices of a model, as rates() below unpacks them
_OPTIONAL_PRICES: Final = (
    "cache_read_mtok", "cache_write_mtok", "input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok",
    "input_image_mtok", "cache_image_read_mtok",
)  # fmt: skip


def _rates_from_model_info(
    info: ModelInfo, source: str, moment: datetime, context: dict[str, str] | None = None
) -> Rates | None:
    from genai_prices.types import TieredPrices

    prices = info.get_prices(moment, context)
    input_price, output_price = prices.input_mtok, prices.output_mtok
    optional = [getattr(prices, name) for name in _OPTIONAL_PRICES]
    if input_price is None:
        if any(value is not None for value in vars(prices).values()):
            return None  # priced per second, per character...: not something token usage can price
        input_price = output_price = Decimal(0)  # genai-prices lists it with no price at all: free
    if output_price is None:
        output_price = Decimal(0)  # input-only models (embeddings) never produce completion tokens

    def at(price: Decimal | TieredPrices, start: int | None) -> Decimal:
        """The rate at ``start`` prompt tokens (``None``: the base rate); tiers ascend in genai-prices."""
        if not isinstance(price, TieredPrices):
            return price
        passed = [tier.price for tier in price.tiers if start is not None and tier.start <= start]
        return passed[-1] if passed else price.base

    def rates(start: int | None, tiers: tuple[tuple[int, Rates], ...] = ()) -> Rates:
        cached, written, heard, spoken, *media = (
            None if price is None else at(price, start) for price in optional
        )
        inp, out = at(input_price, start), at(output_price, start)
        return Rates(info.id, inp, out, cached, source, tiers, written, heard, spoken, (), *media)

    kinds = (input_price, output_price, *optional)
    starts = sorted({tier.start for p in kinds if isinstance(p, TieredPrices) for tier in p.tiers})
    # genai-prices applies a tier when total input tokens > tier.start; between two consecutive starts,
    # every price kind is at its highest tier whose start is <= the lower start.
    return rates(None, tuple((start, rates(start)) for start in starts))


# --- module-level convenience ------------------------------------------------------------------------


@functools.cache
def _builtin_table() -> PriceTable:
    return PriceTable()


def price(
    model: str,
    *,
    provider: str | None = None,
    table: PriceTable | None = None,
    **call: Unpack[PricedCall],
) -> Cost | None:
    """The cost of one call priced by ``table`` (default: built-in prices) at ``provider`` (default: by
    model name at OpenAI's list price), ``None`` for an unknown model. The call's keywords:
    :class:`PricedCall`."""
    return (table or _builtin_table()).cost(model, provider=provider, **call)


def _show_call_keywords(*functions: Callable[..., Any]) -> None:
    """Give each function a signature with :class:`PricedCall`'s keywords in place of ``**call`` (the two
    counts required, the others defaulting to 0, or None for ``at`` and ``service_tier``), so help() and
    editors show them; :meth:`Route.cost` still checks the keywords given."""
    keywords = []
    for name, hint in get_type_hints(PricedCall).items():
        default = inspect.Parameter.empty if name in _COUNTS[:2] else 0 if hint is int else None
        keywords.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        )
    for function in functions:
        signature = inspect.signature(function, eval_str=True)
        kept = [param for param in signature.parameters.values() if param.kind is not param.VAR_KEYWORD]
        function.__signature__ = signature.replace(parameters=[*kept, *keywords])  # type: ignore[attr-defined]


_show_call_keywords(Route.cost, PriceTable.cost, price)
