"""The fake OpenAI server, exercised end to end through the real ``openai`` SDK (sync and async)."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall, ResponseStreamEvent

from llm_ledger._fake_server import STREAM_ERROR, error_body
from llm_ledger.testing import FakeOpenAI
from tests.conftest import sigint_default
from tests.sdk import STREAM_BREAKS

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

MODEL = "gpt-4o-mini"
USER_TEXT = "Please summarise the quarterly report for the board"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": USER_TEXT}]


class Person(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str]
    nickname: str | None


class Weather(pydantic.BaseModel):
    city: str


WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "parameters": Weather.model_json_schema(),
    "strict": False,
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=2) as sdk:
        yield sdk


def async_client(fake: FakeOpenAI, max_retries: int = 2) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=max_retries)


# -- chat completions ----------------------------------------------------------------------------------


def test_chat_non_stream(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=USER)

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Summary: Please summarise the quarterly report for the board"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == math.ceil(len(USER_TEXT) / 4) + 4
    assert usage.completion_tokens == math.ceil(len(choice.message.content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["messages"] == USER
    assert request.retry_count == 0


def test_chat_usage_and_content_control_headers(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
    ]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        n=3,
        extra_headers={
            "x-fake-completion-words": "7",
            "x-fake-cached-tokens": "2",
            "x-fake-reasoning-tokens": "11",
            "x-fake-served-model": "dated",
        },
    )
    assert completion.model == f"{MODEL}-2024-07-18"
    assert len(completion.choices) == 3
    content = completion.choices[0].message.content
    assert content is not None
    assert len(content.split()) == 7
    assert {c.message.content for c in completion.choices} == {content}
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == math.ceil((9 + 24) / 4) + 2 * 4 + 85
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 11
    assert usage.completion_tokens == 3 * math.ceil(len(content) / 4) + 11


def test_chat_max_tokens_truncates(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_completion_tokens=2,
        extra_headers={"x-fake-content": "x" * 40},
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "x" * 8


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("limits", "name"),
    [
        ({"max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens"),  # 0 is given: no fallback
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ],
)
def test_chat_token_limit_below_one_is_refused(
    client: openai.OpenAI, limits: dict[str, int], name: str, stream: bool
) -> None:
    """A max_completion_tokens or max_tokens below 1 is a 400 naming it, as the API answers."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=USER, stream=stream, **limits)  # type: ignore[call-overload]
    expected = f"Expected a value >= 1, but got {limits[name]} instead."
    assert raised.value.body == {  # the error object, as the API sends it
        "message": f"Invalid '{name}': integer below minimum value. {expected}",
        "type": "invalid_request_error",
        "param": name,
        "code": "integer_below_min_value",
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_web_search_options_are_refused_on_a_model_that_does_not_search(
    client: openai.OpenAI, stream: bool
) -> None:
    """web_search_options on a model that is not a search model (gpt-4o) is a 400 naming it, as the API
    answers; a search model takes them and cites the page it found."""
    search: Any = {"search_context_size": "low"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="gpt-4o", messages=USER, web_search_options=search, stream=stream
        )
    assert raised.value.body == {  # the error object, as the API sends it
        "message": "Web search options not supported with this model.",
        "type": "invalid_request_error",
        "param": "web_search_options",
        "code": None,
    }
    for model in ("gpt-4o-search-preview", "gpt-4o-mini-search-preview", "gpt-5-search-api"):
        answer = client.chat.completions.create(model=model, messages=USER, web_search_options=search)
        message = answer.choices[0].message
        assert [(a.type, a.url_citation.end_index) for a in message.annotations or ()] == [
            ("url_citation", len(message.content or ""))
        ]


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model=MODEL, messages=USER)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            extra_headers={"x-fake-chunks": "3"},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(deltas) == 3
    assert "".join(d or "" for d in deltas) == expected.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks)
    assert all("usage" not in c.model_fields_set for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id}


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    assert len(chunks) == 1 + 5 + 1 + 1
    *body, last = chunks
    assert all("usage" in c.model_fields_set and c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == "stop"
    assert last.choices == []
    assert last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert last.usage.completion_tokens == math.ceil(len(text) / 4)


@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_header_stops_the_answer_halfway(client: openai.OpenAI, stream: bool) -> None:
    """``x-fake-finish: content_filter``: the first half of the answer, finish_reason content_filter,
    and the usage counts what was sent."""
    whole = client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
    assert whole is not None
    cut: Any = {"model": MODEL, "messages": USER, "extra_headers": {"x-fake-finish": "content_filter"}}
    if stream:
        chunks = list(
            client.chat.completions.create(**cut, stream=True, stream_options={"include_usage": True})
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish, usage = chunks[-2].choices[0].finish_reason, chunks[-1].usage
    else:
        answer = client.chat.completions.create(**cut)
        text, finish, usage = (
            answer.choices[0].message.content or "",
            answer.choices[0].finish_reason,
            answer.usage,
        )
    assert (text, finish) == (whole[: len(whole) // 2], "content_filter")
    assert usage is not None and usage.completion_tokens == math.ceil(len(text) / 4)


def test_chat_stream_of_several_choices_sends_one_choice_per_chunk(client: openai.OpenAI) -> None:
    """With ``n`` > 1 OpenAI streams each chunk with one choice, the choices in turn: each choice's
    pieces add up to the content create() answers, and the usage chunk counts every choice."""
    created = client.chat.completions.create(model=MODEL, messages=USER, n=2)
    stream = client.chat.completions.create(
        model=MODEL, messages=USER, n=2, stream=True, stream_options={"include_usage": True}
    )
    with stream:
        *body, last = list(stream)
    assert all(len(c.choices) == 1 for c in body)
    assert [c.choices[0].index for c in body[:4]] == [0, 1, 0, 1]
    for index in (0, 1):
        mine = [c.choices[0] for c in body if c.choices[0].index == index]
        assert (
            "".join(choice.delta.content or "" for choice in mine) == created.choices[index].message.content
        )
        assert mine[-1].finish_reason == created.choices[index].finish_reason
    assert last.usage is not None and created.usage is not None
    assert last.usage.completion_tokens == created.usage.completion_tokens


@pytest.mark.asyncio
async def test_chat_async_stream_and_create(fake: FakeOpenAI) -> None:
    async with async_client(fake) as sdk:
        completion = await sdk.chat.completions.create(model=MODEL, messages=USER)
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage == completion.usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert fake.requests[-1].headers["x-stainless-async"].startswith("async")


def test_tool_calls(client: openai.OpenAI) -> None:
    tools = [openai.pydantic_function_tool(Person)]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=tools,
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "Person"
    Person.model_validate_json(call.function.arguments)

    two = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=tools,
        extra_headers={"x-fake-tool-calls": "2"},
    )
    assert two.choices[0].message.tool_calls is not None
    assert len(two.choices[0].message.tool_calls) == 2
    plain = client.chat.completions.create(model=MODEL, messages=USER, tools=tools)
    assert plain.choices[0].message.tool_calls is None

    named = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[*tools, openai.pydantic_function_tool(Weather)],
        tool_choice={"type": "function", "function": {"name": "Weather"}},
    )
    assert named.choices[0].message.tool_calls is not None
    [forced] = named.choices[0].message.tool_calls
    assert forced.type == "function"
    assert forced.function.name == "Weather"
    assert Weather.model_validate_json(forced.function.arguments).city == "fake city"


def test_tool_calls_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[openai.pydantic_function_tool(Person)],
        stream=True,
        extra_headers={"x-fake-tool-calls": "2"},
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    for call in calls.values():
        assert call["id"].startswith("call_")
        assert call["name"] == "Person"
        Person.model_validate_json(call["arguments"])


REFUSAL = "I'm sorry, I cannot help with that."


def test_refusal_header_answers_a_refusal(client: openai.OpenAI) -> None:
    """``x-fake-refusal``: the message has the refusal and no content, as a model declining answers;
    ``parse()`` then has nothing parsed, and the refusal counts as the completion."""
    headers = {"x-fake-refusal": REFUSAL}
    completion = client.chat.completions.create(model=MODEL, messages=USER, extra_headers=headers)
    choice = completion.choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.refusal) == ("stop", None, REFUSAL)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == math.ceil(len(REFUSAL) / 4)

    parsed = client.chat.completions.parse(
        model=MODEL, messages=USER, response_format=Person, extra_headers=headers
    )
    message = parsed.choices[0].message
    assert (message.parsed, message.refusal) == (None, REFUSAL)


def test_refusal_header_streams_refusal_deltas(client: openai.OpenAI) -> None:
    """A streamed refusal: a role chunk with ``refusal: ""``, refusal pieces in place of content,
    the finish chunk, then the usage; the SDK's stream helper gathers the refusal."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-refusal": REFUSAL, "x-fake-chunks": "3"},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert (deltas[0].role, deltas[0].content, deltas[0].refusal) == ("assistant", None, "")
    assert len(deltas) == 1 + 3 + 1 and "".join(d.refusal or "" for d in deltas) == REFUSAL
    assert all(d.content is None for d in deltas)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == math.ceil(len(REFUSAL) / 4)

    with client.chat.completions.stream(
        model=MODEL, messages=USER, response_format=Person, extra_headers={"x-fake-refusal": REFUSAL}
    ) as helper:
        events = [e.type for e in helper]
        final = helper.get_final_completion().choices[0].message
    assert "refusal.done" in events and "content.delta" not in events
    assert (final.refusal, final.content, final.parsed) == (REFUSAL, None, None)


def test_parse_with_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=USER,
        response_format=Person,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert parsed.age == 42

    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(
            model=MODEL,
            messages=USER,
            response_format=Person,
            extra_headers={"x-fake-content": '{"name": "no age"}'},
        )


# -- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_answer_with_the_served_model_header(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    served = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", extra_headers={"x-fake-served-model": "emb-v2"}
    )
    assert served.model == "emb-v2"
    assert (
        client.embeddings.create(model="text-embedding-3-small", input="alpha").model
        == "text-embedding-3-small"
    )


def test_embeddings_base64_default_and_float(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    default = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert fake.requests[-1].body["encoding_format"] == "base64"
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], encoding_format="float"
    )
    assert isinstance(json.loads(fake.requests[-1].raw_body)["input"], list)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 8
    assert default.data[0].embedding != default.data[1].embedding
    assert math.isclose(sum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-5)
    assert default.usage.prompt_tokens == default.usage.total_tokens == 2 + 3

    single = client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=4)
    assert len(single.data) == 1
    assert len(single.data[0].embedding) == 4


@pytest.mark.parametrize(
    "given", ["", [], ["alpha", ""], [[]]], ids=["empty string", "empty list", "empty item", "empty tokens"]
)
def test_embeddings_of_an_empty_input_are_a_400(client: openai.OpenAI, given: Any) -> None:
    """An empty input, or an empty text or token list among the inputs, is refused as the API refuses it
    (docs/FAKE_SERVER.md): a client's code that sends one fails here as it would against OpenAI."""
    with pytest.raises(openai.BadRequestError, match="'input' must be a non-empty string or array"):
        client.embeddings.create(model="text-embedding-3-small", input=given)


@pytest.mark.asyncio
async def test_embeddings_async(fake: FakeOpenAI) -> None:
    async with async_client(fake) as sdk:
        result = await sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.model == "text-embedding-3-small"
    assert len(result.data[0].embedding) == 8


# -- responses -----------------------------------------------------------------------------------------


def test_responses_non_stream(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Tell me about the fake server",
        instructions="Be brief.",
        extra_headers={"x-fake-cached-tokens": "1", "x-fake-reasoning-tokens": "3"},
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Summary: Tell me about the fake server"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == math.ceil((29 + 9) / 4) + 2 * 4
    assert usage.input_tokens_details.cached_tokens == 1
    assert usage.output_tokens == math.ceil(len(response.output_text) / 4) + 3
    assert usage.output_tokens_details.reasoning_tokens == 3
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_a_response_echoes_its_request_parameters(client: openai.OpenAI) -> None:
    """A Response states the parameters it ran with, as OpenAI's does (when created and when retrieved):
    each one asked for, else its default; the tier the one that served it."""
    asked = client.responses.create(
        model=MODEL, input="hi", instructions="Be brief.", temperature=0.2, top_p=0.9, max_output_tokens=900,
        reasoning={"effort": "high"}, text={"format": {"type": "json_object"}}, service_tier="flex",
        tools=[{"type": "function", "name": "f", "parameters": {}, "strict": None}], metadata={"job": "7"},
    )  # fmt: skip
    for response in (asked, client.responses.retrieve(asked.id)):
        assert (response.temperature, response.top_p, response.max_output_tokens) == (0.2, 0.9, 900)
        assert response.reasoning is not None and response.reasoning.effort == "high"
        assert response.text is not None and response.text.format is not None
        assert (response.text.format.type, response.service_tier) == ("json_object", "flex")
        assert ([t.type for t in response.tools], response.instructions) == (["function"], "Be brief.")
        assert response.metadata == {"job": "7"}
    plain = client.responses.create(model=MODEL, input="hi")
    assert (plain.temperature, plain.top_p, plain.max_output_tokens, plain.tools) == (1.0, 1.0, None, [])
    assert plain.reasoning is not None and plain.reasoning.effort is None
    assert plain.service_tier == "default"


class Address(pydantic.BaseModel):
    city: str


class Order(pydantic.BaseModel):
    kind: Literal["order"]
    paid: bool
    ship_to: Address  # a nested model: a $ref into the schema's $defs


def test_parse_with_nested_models_constants_and_booleans(client: openai.OpenAI) -> None:
    """A schema with a nested model (``$ref``), a ``Literal`` (``const``) and a ``bool`` gets an answer
    that validates: ``parse()`` gives the model."""
    completion = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Order)
    assert completion.choices[0].message.parsed == Order(
        kind="order", paid=True, ship_to=Address(city="fake city")
    )


def test_json_object_mode_answers_a_json_object(client: openai.OpenAI) -> None:
    """``response_format={"type": "json_object"}`` is answered with a JSON object (the reply in it)."""
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, response_format={"type": "json_object"}
    )
    answer = json.loads(completion.choices[0].message.content or "")
    assert isinstance(answer, dict) and answer["summary"].startswith("Summary:")


