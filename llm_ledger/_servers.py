"""Where a call went: the server's address and port, and the provider behind it.

Providers are named as genai-prices names them, so the name recorded is the one that chose the
prices; how a client's provider is found, once per client, is docs/PRICING.md's "How a call is
priced" and "Providers". :func:`otel_provider_name` gives OpenTelemetry's ``gen_ai.provider.name``.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Final

from ._rates import DEFAULT_PROVIDER, _genai_providers
from ._records import ServerShape

if TYPE_CHECKING:
    from ._pricing import PriceTable, Route

__all__ = ["DEFAULT_PROVIDER", "Endpoint", "detect_provider", "otel_provider_name", "server_of"]

_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
_AZURE_CLASSES: Final = frozenset({"AzureOpenAI", "AsyncAzureOpenAI", "BaseAzureClient"})
# genai-prices provider id -> gen_ai.provider.name, where the GenAI conventions name it differently
_OTEL_NAMES: Final = {
    "azure": "azure.ai.openai",
    "aws": "aws.bedrock",
    "google": "gcp.gen_ai",
    "mistral": "mistral_ai",
    "moonshotai": "moonshot_ai",
    "x-ai": "x_ai",
}
# base URLs genai-prices' patterns miss, with their provider: OpenAI's data residency endpoints
# (eu.api.openai.com, us.api.openai.com), which genai-prices' ``https://api\.openai\.com`` does not match
_MORE_PATTERNS: Final = ((re.compile(r"https://[a-z0-9-]+\.api\.openai\.com(?:[:/]|$)"), "openai"),)
# providers whose chat streams carry the usage unasked, and elsewhere once asked (the ledger asks theirs
# for none, so the caller gets what the bare SDK gets): Moonshot (Kimi) in the finishing chunk's
# choices[0].usage, in OpenAI's usage chunk once asked. Known by the base URL, not the prices chosen
_USAGE_UNASKED: Final = frozenset({"moonshotai"})


def _address(url: Any) -> tuple[str | None, int | None]:
    """The host and port of an ``httpx`` URL, the scheme's default port when it names none."""
    return url.host.lower() or None, url.port or _DEFAULT_PORTS.get(url.scheme)


def otel_provider_name(provider: str) -> str:
    """OpenTelemetry's ``gen_ai.provider.name`` for a recorded ``server.provider``."""
    return _OTEL_NAMES.get(provider, provider)


@functools.lru_cache(maxsize=256)  # per base URL: a client derived per request (with_options) is new
def detect_provider(base_url: str, *, azure: bool = False) -> str | None:
    """The genai-prices provider id of a client: ``azure`` for an Azure client, else the first provider
    whose URL pattern matches ``base_url`` (or one of ``_MORE_PATTERNS``); ``None`` for a URL no provider
    claims."""
    if azure:
        return "azure"
    found = next((p.id for p in _genai_providers() if re.match(p.api_pattern, base_url)), None)
    return found or next((provider for regex, provider in _MORE_PATTERNS if regex.match(base_url)), None)


class Endpoint:
    """One instrumented client's server and the :class:`~llm_ledger._pricing.Route` its calls are priced
    by, resolved at its first priced call and again only when the monitor's price table or the client's
    ``base_url`` changes (a reassigned ``client.base_url`` is a new URL object: one identity check)."""

    __slots__ = ("_client", "_resolved", "_url_attr", "azure")

    def __init__(self, client: Any) -> None:
        self._client = client
        # the attribute behind the SDK's base_url property, read instead of it on every priced call:
        # the property is slow (from openai 3.61 it runs an import); None for a client of another make
        fields = getattr(client, "__dict__", {})
        self._url_attr = next((n for n in ("_configured_base_url", "_base_url") if n in fields), None)
        self.azure = any(cls.__name__ in _AZURE_CLASSES for cls in type(client).__mro__)
        # the table, the URL, their route, whether the URL's server streams usage unasked
        self._resolved: tuple[PriceTable, Any, Route, bool] | None = None

    def _current_url(self) -> Any:
        client = self._client
        try:
            name = self._url_attr
            return client.base_url if name is None else client.__dict__[name]
        except Exception:  # not the SDK's client: a host nobody knows
            return None

    def route(self, table: PriceTable) -> Route:
        """The route of this client's calls in ``table`` (two identity checks once resolved)."""
        resolved = self._resolved  # one read: another thread may replace it
        url = self._current_url()
        if resolved is not None and resolved[0] is table and resolved[1] is url:
            return resolved[2]
        try:
            base_url, (host, port) = str(url), _address(url)
        except Exception:
            base_url, host, port = "", None, None
        provider = detect_provider(base_url, azure=self.azure)
        route = table.route(host, port, provider=provider)
        self._resolved = (table, url, route, provider in _USAGE_UNASKED)
        return route

    def usage_unasked(self, table: PriceTable) -> bool:
        """Whether this client's server streams chat usage unasked (``_USAGE_UNASKED``: Moonshot's), by its
        base URL; resolved with :meth:`route`."""
        self.route(table)
        resolved = self._resolved
        return resolved is not None and resolved[3]


def server_of(url: Any) -> ServerShape:
    """The server of an HTTP request URL (an ``httpx`` URL); unknown parts are ``None``. Never raises.

    Its ``provider`` is the default; the monitor sets the one of the client's :class:`Endpoint`."""
    try:
        address, port = _address(url)  # no cache: its key (the URL's netloc) cost more than this
    except Exception:
        address = port = None
    return {"address": address, "port": port, "provider": DEFAULT_PROVIDER}
