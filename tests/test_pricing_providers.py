"""Provider-aware prices: the provider of each client, host entries in the price file, costs the provider
reports, Azure deployments, all through the real SDK against the loopback server."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest

import llm_ledger
from llm_ledger import HostPrice, PriceTable, Rates, _servers
from llm_ledger._errors import ConfigError, PriceFileError
from llm_ledger.testing import Captured, FakeOpenAI
from tests.conftest import FAKE_KEY, Sdk
from tests.sdk import sdk_http

HI: Any = [{"role": "user", "content": "hello there"}]
GENAI = f"genai-prices {genai_prices.__version__}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def port_of(fake: FakeOpenAI) -> int:
    return int(fake.base_url.rsplit(":", 1)[1].split("/")[0])


def expected_usd(provider: str | None, model: str, usage: dict[str, Any]) -> float:
    """The cost genai-prices itself computes for this usage (the independent reference)."""
    cached = usage["cached_tokens"] or 0
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["prompt_tokens"],
            cache_read_tokens=cached,
            output_tokens=usage["completion_tokens"],
        ),
        model,
        provider_id=provider or "openai",
    )
    return float(calc.total_price)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openrouter", "openai/gpt-4o"),
        ("groq", "llama-3.3-70b-versatile"),
        ("deepseek", "deepseek-v3.2"),  # one price all week (deepseek-chat's: test_cost_time_of_day.py)
        ("mistral", "mistral-large-latest"),
        ("x-ai", "grok-3"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct"),
        ("azure", "gpt-4o-2024-08-06"),
        ("openai", "gpt-4.1-mini"),
    ],
)
def test_each_provider_is_priced_at_its_own_rates(provider: str, model: str) -> None:
    """A provider's calls cost what genai-prices says that provider charges for the model."""
    usage = {"prompt_tokens": 10_000, "cached_tokens": 0, "completion_tokens": 2_000}
    cost = PriceTable().cost(model, prompt_tokens=10_000, completion_tokens=2_000, provider=provider)
    assert cost is not None
    assert float(cost.total_cost_usd) == pytest.approx(expected_usd(provider, model, usage), rel=1e-12)


def test_an_unknown_provider_name_is_an_error_not_openais_list_price() -> None:
    """cost(provider="grok") (a typo) is a ConfigError naming the close match, as `reprice --provider`
    is, rather than a figure silently at OpenAI's list price."""
    for priced in (
        lambda: PriceTable().cost("gpt-4o", prompt_tokens=1_000, completion_tokens=0, provider="grok"),
        lambda: PriceTable().rates("gpt-4o", provider="grok"),
        lambda: llm_ledger.price("gpt-4o", prompt_tokens=1_000, completion_tokens=0, provider="grok"),
    ):
        with pytest.raises(ConfigError, match=r"unknown provider 'grok' \(did you mean 'groq'"):
            priced()


def test_a_known_provider_never_borrows_another_vendors_price() -> None:
    """A model its provider does not list is unpriced (None), not priced at OpenAI's list price."""
    table = PriceTable()
    assert table.cost("gpt-4o", prompt_tokens=1_000, completion_tokens=1_000) is not None
    assert table.cost("gpt-4o", prompt_tokens=1_000, completion_tokens=1_000, provider="groq") is None
    assert table.route(provider="groq").matched_by == "provider"


def test_openrouter_client_records_its_provider_and_its_rates(
    sdk: Sdk, monitor: llm_ledger.LLMCallMonitor, records: Captured, tmp_path: Path
) -> None:
    """A host the price file maps to a provider (a gateway in front of OpenRouter) is priced at that
    provider's rates for its model ids, and the record names the provider and how it was chosen."""
    monitor.prices = PriceTable.from_file(
        write(tmp_path, 'version: 1\nhosts:\n  "127.0.0.1": {provider: openrouter}\n')
    )
    client = sdk(monitor)
    client.chat.completions.create(model="openai/gpt-4o", messages=HI)
    (call,) = records.calls
    assert call["server"]["provider"] == "openrouter"
    assert call["cost"]["matched_by"] == "host"
    assert call["cost"]["source"] == GENAI
    assert call["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("openrouter", "openai/gpt-4o", call["usage"]), rel=1e-12
    )