def test_responses_parse(client: openai.OpenAI) -> None:
    response = client.responses.parse(model=MODEL, input="who?", text_format=Person)
    assert isinstance(response.output_parsed, Person)


def test_responses_stream(client: openai.OpenAI) -> None:
    with client.responses.create(
        model=MODEL, input="stream me please", stream=True, extra_headers={"x-fake-chunks": "4"}
    ) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas == "Summary: stream me please"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == math.ceil(len(deltas) / 4)


def _streamed(client: openai.OpenAI, **kwargs: Any) -> list[ResponseStreamEvent]:
    """The events of a streamed Response to "hi"."""
    with client.responses.create(model=MODEL, input="hi", stream=True, **kwargs) as stream:
        return list(stream)


def test_responses_refusal(client: openai.OpenAI) -> None:
    """``x-fake-refusal`` in a Response: a message whose one content part is a refusal."""
    response = client.responses.create(model=MODEL, input="hi", extra_headers={"x-fake-refusal": REFUSAL})
    [message] = response.output
    assert message.type == "message"
    [part] = message.content
    assert (part.type, part.refusal) == ("refusal", REFUSAL)  # type: ignore[union-attr]
    assert response.output_text == ""
    assert response.usage is not None
    assert response.usage.output_tokens == math.ceil(len(REFUSAL) / 4)
    parsed = client.responses.parse(
        model=MODEL, input="hi", text_format=Person, extra_headers={"x-fake-refusal": REFUSAL}
    )
    assert parsed.output_parsed is None


