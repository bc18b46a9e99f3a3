"""Where a call went: the server's address and port, and the provider behind it.

The provider uses OpenTelemetry's ``gen_ai.provider.name`` vocabulary. A host this table does not
know (a self-hosted server, a proxy) is ``openai``: what the OpenAI client speaks, as the GenAI
conventions ask of an OpenAI client talking to a compatible server; ``server.address`` then tells
the real backend apart.
"""

from __future__ import annotations

from typing import Any, Final

from ._records import ServerShape

__all__ = ["DEFAULT_PROVIDER", "server_of"]

DEFAULT_PROVIDER: Final = "openai"

# host suffix -> gen_ai.provider.name (well-known values of the GenAI conventions, plus openrouter)
_PROVIDERS: Final = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    (".azure-api.net", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    (".models.ai.azure.com", "azure.ai.inference"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.x.ai", "x_ai"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.moonshot.ai", "moonshot_ai"),
    ("openrouter.ai", "openrouter"),
)
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
# (scheme, netloc) -> shape; hosts are few (one per client base URL), the cap only guards a bug
_cache: dict[tuple[str, bytes], ServerShape] = {}


def _provider(host: str) -> str:
    for suffix, provider in _PROVIDERS:
        if host == suffix.lstrip(".") or host.endswith(suffix if suffix[0] == "." else "." + suffix):
            return provider
    return DEFAULT_PROVIDER


def server_of(url: Any) -> ServerShape:
    """The server of an HTTP request URL (an ``httpx`` URL); unknown parts are ``None``. Never raises."""
    try:
        key = (url.scheme, url.netloc)
        shape = _cache.get(key)
        if shape is None:
            host = url.host.lower() or None
            port = url.port or _DEFAULT_PORTS.get(url.scheme)
            shape = {"address": host, "port": port, "provider": _provider(host) if host else DEFAULT_PROVIDER}
            if len(_cache) < 1024:
                _cache[key] = shape
        return {"address": shape["address"], "port": shape["port"], "provider": shape["provider"]}
    except Exception:
        return {"address": None, "port": None, "provider": DEFAULT_PROVIDER}