def test_unmapped_loopback_host_keeps_the_model_name_match_and_says_so(
    client: openai.OpenAI, records: Captured
) -> None:
    """A host nobody mapped (the loopback test server) is priced by model name at OpenAI's list price,
    as before, and the record says the price was matched by model name only."""
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    (call,) = records.calls
    assert call["server"]["provider"] == "openai"
    assert call["cost"]["matched_by"] == "model"
    assert call["cost"]["source"] == GENAI
    assert call["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("openai", "gpt-4o-mini", call["usage"]), rel=1e-12
    )
    assert call["cost"]["computed_usd"] is None


def test_self_hosted_host_is_priced_at_its_own_rate_never_the_list_price(
    fake_openai: FakeOpenAI, sdk: Sdk, monitor: llm_ledger.LLMCallMonitor, records: Captured, tmp_path: Path
) -> None:
    """A host mapped to a rate (0 for a vLLM or Ollama box) prices every model at that rate; host:port
    wins over the bare host, which wins over a pattern."""
    port = port_of(fake_openai)
    monitor.prices = PriceTable.from_file(
        write(
            tmp_path,
            f"""\
            version: 1
            hosts:
              "127.0.0.*": {{input: 100, output: 100}}
              "127.0.0.1": {{input: 50, output: 50}}
              "127.0.0.1:{port}": {{provider: vllm, input: 0, output: 0}}
            """,
        )
    )
    client = sdk(monitor)
    client.chat.completions.create(model="gpt-4o", messages=HI)
    client.chat.completions.create(model="my-own-llama", messages=HI)
    for call in records.calls:
        assert call["server"]["provider"] == "vllm"
        assert call["cost"] == {
            "prompt_cost_usd": 0.0,
            "completion_cost_usd": 0.0,
            "total_cost_usd": 0.0,
            "source": "price-file",
            "matched_by": "host",
            "computed_usd": None,
            "priced_at": None,
            "left_out": None,
            "tool_fees_usd": None,
        }


def test_host_rate_without_a_provider_name_is_self_hosted(tmp_path: Path) -> None:
    """A host given only a rate is recorded as ``self-hosted``; exact hosts win over patterns, in file
    order among patterns; hosts are matched case-insensitively."""
    table = PriceTable.from_file(
        write(
            tmp_path,
            """\
            version: 1
            hosts:
              "*.internal.example.com": {input: 1, output: 2}
              "*.example.com": {input: 3, output: 4}
              "gpu-7.internal.example.com": {input: 5, output: 6}
            """,
        )
    )
    assert table.route("GPU-1.internal.example.com").rates("x") == Rates(
        "*.internal.example.com", Decimal(1), Decimal(2), None, "price-file"
    )
    assert table.route("gpu-7.internal.example.com").rates("x").input == Decimal(5)  # type: ignore[union-attr]
    assert table.route("api.example.com").provider == "self-hosted"
    assert table.route("example.com").matched_by == "model"  # "*." needs a subdomain


def test_reported_cost_wins_and_both_are_kept_when_they_differ(
    client: openai.OpenAI, records: Captured, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """OpenRouter's ``usage.cost`` is the call's cost; when the price table says otherwise its figure is
    kept in ``computed_usd`` (the split is then unknown); the lens total adds the reported costs."""
    with monitor.lens("reported") as run:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-cost": "0.125"}
        )
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, extra_headers={"x-fake-cost": "0.25"}
        ):
            pass
    plain, streamed = records.calls
    computed = expected_usd("openai", "gpt-4o-mini", plain["usage"])
    assert plain["cost"] == {
        "prompt_cost_usd": None,
        "completion_cost_usd": None,
        "total_cost_usd": 0.125,
        "source": "provider-reported",
        "matched_by": "model",
        "computed_usd": pytest.approx(computed, rel=1e-12),
        "priced_at": None,
        "left_out": None,
        "tool_fees_usd": None,
    }
    assert streamed["cost"]["total_cost_usd"] == 0.25
    assert streamed["cost"]["source"] == "provider-reported"
    assert run.summary is not None and run.summary["total_cost_usd"] == pytest.approx(0.375, rel=1e-12)


def test_reported_cost_equal_to_the_computed_one_keeps_the_split(
    client: openai.OpenAI, records: Captured
) -> None:
    """When the provider's figure matches the table's, the record keeps the prompt/completion split."""
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    computed = records.calls[0]["cost"]
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-cost": repr(computed["total_cost_usd"])}
    )
    cost = records.calls[1]["cost"]
    assert cost["source"] == "provider-reported"
    assert cost["computed_usd"] is None
    assert (cost["prompt_cost_usd"], cost["completion_cost_usd"], cost["total_cost_usd"]) == (
        computed["prompt_cost_usd"],
        computed["completion_cost_usd"],
        computed["total_cost_usd"],
    )