def test_responses_refusal_stream(client: openai.OpenAI) -> None:
    """A streamed Responses refusal: ``response.refusal.delta`` events, then ``response.refusal.done``
    with the whole refusal, in a refusal content part."""
    events = _streamed(client, extra_headers={"x-fake-refusal": REFUSAL, "x-fake-chunks": "2"})
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.refusal.delta"] * 2,
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = events[3]
    assert added.type == "response.content_part.added"
    assert (added.part.type, added.part.refusal) == ("refusal", "")  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    done = events[6]
    assert done.type == "response.refusal.done"
    assert deltas == done.refusal == REFUSAL
    completed = events[-1]
    assert completed.type == "response.completed"
    [message] = completed.response.output
    assert message.type == "message"
    assert [p.type for p in message.content] == ["refusal"]


def test_responses_function_calls(client: openai.OpenAI) -> None:
    """With ``tools`` and a required or named ``tool_choice`` (or ``x-fake-tool-calls``), a Response
    answers ``function_call`` output items whose arguments fit the tool, and no text: ``parse()`` gives
    the parsed arguments."""
    tools = [openai.pydantic_function_tool(Person), openai.pydantic_function_tool(Weather)]
    response = client.responses.parse(model=MODEL, input="hi", tools=tools, tool_choice="required")
    [call] = response.output
    assert call.type == "function_call"
    assert (call.name, call.status) == ("Person", "completed")
    assert call.call_id.startswith("call_") and call.id is not None and call.id.startswith("fc_")
    assert isinstance(call.parsed_arguments, Person)
    assert response.output_text == ""
    assert response.usage is not None
    assert response.usage.output_tokens == math.ceil(len(call.name + call.arguments) / 4)

    named = client.responses.parse(
        model=MODEL, input="hi", tools=tools, tool_choice={"type": "function", "name": "Weather"}
    )
    [forced] = named.output
    assert forced.type == "function_call"
    assert forced.parsed_arguments == Weather(city="fake city")

    two = client.responses.create(
        model=MODEL, input="hi", tools=[WEATHER_TOOL], extra_headers={"x-fake-tool-calls": "2"}
    )
    assert [o.type for o in two.output] == ["function_call"] * 2
    assert {o.name for o in two.output if isinstance(o, ResponseFunctionToolCall)} == {"get_weather"}
    plain = client.responses.create(model=MODEL, input="hi", tools=[WEATHER_TOOL])
    assert [o.type for o in plain.output] == ["message"]


