"""Where a call went: ``server`` in every call record (address, port, and the provider behind it)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import httpx2
import openai
import pytest

import llm_ledger
from llm_ledger._servers import Endpoint, otel_provider_name, server_of
from llm_ledger.testing import Captured, FakeOpenAI
from tests.conftest import FAKE_KEY
from tests.test_pricing_providers import port_of


@pytest.mark.parametrize(
    ("url", "address", "port", "provider", "otel_name"),
    [
        ("https://api.openai.com/v1", "api.openai.com", 443, "openai", "openai"),
        ("https://acme.openai.azure.com/openai/v1", "acme.openai.azure.com", 443, "azure", "azure.ai.openai"),
        (
            "https://acme.cognitiveservices.azure.com/",
            "acme.cognitiveservices.azure.com",
            443,
            "azure",
            "azure.ai.openai",
        ),
        ("https://API.GROQ.COM/openai/v1", "api.groq.com", 443, "groq", "groq"),
        ("https://api.deepseek.com", "api.deepseek.com", 443, "deepseek", "deepseek"),
        ("https://openrouter.ai/api/v1", "openrouter.ai", 443, "openrouter", "openrouter"),
        ("https://api.together.xyz/v1", "api.together.xyz", 443, "together", "together"),
        ("https://api.fireworks.ai/inference/v1", "api.fireworks.ai", 443, "fireworks", "fireworks"),
        ("https://api.mistral.ai/v1", "api.mistral.ai", 443, "mistral", "mistral_ai"),
        ("https://api.x.ai/v1", "api.x.ai", 443, "x-ai", "x_ai"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "generativelanguage.googleapis.com",
            443,
            "google",
            "gcp.gen_ai",
        ),
        ("http://localhost:8000/v1", "localhost", 8000, "openai", "openai"),
        (
            "http://notapi.openai.com.evil.example/v1",
            "notapi.openai.com.evil.example",
            80,
            "openai",
            "openai",
        ),
    ],
)
def test_known_hosts_name_their_provider(
    url: str, address: str, port: int, provider: str, otel_name: str, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A client's base URL names its provider as genai-prices does (an unknown host, self-hosted or a
    proxy, is ``openai``), and each provider has OTel's gen_ai.provider.name."""
    endpoint = Endpoint(openai.OpenAI(api_key=FAKE_KEY, base_url=url))
    route = endpoint.route(monitor.prices)
    server = server_of(httpx2.URL(url))
    assert (server["address"], server["port"]) == (address, port)
    assert route.provider == provider
    assert route.matched_by == (
        "model" if address in ("localhost", "notapi.openai.com.evil.example") else "provider"
    )
    assert otel_provider_name(route.provider) == otel_name


def test_no_url_is_an_unknown_server() -> None:
    """Nothing known: no address or port, the OpenAI client's provider; never an exception."""
    assert server_of(None) == {"address": None, "port": None, "provider": "openai"}


def test_every_outcome_records_its_server(
    fake_openai: FakeOpenAI, client: openai.OpenAI, records: Captured, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """A call, a stream, an HTTP error and a connection error (no response) all record the server."""
    hi: Any = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True):
        pass
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=hi, extra_headers={"x-fake-status": "500"}
        )
    closed = openai.OpenAI(api_key=FAKE_KEY, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with closed, pytest.raises(openai.APIConnectionError):
        monitor.instrument(closed).embeddings.create(model="text-embedding-3-small", input="x")
    port = int(fake_openai.base_url.rsplit(":", 1)[1].split("/")[0])
    assert [c["server"] for c in records.calls] == [
        {"address": "127.0.0.1", "port": port, "provider": "openai"},
    ] * 3 + [{"address": "127.0.0.1", "port": 9, "provider": "openai"}]
    assert [c["status"] for c in records.calls] == ["ok", "ok", "error", "error"]


def test_calls_read_the_clients_url_from_its_attribute_not_its_base_url_property(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Each priced call checks the client's URL (a reassigned ``base_url`` moves its route) from the
    attribute behind the SDK's ``base_url`` property, never through it: from openai 3.61 the property
    runs an import on every read (about 3 µs a call), and the attribute is ``_configured_base_url``
    there (``_base_url`` before). The route still follows a reassigned URL."""
    sdk_property = inspect.getattr_static(openai.OpenAI, "base_url")
    reads: list[str] = []

    class Spied(openai.OpenAI):
        @property
        def base_url(self) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("llm_ledger"):  # the SDK reads it too, building each request
                reads.append(caller)
            return sdk_property.fget(self)

        @base_url.setter
        def base_url(self, url: Any) -> None:
            sdk_property.fset(self, url)

    hi: Any = [{"role": "user", "content": "hi"}]
    with FakeOpenAI() as other, Spied(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        client.base_url = other.base_url
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    assert reads == []
    assert [c["server"]["port"] for c in records.calls] == [port_of(fake_openai)] * 2 + [port_of(other)]