def test_reported_cost_prices_a_model_no_table_knows(client: openai.OpenAI, records: Captured) -> None:
    """A model without a price still costs what the provider reported."""
    client.responses.create(model="no-such-model", input="hi", extra_headers={"x-fake-cost": "0.003"})
    (call,) = records.calls
    assert call["cost"]["total_cost_usd"] == 0.003
    assert call["cost"]["computed_usd"] is None
    assert call["cost"]["source"] == "provider-reported"


def test_azure_deployment_is_priced_by_the_model_the_response_reports(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, internal_log: Any
) -> None:
    """An AzureOpenAI client is ``azure`` wherever it points; a deployment name is priced by the model
    Azure answers with, at Azure's rates; a deployment answering with an unknown model is unpriced."""
    endpoint = fake_openai.base_url.removesuffix("/v1")
    azure = monitor.instrument(
        openai.AzureOpenAI(api_key=FAKE_KEY, azure_endpoint=endpoint, api_version="2024-10-21", max_retries=0)
    )
    azure.chat.completions.create(
        model="prod-gpt4o", messages=HI, extra_headers={"x-fake-served-model": "gpt-4o-2024-08-06"}
    )
    azure.chat.completions.create(model="prod-gpt4o", messages=HI)
    azure.close()
    assert fake_openai.requests[0].path == "/openai/deployments/prod-gpt4o/chat/completions"
    priced, unpriced = records.calls
    assert priced["server"]["provider"] == "azure"
    assert priced["cost"]["matched_by"] == "provider"
    assert priced["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("azure", "gpt-4o-2024-08-06", priced["usage"]), rel=1e-12
    )
    assert unpriced["cost"]["total_cost_usd"] is None and unpriced["cost"]["source"] is None
    assert "no price known for model 'prod-gpt4o' at provider 'azure'" in internal_log.text


@pytest.mark.parametrize("stream", [False, True])
def test_azure_responses_are_recorded_and_priced_as_azure(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, stream: bool
) -> None:
    """AzureOpenAI calls the Responses API at ``/openai/responses`` (no deployment in the path): the
    call is recorded with its usage and priced at Azure's rates for the model the answer names."""
    endpoint = fake_openai.base_url.removesuffix("/v1")
    azure = monitor.instrument(
        openai.AzureOpenAI(
            api_key=FAKE_KEY, azure_endpoint=endpoint, api_version="2025-03-01-preview", max_retries=0
        )
    )
    with azure:
        if stream:
            for _ in azure.responses.create(model="gpt-4o-mini", input="hi", stream=True):
                pass
        else:
            azure.responses.create(model="gpt-4o-mini", input="hi")
    assert fake_openai.requests[0].path == "/openai/responses"
    (call,) = records.calls
    assert call["status"] == "ok" and call["server"]["provider"] == "azure"
    body = fake_openai.answers[-1].body
    answer = body[-1]["response"] if stream else body  # a stream's last event: response.completed
    assert call["usage"]["total_tokens"] == answer["usage"]["total_tokens"]
    assert call["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("azure", call["response"]["model"], call["usage"]), rel=1e-12
    )