def test_responses_function_calls_stream(client: openai.OpenAI) -> None:
    """A streamed function call: its item added, its arguments in
    ``response.function_call_arguments.delta`` events, then ``.done`` with them whole, the item done;
    the SDK's stream helper parses the arguments."""
    events = _streamed(
        client, tools=[WEATHER_TOOL], tool_choice="required", extra_headers={"x-fake-chunks": "3"}
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2], events[-2]
    assert added.type == "response.output_item.added" and done.type == "response.output_item.done"
    assert added.item.type == done.item.type == "function_call"
    assert (added.item.arguments, added.item.status) == ("", "in_progress")
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert {e.item_id for e in deltas} == {added.item.id}
    arguments = events[-3]
    assert arguments.type == "response.function_call_arguments.done"
    assert "".join(e.delta for e in deltas) == arguments.arguments == done.item.arguments

    tools = [openai.pydantic_function_tool(Weather)]
    with client.responses.stream(model=MODEL, input="hi", tools=tools, tool_choice="required") as helper:
        for _ in helper:
            pass
        final = helper.get_final_response()
    [call] = final.output
    assert call.type == "function_call"
    assert call.parsed_arguments == Weather(city="fake city")


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_responses_cut_by_max_output_tokens_is_incomplete(fake: FakeOpenAI, stream: bool) -> None:
    """Text longer than max_output_tokens is cut to it: status incomplete, the reason, the usage of
    what was produced (the reasoning counted in), streamed as response.incomplete."""
    headers = {"x-fake-content": "x" * 200, "x-fake-reasoning-tokens": "6"}
    async with async_client(fake) as sdk:
        if stream:
            events = [
                e
                async for e in await sdk.responses.create(
                    model=MODEL, input="hi", max_output_tokens=20, stream=True, extra_headers=headers
                )
            ]
            assert events[-1].type == "response.incomplete"
            response = events[-1].response
            done = [e.item for e in events if e.type == "response.output_item.done"]
            assert [item.status for item in done] == ["incomplete"]  # type: ignore[union-attr]
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert deltas == response.output_text
        else:
            response = await sdk.responses.create(
                model=MODEL, input="hi", max_output_tokens=20, extra_headers=headers
            )
    assert response.status == "incomplete" and response.completed_at is None
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "x" * 4 * (20 - 6)
    assert response.usage is not None
    assert response.usage.output_tokens == 20
    assert response.usage.output_tokens_details.reasoning_tokens == 6


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_max_output_tokens_below_16_is_refused(client: openai.OpenAI, stream: bool) -> None:
    """max_output_tokens below 16 is a 400 naming it, as the API answers; 16 itself is taken."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=15, stream=stream)
    assert raised.value.body == {  # the error object, as the API sends it
        "message": "Invalid 'max_output_tokens': integer below minimum value. "
        "Expected a value >= 16, but got 15 instead.",
        "type": "invalid_request_error",
        "param": "max_output_tokens",
        "code": "integer_below_min_value",
    }
    assert client.responses.create(model=MODEL, input="hi", max_output_tokens=16).status == "completed"


@pytest.mark.asyncio
async def test_responses_async(fake: FakeOpenAI) -> None:
    async with async_client(fake) as sdk:
        response = await sdk.responses.create(model=MODEL, input="hi")
        stream = await sdk.responses.create(model=MODEL, input="hi", stream=True)
        events = [event async for event in stream]
    assert response.output_text == "Summary: hi"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == response.output_text


# -- errors, retries, faults ---------------------------------------------------------------------------


def test_fail_next_then_success_retries(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail_next(500)
    completion = client.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content
    assert [r.retry_count for r in fake.requests] == [0, 1]

    fake.reset()
    assert fake.requests == []
    fake.fail_next(429, times=3, body={"error": {"message": "slow down", "type": "requests", "code": None}})
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert "slow down" in excinfo.value.message  # 1.x prefixes "Error code: 429 - " and the body
    assert [r.retry_count for r in fake.requests] == [0, 1, 2]
    assert excinfo.value.response.headers["x-request-id"].startswith("req_")


def test_reset_forgets_the_answer_to_a_request_that_came_before_it(fake: FakeOpenAI) -> None:
    """A `slow` request whose client gave up before reset() (a test that ended, as the session's
    server outlives it) is answered after it: that answer is not recorded with those of the requests
    after the reset, which a test reads as its own (``answers[-1]``)."""
    leftover = {"x-fake-fault": "slow", "x-fake-delay-ms": "200"}
    timing_out = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0, timeout=0.05)
    with timing_out as sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model=MODEL, messages=USER, extra_headers=leftover)
    deadline = time.monotonic() + 10  # a loaded host may deliver the request after its client gave up
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.reset()
    later = {"x-fake-fault": "slow", "x-fake-delay-ms": "600"}  # answered after the leftover
    with openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model=MODEL, messages=USER, extra_headers=later)
    assert [answer.body["id"] for answer in fake.answers] == [completion.id]
    assert len(fake.requests) == 1


class _HeldUpload(io.RawIOBase):
    """An audio file whose first ``size`` bytes read at once and whose end waits for ``release``: more
    than the sockets' buffers hold, so once its end is asked for the server is reading the body."""

    def __init__(self, size: int) -> None:
        self.left, self.waiting, self.release = size, threading.Event(), threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.left:
            self.waiting.set()
            self.release.wait(30)
            return 0
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        return n


