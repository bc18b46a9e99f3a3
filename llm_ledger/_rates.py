"""The rates a price table is built from (:class:`Rates`, :class:`HostPrice`) and what they are checked
against: genai-prices' providers, host patterns and the service tiers priced apart. Both ``_pricing``
(the table) and ``_price_file`` (the YAML that builds one) import these; neither imports the other's
internals.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from llm_ledger._errors import ConfigError
from llm_ledger.loading import did_you_mean, shown

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, Provider

__all__ = [
    "DEFAULT_PROVIDER",
    "MAX_RATE",
    "PRICE_FILE_SOURCE",
    "RATE_FIELDS",
    "SERVICE_TIERS",
    "HostPrice",
    "Rates",
    "host_matcher",
    "preload",
    "priced_tiers",
    "provider_error",
    "same_name",
    "service_tier_error",
    "service_tiers",
]


PRICE_FILE_SOURCE: Final = "price-file"
DEFAULT_PROVIDER: Final = "openai"  # what the client speaks: the provider of a host nobody knows
# Rates above this are certainly typos (a dollar per token) and would only risk Decimal overflow.
MAX_RATE: Final = Decimal(1_000_000)
# A host pattern: a DNS name, an IPv4 address or a bracketed IPv6 one, with * and ? wildcards, and an
# optional port. No scheme, path, user or character class: those are mistakes, not patterns.
_HOST_PATTERN: Final = re.compile(
    r"(?P<host>[a-z0-9*?](?:[a-z0-9*?.-]*[a-z0-9*?])?|\[[0-9a-f:.*?]+\])(?::(?P<port>[0-9]{1,5}))?"
)
# the rates a model may give, in the order messages list them; all but input and output are optional
RATE_FIELDS: Final = (
    "input", "cached_input", "cache_write", "input_audio", "cached_input_audio", "input_image",
    "cached_input_image", "output", "output_audio",
)  # fmt: skip
# the service tiers a response names that may be priced apart ("default" is the standard rates); those
# genai-prices prices apart are added by service_tiers()
SERVICE_TIERS: Final = ("flex", "priority", "fast", "scale")
_STANDARD_TIERS: Final = ("default", "auto")
_HOST_FORM: Final = (
    "a host name or IP address with an optional :port and * ? wildcards, no scheme or path "
    '(e.g. "localhost:11434", "*.internal.example.com", "10.0.0.*")'
)


@dataclass(frozen=True, slots=True)
class Rates:
    """A model's prices in USD per 1,000,000 tokens.

    ``tiers`` holds long-context prices as ``(start, rates)`` pairs in ascending ``start`` order: when a
    call's ``prompt_tokens`` is strictly greater than ``start``, the tier's rates apply to *all* of that
    call's tokens (a cliff, as OpenAI bills gpt-5.4 above 272k prompt tokens). The highest tier passed wins.
    ``service_tiers`` holds the prices of service tiers priced apart from the standard one as
    ``(name, rates)`` pairs (``("flex", Rates(...))``): a call the response says that tier served costs
    those rates (and their own ``tiers``); any other tier costs these.
    """

    model: str
    """The name that matched: the genai-prices model id, or the price file's key (a name or a pattern)."""
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    """``None`` when cached prompt tokens are billed at the ``input`` rate."""
    source: str = PRICE_FILE_SOURCE
    """``"genai-prices <version>"`` or ``"price-file"`` (recorded as ``cost.source``)."""
    tiers: tuple[tuple[int, Rates], ...] = ()
    cache_write: Decimal | None = None
    """For prompt tokens written to the prompt cache (OpenAI's gpt-5.6 on, Claude through OpenRouter);
    ``None`` when they are billed at the ``input`` rate."""
    input_audio: Decimal | None = None
    """For audio prompt tokens (gpt-audio); ``None`` when they are billed at the ``input`` rate."""
    output_audio: Decimal | None = None
    """For audio completion tokens; ``None`` when they are billed at the ``output`` rate."""
    service_tiers: tuple[tuple[str, Rates], ...] = ()
    cached_input_audio: Decimal | None = None
    """For audio prompt tokens the prompt cache served (the Realtime API's); ``None`` when they are
    billed at the ``cached_input`` rate, else (no cached rate) at the ``input_audio`` rate."""
    input_image: Decimal | None = None
    """For image prompt tokens (the Realtime API's); ``None`` when they are billed at the ``input`` rate."""
    cached_input_image: Decimal | None = None
    """For image prompt tokens the prompt cache served; ``None`` when they are billed at the
    ``cached_input`` rate, else (no cached rate) at the ``input_image`` rate."""

    def __post_init__(self) -> None:
        for field_name in RATE_FIELDS:
            value = getattr(self, field_name)
            if value is None and field_name not in ("input", "output"):
                continue
            if not (isinstance(value, Decimal) and value.is_finite() and 0 <= value <= MAX_RATE):
                raise ConfigError(
                    f"Rates({self.model!r}).{field_name}: expected a finite Decimal between 0 and "
                    f"{MAX_RATE} USD per 1M tokens, got {value!r}"
                )
        previous = -1
        for start, tier in self.tiers:
            if (
                type(start) is not int
                or start <= previous
                or not isinstance(tier, Rates)
                or tier.tiers
                or tier.service_tiers
            ):
                raise ConfigError(
                    f"Rates({self.model!r}).tiers: expected (start, Rates) pairs with int starts in "
                    f"ascending order and no nested tiers, got {self.tiers!r}"
                )
            previous = start
        names = [name for name, _ in self.service_tiers]
        for name, tier in self.service_tiers:
            if not (
                isinstance(name, str) and name and names.count(name) == 1 and isinstance(tier, Rates)
            ) or (tier.service_tiers):
                raise ConfigError(
                    f"Rates({self.model!r}).service_tiers: expected (name, Rates) pairs with distinct names "
                    f"and no nested service tiers, got {self.service_tiers!r}"
                )
            if name not in service_tiers():
                given = [key for key in RATE_FIELDS if getattr(self, key) is not None]
                raise ConfigError(
                    f"Rates({self.model!r}).service_tiers.{name}: {service_tier_error(name, given)}"
                )


