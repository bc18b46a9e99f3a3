"""The request parameters a record keeps (temperature, top_p, penalties, seed, n, reasoning effort,
output type, embeddings' dimensions and encoding, stop sequences, verbosity), through the real SDK
over loopback HTTP: each as one JSON type, null when absent or of another type, never a failed call."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from llm_ledger._cli import main
from llm_ledger.testing import Captured, FakeOpenAI

HI: Any = [{"role": "user", "content": "hi"}]
# every parameter field of the record, and what a request that names none of them records
PARAMETERS = {
    "temperature": None,
    "top_p": None,
    "frequency_penalty": None,
    "presence_penalty": None,
    "max_tokens": None,
    "seed": None,
    "n": None,
    "reasoning_effort": None,
    "output_type": None,
    "tools_count": 0,
    "service_tier": None,
    "dimensions": None,
    "encoding_format": None,
    "stop_sequences": None,
    "verbosity": None,
}


class Answer(pydantic.BaseModel):
    summary: str


def _parameters(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record["request"][key] for key in PARAMETERS}


def _drain(answer: Any, stream: bool) -> None:
    if stream:
        for _ in answer:
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_parameters_are_recorded(client: openai.OpenAI, records: Captured, stream: bool) -> None:
    """Every parameter of a chat call, streamed or not; an integer temperature or penalty is a float."""
    answer = client.chat.completions.create(
        model="gpt-5-mini", messages=HI, stream=stream, temperature=1, top_p=0.5,
        frequency_penalty=0.25, presence_penalty=-1, seed=42, n=2, reasoning_effort="high",
        response_format={"type": "json_object"}, max_completion_tokens=300, service_tier="flex",
        stop=["\n\n", "END"], verbosity="low",
    )  # fmt: skip
    _drain(answer, stream)
    [record] = records.calls
    assert record["status"] == "ok"
    assert _parameters(record) == {
        **PARAMETERS,
        "temperature": 1.0,
        "top_p": 0.5,
        "frequency_penalty": 0.25,
        "presence_penalty": -1.0,
        "max_tokens": 300,
        "seed": 42,
        "n": 2,
        "reasoning_effort": "high",
        "output_type": "json_object",
        "service_tier": "flex",
        "stop_sequences": ["\n\n", "END"],
        "verbosity": "low",
    }
    floats = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
    assert all(type(record["request"][key]) is float for key in floats)


def test_parameters_not_passed_are_null(client: openai.OpenAI, records: Captured) -> None:
    """A call naming none of the parameters records each as null (no tools: 0)."""
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.responses.create(model="gpt-4o-mini", input="hi")
    for record in records.calls:
        assert _parameters(record) == PARAMETERS


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_parameters_are_recorded(client: openai.OpenAI, records: Captured, stream: bool) -> None:
    """A Responses call's ``reasoning.effort`` is the record's ``reasoning_effort`` and its
    ``text.format`` type its ``output_type``, streamed or not."""
    schema: Any = {
        "type": "json_schema",
        "name": "Answer",
        "schema": Answer.model_json_schema(),
        "strict": True,
    }
    answer = client.responses.create(
        model="o4-mini", input="think", stream=stream, temperature=0.5, top_p=1,
        reasoning={"effort": "minimal", "summary": "auto"}, text={"format": schema, "verbosity": "high"},
        max_output_tokens=200,
    )  # fmt: skip
    _drain(answer, stream)
    [record] = records.calls
    assert record["status"] == "ok"
    assert _parameters(record) == {
        **PARAMETERS,
        "temperature": 0.5,
        "top_p": 1.0,
        "max_tokens": 200,
        "reasoning_effort": "minimal",
        "output_type": "json_schema",
        "verbosity": "high",
    }


def test_structured_outputs_record_json_schema(client: openai.OpenAI, records: Captured) -> None:
    """``parse()`` with a pydantic model (chat's ``response_format``, the Responses API's
    ``text_format``) sends a json_schema format: that is the recorded ``output_type``."""
    client.chat.completions.parse(model="gpt-4o-mini", messages=HI, response_format=Answer)
    client.responses.parse(model="gpt-4o-mini", input="hi", text_format=Answer)
    client.responses.create(model="gpt-4o-mini", input="hi", text={"format": {"type": "text"}})
    assert [r["request"]["output_type"] for r in records.calls] == ["json_schema", "json_schema", "text"]


def test_text_completion_parameters_are_recorded(client: openai.OpenAI, records: Captured) -> None:
    """The legacy text completions keep the same parameters as chat; one stop string is a list of one."""
    client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="hi", n=3, seed=-1, top_p=0.1, temperature=0,
        frequency_penalty=1, presence_penalty=1.5, max_tokens=20, stop="###",
    )  # fmt: skip
    [record] = records.calls
    assert record["operation"] == "text_completion" and record["status"] == "ok"
    assert _parameters(record) == {
        **PARAMETERS,
        "temperature": 0.0,
        "top_p": 0.1,
        "frequency_penalty": 1.0,
        "presence_penalty": 1.5,
        "max_tokens": 20,
        "seed": -1,
        "n": 3,
        "stop_sequences": ["###"],
    }


def test_embeddings_dimensions_and_encoding_are_recorded_as_sent(
    client: openai.OpenAI, records: Captured, fake_openai: FakeOpenAI
) -> None:
    """``dimensions`` and ``encoding_format`` as the SDK sends them: ``base64`` when the caller named
    none (the SDK asks for it, then decodes the vectors), else the caller's."""
    client.embeddings.create(
        model="text-embedding-3-small", input="a", dimensions=16, encoding_format="float"
    )
    client.embeddings.create(model="text-embedding-3-small", input="a")
    assert fake_openai.requests[-1].json["encoding_format"] == "base64"
    sixteen, default = records.calls
    assert _parameters(sixteen) == {**PARAMETERS, "dimensions": 16, "encoding_format": "float"}
    assert _parameters(default) == {**PARAMETERS, "encoding_format": "base64"}