def test_reset_forgets_a_request_begun_before_it_that_arrives_after(fake: FakeOpenAI) -> None:
    """A request begun before reset() whose body is still coming (a failed test's upload, its thread
    left running) arrives whole after it: it is not recorded among the requests after the reset, nor is
    its answer, and it does not take a failure queued for the next test's request."""
    upload = _HeldUpload(16 * 2**20)
    done: list[Any] = []
    with openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0) as sdk:

        def transcribe() -> None:
            try:
                done.append(
                    sdk.audio.transcriptions.create(
                        model="whisper-1", file=("left.wav", io.BufferedReader(upload))
                    )
                )
            except openai.APIError as exc:
                done.append(exc)

        leftover = threading.Thread(target=transcribe)
        leftover.start()
        try:
            assert upload.waiting.wait(30)
            fake.reset()
            fake.fail_next(429)  # the next test's
        finally:
            upload.release.set()
            leftover.join(30)
        assert [type(answer).__name__ for answer in done] == ["Transcription"]  # answered as any request
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model=MODEL, messages=USER)
    assert [(r.path, r.retry_count) for r in fake.requests] == [("/v1/chat/completions", 0)]
    assert [(a.path, a.status) for a in fake.answers] == [("/v1/chat/completions", 429)]


def test_a_queued_failure_goes_to_the_next_request_to_arrive(fake: FakeOpenAI) -> None:
    """A slow request that outlives its client's timeout never takes a failure queued after it came."""
    slow = {"x-fake-fault": "slow", "x-fake-delay-ms": "300"}
    timing_out = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0, timeout=0.05)
    with timing_out as sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model=MODEL, messages=USER, extra_headers=slow)
    # a loaded host may deliver the request after its client gave up: it must have arrived first
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # past taking its answer (none queued yet)
    fake.fail_next(401)
    # then the slow request's handler finishes its delay
    while not fake.answers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.answers and fake.answers[0].status == 200  # the queued failure was not the slow request's
    client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
    with client as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model=MODEL, messages=USER)


@pytest.mark.asyncio
async def test_fail_next_async(fake: FakeOpenAI) -> None:
    fake.fail_next(503, times=2)
    async with async_client(fake) as sdk:
        response = await sdk.responses.create(model=MODEL, input="hi")
    assert response.output_text
    assert [r.retry_count for r in fake.requests] == [0, 1, 2]