def test_a_price_file_entry_for_the_deployment_name_wins_over_the_list_price(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """An Azure deployment with a negotiated price in the price file is billed at it, although the
    model Azure answers with has a built-in price; an entry for the served model wins likewise."""
    prices = write(
        tmp_path,
        """\
        version: 1
        models:
          prod-gpt4o: {input: 2.0, output: 8.0}
          gpt-4o-mini: {input: 0.1, output: 0.4}
        """,
    )
    monitor = llm_ledger.LLMCallMonitor(logger=None, prices=prices)
    endpoint = fake_openai.base_url.removesuffix("/v1")
    azure = monitor.instrument(
        openai.AzureOpenAI(api_key=FAKE_KEY, azure_endpoint=endpoint, api_version="2024-10-21", max_retries=0)
    )
    with llm_ledger.testing.capture(monitor) as records:
        azure.chat.completions.create(
            model="prod-gpt4o", messages=HI, extra_headers={"x-fake-served-model": "gpt-4o-2024-08-06"}
        )
        azure.chat.completions.create(
            model="prod-mini", messages=HI, extra_headers={"x-fake-served-model": "gpt-4o-mini"}
        )
    azure.close()
    negotiated, served = records.calls
    # "hello there": 7 prompt tokens; "Summary: hello there": 5 completion tokens
    assert (negotiated["usage"]["prompt_tokens"], negotiated["usage"]["completion_tokens"]) == (7, 5)
    assert negotiated["cost"]["total_cost_usd"] == pytest.approx(0.000054, rel=1e-12)  # 7 * 2 + 5 * 8
    assert negotiated["cost"]["source"] == "price-file"
    assert served["cost"]["total_cost_usd"] == pytest.approx(0.0000027, rel=1e-12)  # 7 * 0.1 + 5 * 0.4
    assert served["cost"]["source"] == "price-file"


def test_provider_is_found_once_per_client_and_again_when_prices_change(
    sdk: Sdk,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Detection runs at a client's first call only, not per call; a new price table re-routes it."""
    seen: list[str] = []
    real = _servers.detect_provider

    def counting(base_url: str, *, azure: bool = False) -> str | None:
        seen.append(base_url)
        return real(base_url, azure=azure)

    monkeypatch.setattr(_servers, "detect_provider", counting)
    client = sdk(monitor)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(seen) == 1
    monitor.prices = PriceTable.from_file(
        write(tmp_path, 'version: 1\nhosts:\n  "127.0.0.1": {input: 0, output: 0}\n')
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert len(seen) == 2
    assert [c["cost"]["matched_by"] for c in records.calls] == ["model"] * 3 + ["host"]
    assert records.calls[-1]["cost"]["total_cost_usd"] == 0.0


def test_a_reassigned_base_url_is_priced_at_its_new_host(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, tmp_path: Path
) -> None:
    """``client.base_url = ...`` after instrument() moves the client's calls to the new host's route,
    as ``with_options(base_url=...)`` does; they were priced at the first host's rates before."""
    with FakeOpenAI() as gateway:
        monitor.prices = PriceTable.from_file(
            write(
                tmp_path,
                f"""\
                version: 1
                hosts:
                  "127.0.0.1:{port_of(fake_openai)}": {{provider: vllm, input: 0, output: 0}}
                  "127.0.0.1:{port_of(gateway)}": {{provider: openrouter}}
                """,
            )
        )
        # closed: its connection to the session's server would otherwise warn in a later test
        with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
            client = monitor.instrument(raw)
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
            client.base_url = gateway.base_url
            client.chat.completions.create(model="openai/gpt-4o", messages=HI)
    first, second = records.calls
    assert (first["server"]["provider"], first["cost"]["total_cost_usd"]) == ("vllm", 0.0)
    assert second["server"]["port"] == port_of(gateway)
    assert second["server"]["provider"] == "openrouter"
    assert second["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("openrouter", "openai/gpt-4o", second["usage"]), rel=1e-12
    )


BAD_HOSTS = [
    ('"http://vllm.internal": {input: 0, output: 0}', "a scheme (http://) is not part of a host"),
    ('"vllm.internal/v1": {input: 0, output: 0}', "a path is not part of a host"),
    ('"vllm.internal:99999": {input: 0, output: 0}', "port 99999 is not between 1 and 65535"),
    ('"vllm internal": {input: 0, output: 0}', "only letters, digits"),
    ('"[a-z].internal": {input: 0, output: 0}', "only letters, digits"),
    ('"admin@vllm.internal": {input: 0, output: 0}', "a user@ part is not part of a host"),
]


@pytest.mark.parametrize(("entry", "why"), BAD_HOSTS)
def test_bad_host_pattern_names_file_line_key_and_the_valid_form(
    tmp_path: Path, entry: str, why: str
) -> None:
    """A host pattern that is not one fails at its line, saying why and what a host pattern looks like."""
    path = write(tmp_path, f"version: 1\nhosts:\n  {entry}\n")
    with pytest.raises(PriceFileError) as err:
        PriceTable.from_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: hosts.")
    assert f"not a host pattern: {why}" in message
    assert 'e.g. "localhost:11434", "*.internal.example.com", "10.0.0.*"' in message


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            '"gw.internal": {provider: grok}',
            "3: hosts.gw.internal.provider: unknown provider 'grok' (did you mean 'groq'?); known providers: "
            "anthropic, ",
        ),
        ('"gw.internal": {}', "3: hosts.gw.internal: expected a mapping with 'provider'"),
        ('"gw.internal": {input: 1}', "3: hosts.gw.internal: missing required key 'output'"),
        ('"gw.internal": {provider: 7, input: 1, output: 1}', "3: hosts.gw.internal.provider: expected a "),
        (
            '"gw.internal": {provider: " ", input: 1, output: 1}',
            "3: hosts.gw.internal.provider: expected a provider name, got ' '",
        ),
        (
            '"gw.internal": {provider: openai, rate: 0}',
            "3: hosts.gw.internal.rate: unknown key; valid keys: ",
        ),
    ],
)
def test_bad_host_entries_say_what_is_wrong(tmp_path: Path, entry: str, message: str) -> None:
    """Unknown providers (with close matches), empty entries and half rates are errors at their line."""
    path = write(tmp_path, f"version: 1\nhosts:\n  {entry}\n")
    with pytest.raises(PriceFileError) as err:
        PriceTable.from_file(path)
    assert str(err.value).startswith(f"{path}:{message}")