def test_odd_values_are_null_and_never_break_the_call(
    client: openai.OpenAI, records: Captured, internal_log: pytest.LogCaptureFixture
) -> None:
    """A value of another type than the parameter's (a string seed, ``n=True``, a dict reasoning
    effort, a string limit, a seed past 64 bits...) records null, so an index maps each field to one
    JSON type; the call succeeds and the ledger reports nothing."""
    odd: Any = {
        "seed": "42", "n": True, "reasoning_effort": {"effort": "high"}, "temperature": True,
        "top_p": "0.5", "frequency_penalty": None, "presence_penalty": 2**70, "max_tokens": "9",
        "response_format": {"type": 5}, "service_tier": 1, "tools": "none", "stop": ["a", 1],
        "verbosity": 2,
    }  # fmt: skip
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_body=odd)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, seed=2**64, n=0)
    not_a_type: Any = {"reasoning": "high", "text": {"format": {"type": None}, "verbosity": ["low"]}}
    client.responses.create(model="o4-mini", input="hi", **not_a_type)
    listed: Any = {"effort": ["high"]}
    client.responses.create(model="o4-mini", input="hi", reasoning=listed, top_p=None)
    client.embeddings.create(model="text-embedding-3-small", input="a", dimensions=True, encoding_format=5)  # type: ignore[arg-type]
    assert [r["status"] for r in records.calls] == ["ok"] * 5
    odd_chat, big_seed, *others = records.calls
    assert _parameters(odd_chat) == PARAMETERS
    assert _parameters(big_seed) == {**PARAMETERS, "n": 0}  # 0 is an integer (the server's to refuse)
    for record in others:
        assert _parameters(record) == PARAMETERS
    assert not [r for r in internal_log.records if r.levelno >= logging.WARNING]


def test_a_limit_given_as_a_string_is_null(client: openai.OpenAI, records: Captured) -> None:
    """``max_tokens="9"`` (a config value passed on unconverted; lenient servers accept it) is null,
    not the string: a log index that mapped ``max_tokens`` as an integer would refuse the line."""
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_body={"max_tokens": "9"})
    client.responses.create(model="gpt-4o-mini", input="hi", extra_body={"max_output_tokens": 99.0})
    assert [r["request"]["max_tokens"] for r in records.calls] == [None, None]


def test_report_by_reasoning_effort(
    client: openai.OpenAI, records: Captured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger report --by request.reasoning_effort`` splits the calls and their cost by the
    effort asked for, chat's and the Responses API's alike; calls that named none group under null."""
    thinking = {"x-fake-reasoning-tokens": "500"}
    client.chat.completions.create(
        model="o4-mini", messages=HI, reasoning_effort="low", extra_headers=thinking
    )
    client.responses.create(model="o4-mini", input="hi", reasoning={"effort": "high"}, extra_headers=thinking)
    client.responses.create(model="o4-mini", input="hi", reasoning={"effort": "high"}, extra_headers=thinking)
    client.chat.completions.create(model="o4-mini", messages=HI)
    log = tmp_path / "llm_calls.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert main(["report", str(log), "--by", "request.reasoning_effort", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    found = {row["key"]["request.reasoning_effort"]: (row["calls"], row["cost_usd"]) for row in rows}
    costs: dict[Any, float] = {}
    for record in records.calls:
        effort = record["request"]["reasoning_effort"]
        costs[effort] = costs.get(effort, 0) + record["cost"]["total_cost_usd"]
    assert {effort: calls for effort, (calls, _) in found.items()} == {"low": 1, "high": 2, None: 1}
    assert {effort: cost for effort, (_, cost) in found.items()} == pytest.approx(costs)