def test_status_header_and_unknown_path(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            extra_headers={"x-fake-status": "400"},
        )
    assert excinfo.value.body == error_body(400)["error"]
    assert len(fake.requests) == 1  # 4xx are not retried

    with pytest.raises(openai.NotFoundError) as not_found:
        client.post("/nope", cast_to=object, body={})
    assert "Invalid URL (POST /v1/nope)" in not_found.value.message

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages="not a list")  # type: ignore[arg-type]


def test_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["openai-organization"] == "org-fake-secret"
    assert raw.headers["openai-project"] == "proj_fake"
    assert raw.headers["set-cookie"].startswith("__cf_bm=fake-secret-cookie")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().choices


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_encoding_header_compresses_what_the_client_offers(
    client: openai.OpenAI, encoding: str, stream: bool
) -> None:
    """x-fake-encoding compresses the body when Accept-Encoding offers it, and sends it plain when not."""
    for offered, expected in ((f"identity, {encoding}", encoding), ("identity", None)):
        headers = {"x-fake-encoding": encoding, "accept-encoding": offered}
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=USER, stream=stream, extra_headers=headers
        ) as response:
            assert response.headers.get("content-encoding") == expected
            parsed = response.parse()
            text = (
                "".join(c.choices[0].delta.content or "" for c in parsed)  # type: ignore[union-attr]
                if stream
                else parsed.choices[0].message.content  # type: ignore[union-attr]
            )
        assert text == "Summary: " + USER_TEXT


def test_encoding_header_with_an_unknown_encoding_is_a_400(client: openai.OpenAI) -> None:
    """An encoding the fake cannot send is refused with the valid choices."""
    with pytest.raises(openai.BadRequestError, match="x-fake-encoding: 'lz4' is not one of gzip, br, zstd"):
        client.chat.completions.create(model=MODEL, messages=USER, extra_headers={"x-fake-encoding": "lz4"})


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-fake-chunk": "3"}, "x-fake-chunk is not a header the fake server knows; it knows x-fake-cache"),
        ({"x-fake-cached-tokens": "ten"}, "x-fake-cached-tokens: 'ten' is not a whole number (0 or more)"),
        ({"x-fake-delay-ms": "-5", "x-fake-fault": "slow"}, "x-fake-delay-ms: '-5' is not a whole number"),
        ({"x-fake-fault": "slow,cut_stream"}, "x-fake-fault: 'cut_stream' is not one of cut-stream, reset,"),
        (
            {"x-fake-usage-style": "anthropic"},
            "x-fake-usage-style: 'anthropic' is not one of openai, deepseek, xai",
        ),
        ({"x-fake-status": "200"}, "x-fake-status: '200' is not an error status (400 to 599)"),
        ({"x-fake-cost": "$0.01"}, "x-fake-cost: '$0.01' is not a number of US dollars"),
    ],
)
def test_a_misspelt_steering_header_is_a_400_naming_it(
    fake: FakeOpenAI, client: openai.OpenAI, headers: dict[str, str], message: str
) -> None:
    """A wrong x-fake-* name or value is refused with the valid choices, never ignored for the default."""
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=MODEL, messages=USER, extra_headers=headers)
    assert message in excinfo.value.message
    assert fake.answers[-1].status == 400


def _raw_exchange(fake: FakeOpenAI, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any], bool]:
    """Send one hand-written request; the answer's status, its JSON, and whether the server then closed."""
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\n" + head + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = json.loads(response.read())
        return response.status, answer, sock.recv(1) == b""  # b"" once closed; a timeout if left open


@pytest.mark.parametrize(
    ("head", "body", "status", "message"),
    [
        (b"Content-Length: abc\r\n", b"{}", 400, "Content-Length 'abc' is not a number of bytes"),
        (b"Content-Length: -5\r\n", b"{}", 400, "Content-Length '-5' is not a number of bytes"),
        (
            b"Transfer-Encoding: chunked\r\n",
            b"zz\r\n{}\r\n0\r\n\r\n",
            400,
            "chunk size 'zz' is not hexadecimal",
        ),
        (
            b"Content-Length: 100000000000\r\n",
            b"",
            413,
            "Content-Length 100000000000 is over the fake server",
        ),
        (b"Transfer-Encoding: chunked\r\n", b"FFFFFFFFFF\r\n", 413, "the body is over the fake server"),
    ],
    ids=["not-a-number", "negative", "bad-chunk", "huge", "huge-chunk"],
)
def test_a_body_of_unreadable_length_gets_an_error_answer_and_a_closed_connection(
    fake: FakeOpenAI, head: bytes, body: bytes, status: int, message: str
) -> None:
    """A bad Content-Length or chunk size, or a body over the limit, is answered (not dropped with a
    traceback, not read into memory), then the connection closed: where the next request starts is unknown."""
    got, answer, closed = _raw_exchange(fake, head, body)
    assert (got, closed) == (status, True)
    assert message in answer["error"]["message"]
    with openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0) as sdk:
        assert sdk.chat.completions.create(model=MODEL, messages=USER).choices  # still serving