def test_host_prices_in_python_are_checked_too() -> None:
    """The same rules hold for ``PriceTable(hosts=...)``: bad patterns and unknown providers raise."""
    with pytest.raises(ConfigError, match="not a host pattern: a path is not part of a host"):
        PriceTable(hosts={"gw/v1": HostPrice("openai")})
    with pytest.raises(ConfigError, match="unknown provider 'open-ai' \\(did you mean 'openai'"):
        HostPrice("open-ai")
    with pytest.raises(ConfigError, match="give a provider, rates, or both"):
        HostPrice()
    with pytest.raises(ConfigError, match=r"hosts\['GW.internal'\]: the same host pattern as 'gw.internal'"):
        PriceTable(hosts={"gw.internal": HostPrice("groq"), "GW.internal": HostPrice("openai")})
    table = PriceTable(hosts={"GW.internal:8080": HostPrice("groq")})
    assert table.route("gw.internal", 8080).provider == "groq"
    assert table.route("gw.internal", 8081).matched_by == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_deepseek_cache_hits_are_priced_at_the_cached_rate(
    client: openai.OpenAI, records: Captured, stream: bool
) -> None:
    """DeepSeek reports its cached prompt tokens as ``prompt_cache_hit_tokens`` (no
    ``prompt_tokens_details``): they are the call's cached tokens, billed at the cached rate, as the
    same usage in OpenAI's shape is; streamed or not."""
    words = "word " * 3000
    for style in ("openai", "deepseek"):
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": words}],
            stream=stream,
            extra_headers={"x-fake-cached-tokens": "2048", "x-fake-usage-style": style},
        )
        if stream:
            for _ in answer:
                pass
    openai_shape, deepseek_shape = records.calls
    assert deepseek_shape["usage"]["cached_tokens"] == 2048
    assert deepseek_shape["usage"] == openai_shape["usage"]
    assert deepseek_shape["cost"] == openai_shape["cost"]
    assert deepseek_shape["cost"]["prompt_cost_usd"] < expected_usd(
        "openai", "gpt-4o-mini", {**deepseek_shape["usage"], "cached_tokens": 0}
    )


class _ToLoopback(sdk_http.BaseTransport):
    """The SDK's requests to a public host carried to the loopback server instead (the host cannot be
    reached here); the SDK, and the ledger, still see the host the client names."""

    def __init__(self, server: FakeOpenAI) -> None:
        self._server = sdk_http.URL(server.base_url)
        self._inner = sdk_http.HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        url = request.url.copy_with(scheme="http", host=self._server.host, port=self._server.port)
        return self._inner.handle_request(
            sdk_http.Request(request.method, url, headers=request.headers, content=request.read())
        )

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("region", ["eu", "us"])
def test_openais_data_residency_endpoints_are_openai(
    region: str, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A client of OpenAI's data residency endpoint (https://eu.api.openai.com/v1) is OpenAI's: its
    calls are priced at OpenAI's rates and say so (matched_by "provider"), not by model name alone."""
    with openai.OpenAI(
        api_key=FAKE_KEY,
        base_url=f"https://{region}.api.openai.com/v1",
        max_retries=0,
        http_client=sdk_http.Client(transport=_ToLoopback(fake_openai)),
    ) as raw:
        monitor.instrument(raw).chat.completions.create(model="gpt-4o-mini", messages=HI)
    (call,) = records.calls
    assert call["server"]["address"] == f"{region}.api.openai.com"
    assert (call["server"]["provider"], call["cost"]["matched_by"]) == ("openai", "provider")
    assert call["cost"]["total_cost_usd"] == pytest.approx(
        expected_usd("openai", "gpt-4o-mini", call["usage"]), rel=1e-12
    )
