"""A request's URL query is matched on replay: a changed query is a miss, never another call's answer."""

from __future__ import annotations

import json

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import load_yaml, run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

# a Response retrieved with the query the environment gives: include=[...] and extra_query={...}
RETRIEVE_TESTS = """
import json
import os

import openai
import pytest


@pytest.mark.llm
def test_retrieve():
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0) as client:
        created = client.responses.create(model="gpt-4o-mini", input="Summarise the report")
        raw = client.responses.with_raw_response.retrieve(
            created.id,
            include=json.loads(os.environ["LEDGER_TEST_INCLUDE"]),
            extra_query=json.loads(os.environ["LEDGER_TEST_QUERY"]),
        )
        print("sent query:", raw.http_request.url.query.decode())
        assert raw.parse().id == created.id
"""


def record_retrieve(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, include: list[str], query: dict[str, str]
) -> None:
    monkeypatch.setenv("LEDGER_TEST_INCLUDE", json.dumps(include))
    monkeypatch.setenv("LEDGER_TEST_QUERY", json.dumps(query))
    write_project(pytester, RETRIEVE_TESTS)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)


@pytest.mark.usefixtures("with_key")
def test_a_changed_query_is_a_miss_naming_the_query_difference(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``responses.retrieve(id, include=[...])`` recorded with one ``include`` and replayed with
    another (same method, API path and empty body) fails as a miss showing both values, instead of
    replaying the answer recorded for the other query."""
    record_retrieve(pytester, monkeypatch, ["message.output_text.logprobs"], {"limit": "10"})
    server.stop()
    monkeypatch.setenv("LEDGER_TEST_INCLUDE", json.dumps(["reasoning.encrypted_content"]))
    monkeypatch.setenv("LEDGER_TEST_QUERY", json.dumps({"limit": "20"}))

    result = run(pytester)

    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "matched on method, API path, query and body)" in out
    assert (
        "  closest recorded request: interactions[1] (same method and API path), the query differs at 2 "
        "place(s):"
    ) in out
    assert (
        "    ?['include[]']: recorded 'message.output_text.logprobs', requested 'reasoning.encrypted_content'"
        in out
    )
    assert "    ?.limit: recorded '10', requested '20'" in out


@pytest.mark.usefixtures("with_key")
def test_query_order_api_version_and_credentials_do_not_matter(
    pytester: pytest.Pytester, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query sent with its keys in another order replays, as does one with another ``api-version``
    (Azure's, per deployment) or without the credential it was recorded with (stored redacted); the
    values of a repeated key keep their order, and the cassette stores the query as it was sent."""
    include = ["message.output_text.logprobs", "reasoning.encrypted_content"]
    recorded = {"order": "asc", "after": "msg_1", "api-version": "2024-10-21", "key": "k" * 24}
    record_retrieve(pytester, monkeypatch, include, recorded)
    url = load_yaml(pytester.path / "cassettes/tests/test_app/test_retrieve.yaml")["interactions"][1][
        "request"
    ]["url"]
    assert url.endswith("order=asc&after=msg_1&api-version=2024-10-21&key=REDACTED")
    server.stop()
    monkeypatch.setenv(
        "LEDGER_TEST_QUERY", json.dumps({"api-version": "2025-04-01", "after": "msg_1", "order": "asc"})
    )

    replay = run(pytester, "-s")

    replay.assert_outcomes(passed=1)
    assert (
        "sent query: include%5B%5D=message.output_text.logprobs&include%5B%5D=reasoning.encrypted_content"
        "&api-version=2025-04-01&after=msg_1&order=asc" in replay.stdout.str()
    )

    monkeypatch.setenv("LEDGER_TEST_INCLUDE", json.dumps(include[::-1]))
    run(pytester).assert_outcomes(failed=1)  # a repeated key's values in another order: another request