def test_a_chunked_request_body_is_read_whole(fake: FakeOpenAI) -> None:
    """A client that streams its request body (``Transfer-Encoding: chunked``: httpx given an iterator)
    is answered as if it had sent the body in one piece."""
    body = json.dumps({"model": MODEL, "messages": USER}).encode()
    with httpx.Client(timeout=5) as raw:
        response = raw.post(
            f"{fake.base_url}/chat/completions",
            content=iter([body[:10], body[10:]]),
            headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Summary: " + USER_TEXT


@pytest.mark.parametrize(
    "line", [b'{"event": "llm_api_call", "n": 0}', b"hello there"], ids=["four-words", "two-words"]
)
def test_a_request_line_that_is_not_http_gets_an_http_400_naming_it(fake: FakeOpenAI, line: bytes) -> None:
    """Bytes that are no request (a stray write into the connection) get a 400 with a status line,
    naming them; http.server answered HTTP/0.9 style, a bare page a client reads as "Server
    disconnected without sending a response", which names nothing."""
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(line + b"\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400
        assert repr(line.decode()) in response.read().decode()
        assert sock.recv(1) == b""  # closed: where a request starts after such bytes is unknown


@pytest.mark.parametrize("fault", ["cut-stream", "reset"])
def test_stream_faults_raise(fake: FakeOpenAI, client: openai.OpenAI, fault: str) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        extra_headers={"x-fake-fault": fault},
    )
    received: list[str] = []
    with pytest.raises(STREAM_BREAKS):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert 0 < len(received) < 7
    assert len(fake.requests) == 1  # mid-stream errors are not retried


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["cut-stream", "reset"])
async def test_stream_faults_raise_async(fake: FakeOpenAI, fault: str) -> None:
    async with async_client(fake) as sdk:
        stream = await sdk.responses.create(
            model=MODEL, input="hi", stream=True, extra_headers={"x-fake-fault": fault}
        )
        kinds: list[str] = []

        async def drain() -> None:
            async for event in stream:
                kinds.append(event.type)

        with pytest.raises(STREAM_BREAKS):
            await drain()
    assert kinds
    assert "response.completed" not in kinds


def test_stream_error_fault_sends_the_apis_mid_stream_errors(client: openai.OpenAI) -> None:
    """``stream-error``: chat streams end with an error object, which the SDK raises as APIError after
    the first chunks; responses streams end with an ``error`` event, which it hands on."""
    stream = client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, extra_headers={"x-fake-fault": "stream-error"}
    )
    received: list[openai.types.chat.ChatCompletionChunk] = []
    with pytest.raises(openai.APIError, match=r"The server had an error while processing your request\."):
        received.extend(stream)
    assert received and all(c.choices[0].finish_reason is None for c in received)
    fault = {"x-fake-fault": "stream-error"}
    events = list(client.responses.create(model=MODEL, input="hi", stream=True, extra_headers=fault))
    assert [e.type for e in events] == ["response.created", "response.output_text.delta", "error"]
    assert events[-1].code == "server_error"  # type: ignore[union-attr]


def test_stream_error_object_fault_puts_the_responses_error_in_an_object(client: openai.OpenAI) -> None:
    """``stream-error-object``: a responses stream's ``error`` event holds an ``error`` object, which the
    SDK raises as APIError (as for chat) after the first events; chat streams as under ``stream-error``."""
    fault = {"x-fake-fault": "stream-error-object"}
    stream = client.responses.create(model=MODEL, input="hi", stream=True, extra_headers=fault)
    received: list[Any] = []
    with pytest.raises(
        openai.APIError, match=r"The server had an error while processing your request\."
    ) as raised:
        received.extend(stream)
    assert [e.type for e in received] == ["response.created", "response.output_text.delta"]
    assert raised.value.body == {
        "code": "server_error", "message": STREAM_ERROR, "param": None, "type": "server_error"
    }  # fmt: skip
    chat = client.chat.completions.create(model=MODEL, messages=USER, stream=True, extra_headers=fault)
    with pytest.raises(openai.APIError, match=r"The server had an error while processing your request\."):
        list(chat)


def test_response_failed_fault_ends_the_stream_with_response_failed(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL, input="hi", stream=True, extra_headers={"x-fake-fault": "response-failed"}
        )
    )
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error is not None and last.response.error.code == "server_error"
    assert last.response.usage is not None
    assert "response.completed" not in [e.type for e in events]


def test_cut_close_delimited_stream_ends_early(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            extra_headers={"x-fake-fault": "cut-stream", "x-fake-transfer": "close"},
        )
    )
    assert 0 < len(chunks) < 7
    assert all(c.choices[0].finish_reason is None for c in chunks)

    whole = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            extra_headers={"x-fake-transfer": "close"},
        )
    )
    assert whole[-1].choices[0].finish_reason == "stop"


def test_reset_non_stream_is_a_connection_error(fake: FakeOpenAI) -> None:
    with (
        openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0) as sdk,
        pytest.raises(openai.APIConnectionError),
    ):
        sdk.chat.completions.create(
            model=MODEL,
            messages=USER,
            extra_headers={"x-fake-fault": "reset"},
        )


def test_not_json_no_usage_and_slow(client: openai.OpenAI) -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            extra_headers={"x-fake-fault": "not-json"},
        )

    completion = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        extra_headers={"x-fake-fault": "no-usage"},
    )
    assert completion.usage is None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-fault": "no-usage"},
    )
    assert all(chunk.choices for chunk in stream)

    start = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream=True,
            extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "20", "x-fake-chunks": "2"},
        )
    )
    # 20 ms before answering + 20 ms between each of the 4 chunks
    assert time.monotonic() - start >= 0.08
    assert len(chunks) == 4


