"""Where a call went: ``server`` in every call record (address, port, and the provider behind it)."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

import llm_ledger
from llm_ledger._servers import server_of
from llm_ledger.testing import Captured, FakeOpenAI
from tests.conftest import FAKE_KEY


@pytest.mark.parametrize(
    ("url", "address", "port", "provider"),
    [
        ("https://api.openai.com/v1", "api.openai.com", 443, "openai"),
        ("https://acme.openai.azure.com/openai/v1", "acme.openai.azure.com", 443, "azure.ai.openai"),
        (
            "https://acme.cognitiveservices.azure.com/",
            "acme.cognitiveservices.azure.com",
            443,
            "azure.ai.openai",
        ),
        ("https://API.GROQ.COM/openai/v1", "api.groq.com", 443, "groq"),
        ("https://api.deepseek.com", "api.deepseek.com", 443, "deepseek"),
        ("https://openrouter.ai/api/v1", "openrouter.ai", 443, "openrouter"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "generativelanguage.googleapis.com",
            443,
            "gcp.gemini",
        ),
        ("http://localhost:8000/v1", "localhost", 8000, "openai"),
        ("http://notapi.openai.com.evil.example/v1", "notapi.openai.com.evil.example", 80, "openai"),
    ],
)
def test_known_hosts_name_their_provider(url: str, address: str, port: int, provider: str) -> None:
    """Hosts map to OTel's gen_ai.provider.name; an unknown host (self-hosted, a proxy) is ``openai``."""
    assert server_of(httpx2.URL(url)) == {"address": address, "port": port, "provider": provider}


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
    closed = monitor.instrument(
        openai.OpenAI(api_key=FAKE_KEY, base_url="http://127.0.0.1:9/v1", max_retries=0)
    )
    with pytest.raises(openai.APIConnectionError):
        closed.embeddings.create(model="text-embedding-3-small", input="x")
    port = int(fake_openai.base_url.rsplit(":", 1)[1].split("/")[0])
    assert [c["server"] for c in records.calls] == [
        {"address": "127.0.0.1", "port": port, "provider": "openai"},
    ] * 3 + [{"address": "127.0.0.1", "port": 9, "provider": "openai"}]
    assert [c["status"] for c in records.calls] == ["ok", "ok", "error", "error"]