@functools.cache
def service_tiers() -> tuple[str, ...]:
    """The service tiers a price may be given for: :data:`SERVICE_TIERS`, then any other that
    genai-prices prices apart (a tier a provider adds reaches users with genai-prices' data)."""
    priced = set().union(
        *(priced_tiers(model) for provider in _genai_providers() for model in provider.models)
    )
    return SERVICE_TIERS + tuple(sorted(priced - {*SERVICE_TIERS, *_STANDARD_TIERS}))


def priced_tiers(model: ModelInfo) -> set[str]:
    """The service tiers genai-prices gives ``model`` prices of their own for (some list ``default``)."""
    return {v.when["service_tier"] for v in model.price_variants or () if set(v.when) == {"service_tier"}}


def service_tier_error(name: str, given: list[str]) -> str:
    """Why ``name`` is not in :func:`service_tiers`, for an entry giving the rates ``given``."""
    valid = service_tiers()
    if name in _STANDARD_TIERS:
        hint = f"; the standard tier's rates are the entry's own ({', '.join(given)})"
    else:
        hint = did_you_mean(name, valid)
    return f"unknown service tier{hint}; valid service tiers: {', '.join(valid)}"


@dataclass(frozen=True, slots=True)
class HostPrice:
    """How calls to a host are priced: as ``provider`` prices them, or at ``rates`` for every model (then
    ``provider`` is only the name recorded in ``server.provider``, default ``"self-hosted"``)."""

    provider: str | None = None
    rates: Rates | None = None

    def __post_init__(self) -> None:
        if self.rates is not None and not isinstance(self.rates, Rates):
            raise ConfigError(f"HostPrice.rates: expected a Rates or None, got {self.rates!r}")
        if self.provider is not None and (not isinstance(self.provider, str) or not self.provider.strip()):
            raise ConfigError(f"HostPrice.provider: expected a non-empty name or None, got {self.provider!r}")
        if self.rates is None:
            if self.provider is None:
                raise ConfigError("HostPrice: give a provider, rates, or both")
            if _genai_provider(self.provider) is None:
                raise ConfigError(f"HostPrice.provider: {provider_error(self.provider)}")