def test_base_url_before_start_with_a_free_port_is_an_error_not_port_0() -> None:
    """Reading base_url before start() (port 0: not chosen yet) says so, rather than giving a URL on
    port 0 that every call then fails to connect to."""
    server = FakeOpenAI()
    with pytest.raises(RuntimeError, match=r"picks its port in start\(\): read base_url after start\(\)"):
        _ = server.base_url
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1" and server.port > 0
    assert FakeOpenAI(port=8123).base_url == "http://127.0.0.1:8123/v1"


def test_stop_does_not_wait_for_a_slow_answer() -> None:
    """stop() while a `slow` answer sleeps (a test of the client's timeout) returns at once, not after
    the delay or its own 5 s wait for connections to end."""
    fake = FakeOpenAI().start()
    headers = {"x-fake-fault": "slow", "x-fake-delay-ms": "60000"}
    sdk = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0, timeout=0.3)
    with sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model=MODEL, messages=USER, extra_headers=headers)
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 3
    assert len(fake.requests) == 1


def test_stop_returns_at_once() -> None:
    """stop() returns as soon as the server stopped, not when its idle loop next looks for a stop:
    a test that starts a server of its own pays for no wait. Ten starts and stops take well under a
    second, and each leaves its port refusing connections."""
    started = time.monotonic()
    for _ in range(10):
        fake = FakeOpenAI().start()
        fake.stop()
    assert time.monotonic() - started < 0.25
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fake.port), timeout=1).close()


@pytest.mark.asyncio
async def test_concurrent_async_calls(fake: FakeOpenAI) -> None:
    async with async_client(fake) as sdk:
        results = await asyncio.gather(
            *(
                sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"call number {i}"}],
                )
                for i in range(200)
            )
        )
    assert sorted(r.choices[0].message.content or "" for r in results) == sorted(
        f"Summary: call number {i}" for i in range(200)
    )
    assert len({r.id for r in results}) == 200
    assert len(fake.requests) == 200


def test_the_request_log_masks_query_values(capfd: pytest.CaptureFixture[str]) -> None:
    """The request lines a verbose server logs (``llm-ledger fake-server`` without ``--quiet``) show each
    query parameter's name, never its value: a query may carry a key (Azure's ``?api-key=``)."""
    secret = "sk-query-LEAKCHECK-0123"
    with FakeOpenAI(verbose=True) as fake:
        query = {"api-version": "2024-10-21", "api-key": secret}
        with openai.OpenAI(
            api_key="sk-test", base_url=fake.base_url, default_query=query, max_retries=0
        ) as sdk:
            sdk.chat.completions.create(model=MODEL, messages=USER)
        assert fake.requests[-1].query == f"api-version=2024-10-21&api-key={secret}"  # sent as asked
    logged = capfd.readouterr().err
    assert '"POST /v1/chat/completions?api-version=***&api-key=*** HTTP/1.1" 200' in logged
    assert secret not in logged and "2024-10-21" not in logged


def test_a_server_without_history_keeps_nothing() -> None:
    """``FakeOpenAI(history=False)``, as ``llm-ledger fake-server`` runs until Ctrl-C, answers the SDK as
    any other (streams, Responses, Realtime) but keeps no request, answer or event: a server left running
    for days does not grow with the calls it served."""
    with FakeOpenAI(history=False) as fake:
        with openai.OpenAI(
            api_key="sk-test",
            base_url=fake.base_url,
            websocket_base_url=fake.websocket_base_url,
            max_retries=0,
        ) as sdk:
            assert sdk.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
            chunks = list(sdk.chat.completions.create(model=MODEL, messages=USER, stream=True))
            answer = sdk.responses.create(model=MODEL, input="hi", background=True)
            assert sdk.responses.retrieve(answer.id).id == answer.id  # a Response is still kept for GET
            with sdk.realtime.connect(model="gpt-realtime") as connection:
                connection.response.create()
                assert any(event.type == "response.done" for event in connection)
        assert len(chunks) > 1
        assert fake.requests == [] and fake.answers == [] and fake.realtime_events == []


def test_fake_server_subcommand() -> None:
    """`llm-ledger fake-server` serves the real SDK until Ctrl-C, then exits 130 (the shell's status
    for SIGINT, as `llm-ledger serve` does) without a traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "llm_ledger", "fake-server", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    ) as proc:
        assert proc.stdout is not None
        try:
            banner = proc.stdout.readline()
            base_url = banner.split(" on ")[1].split()[0]
            assert "Realtime and Responses APIs on ws://" in proc.stdout.readline()  # set up: both servers
            with openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as sdk:
                completion = sdk.chat.completions.create(model=MODEL, messages=USER)
            assert completion.choices[0].message.content
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=60)  # a hang's guard, generous for a loaded host
            except subprocess.TimeoutExpired:
                proc.kill()  # never a worker held by a child that outlived its Ctrl-C
                _, err = proc.communicate()
                raise AssertionError(f"fake-server outlived Ctrl-C by 60 s: {err}") from None
    assert proc.returncode == 130, err
    assert "Traceback" not in err