def host_matcher(pattern: str) -> tuple[re.Pattern[str], int | None, bool]:
    """(host regex, port or None, has wildcards) of a host pattern; a ValueError says what is wrong."""
    text = pattern.strip().lower()
    if not text:
        raise ValueError(f"an empty host pattern; expected {_HOST_FORM}")
    why = None
    if "://" in text:
        why = "a scheme (http://) is not part of a host"
    elif "/" in text:
        why = "a path is not part of a host"
    elif "@" in text:
        why = "a user@ part is not part of a host"
    else:
        match = _HOST_PATTERN.fullmatch(text.replace("_", "-"))  # internal names (compose services) have _
        if match is None:
            why = "only letters, digits, '.', '-', '_', ':' (before a port) and the wildcards * ? are allowed"
        else:
            port = match["port"]
            if port is not None and not 1 <= int(port) <= 65535:
                why = f"port {port} is not between 1 and 65535"
            else:
                host = text[: match.end("host")].strip("[]")
                regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in host)
                return re.compile(regex), None if port is None else int(port), "*" in host or "?" in host
    raise ValueError(f"not a host pattern: {why}; expected {_HOST_FORM}")


def same_name(what: str, first: str, where: str = "") -> str:
    """Why a model name or host pattern (``what``) is refused that differs from an earlier one (``first``,
    at ``where``) only in case or surrounding space: one of the two entries would never be used."""
    return f"the same {what} as {first!r}{where} but for case, which matching ignores; keep one entry"


# --- built-in prices (genai-prices) ------------------------------------------------------------------


def _genai_providers() -> list[Provider]:
    # Imported here: genai-prices' data module is slow to import, paid only when a price is needed.
    # The bundled data, not get_snapshot(): an UpdatePrices running elsewhere in the process must not
    # change our prices (or make them depend on the network) mid-run.
    from genai_prices.data import providers

    return providers


_preloading: threading.Thread | None = None
# how long a fork waits for the load to end: only a fork made from inside an import the load itself
# waits for (the two would wait for each other) goes ahead unfinished
_FORK_WAIT_S: Final = 10.0


def settle_httpx2() -> None:
    """Import httpx2 now, on the caller's thread (configuring or instrumenting, at start-up): openai
    2.x reads ``sys.modules["httpx2"]`` in every client's constructor and request, and genai-prices
    imports httpx2: a thread loading the prices meanwhile shows it a partly initialised module."""
    if "httpx2" not in sys.modules and "openai._httpx2" in sys.modules:
        try:
            importlib.import_module("httpx2")
        except ImportError:  # not installed: nothing can be half imported
            pass


def preload() -> None:
    """Start loading genai-prices' data on a daemon thread (once per process), so that the first priced
    call need not wait for it; a call that comes first waits for the same import (Python imports a
    module once, other threads waiting for it)."""
    global _preloading
    if _preloading is None and "genai_prices.data" not in sys.modules:
        settle_httpx2()
        _preloading = threading.Thread(target=_load_quietly, name="llm-ledger-prices", daemon=True)
        _preloading.start()


def _load_quietly() -> None:
    try:
        _genai_providers()
    except Exception:  # not loaded: the first priced call imports it again and reports what fails
        pass


def _before_fork() -> None:
    # a module another thread is importing at a fork stays locked in the child for good (gunicorn
    # --preload forks right after the application's configure()): the load ends first
    thread = _preloading
    if thread is not None and thread is not threading.current_thread():
        thread.join(_FORK_WAIT_S)


os.register_at_fork(before=_before_fork)


def _genai_provider(name: str) -> Provider | None:
    from genai_prices.data_snapshot import find_provider_by_id

    return find_provider_by_id(_genai_providers(), name) if name.strip() else None


def provider_error(name: str) -> str:
    """ "unknown provider 'grok' (did you mean 'groq'?); known providers: ..." for an error message."""
    known = [provider.id for provider in _genai_providers()]
    hint = did_you_mean(name.lower(), known, n=3)
    return f"unknown provider {shown(name)}{hint}; known providers: {', '.join(known)}"
