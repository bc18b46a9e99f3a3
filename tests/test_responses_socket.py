"""The Responses API over a WebSocket (``client.responses.connect()``, past the client's ``request`` seam):
each response is one ``responses`` call record, read from its events as a Responses stream's are, priced
as any Responses call, counted in the lens the connection was opened in; the caller's events are the
SDK's.

openai 1.x has no ``responses.connect()`` (sdk2); 2.x's passes these but the
``ResponsesWebSocketSession`` lane (sdk3).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import openai
import pytest
from websockets.exceptions import ConnectionClosedError

import llm_ledger
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import socket_client

pytestmark = pytest.mark.sdk2

MODEL = "gpt-4.1-mini"
ENDS = ("response.completed", "response.failed", "response.incomplete", "error")


def _until_end(connection: Any) -> list[Any]:
    """The events up to and including the next response's end (or an ``error``)."""
    events = []
    for event in connection:
        events.append(event)
        if event.type in ENDS:
            return events
    raise AssertionError(f"the connection ended before the response did: {[e.type for e in events]}")


async def _until_end_async(connection: Any) -> list[Any]:
    events = []
    async for event in connection:
        events.append(event)
        if event.type in ENDS:
            return events
    raise AssertionError(f"the connection ended before the response did: {[e.type for e in events]}")


def _alike(record: dict[str, Any]) -> dict[str, Any]:
    """What a response's record says whichever way it went: not its ids, time or server."""
    response = {k: v for k, v in record["response"].items() if k not in ("id", "request_id")}
    return {
        **{k: record[k] for k in ("status", "operation", "request", "usage", "cost")},
        "response": response,
    }


BODIES: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"input": "what is the weather like in Paris", "instructions": "Be brief."}, {}),
    ({"input": "hello", "service_tier": "flex", "max_output_tokens": 40}, {"x-fake-cached-tokens": "4"}),
    ({"input": "find the news", "tools": [{"type": "web_search"}]}, {"x-fake-tool-uses": "2"}),
    (
        {"input": "think hard", "reasoning": {"effort": "high"}, "model": "o4-mini"},
        {"x-fake-reasoning-tokens": "30"},
    ),
]


@pytest.mark.parametrize(
    ("body", "steering"), BODIES, ids=["plain", "flex-cached", "web-search", "reasoning"]
)
def test_a_response_over_a_websocket_is_recorded_as_the_same_response_streamed_over_http(
    fake_openai: FakeOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    body: dict[str, Any],
    steering: dict[str, str],
) -> None:
    """A ``response.create`` sent over a connection is one ``responses`` record equal to that of the same
    request streamed over HTTP: its request shape, model, usage, finish reason, tool uses and cost (tool
    fees and service tier included)."""
    asked = {"model": MODEL, **body}
    with socket_client(fake_openai) as raw:
        client = monitor.instrument(raw)
        with client.responses.connect(extra_headers=steering) as connection:
            connection.response.create(**asked)
            over_socket = _until_end(connection)
        with client.responses.create(**asked, stream=True, extra_headers=steering) as stream:
            over_http = list(stream)
    socket_record, http_record = records.calls
    assert socket_record["status"] == "ok" and socket_record["operation"] == "responses"
    assert _alike(socket_record) == _alike(http_record)
    assert socket_record["cost"]["total_cost_usd"] > 0
    assert socket_record["response"]["id"] == over_socket[-1].response.id
    assert [e.type for e in over_socket] == [e.type for e in over_http]
    assert socket_record["server"]["address"] == "127.0.0.1"
    timing = socket_record["timing"]
    assert 0 < timing["time_to_first_token_ms"] <= timing["duration_ms"]


def test_two_responses_on_one_connection_are_two_calls_of_its_lens(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Each response a connection opened in a lens carries is one call of that lens; the lens adds them
    up and its cost is complete."""
    with monitor.lens("support_bot", source_id="ticket-7") as run, ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="first question")
        first = _until_end(connection)[-1]
        connection.response.create(model=MODEL, input="a second, longer question", previous_response_id="x")
        second = _until_end(connection)[-1]
    assert [c["response"]["id"] for c in records.calls] == [first.response.id, second.response.id]
    assert [c["request"]["user_prompt_length"] for c in records.calls] == [14, 25]
    assert all(
        c["context"]["lens_run_id"] == run.run_id and c["context"]["source_id"] == "ticket-7"
        for c in records.calls
    )
    assert [c["usage"]["total_tokens"] for c in records.calls] == [
        first.response.usage.total_tokens,
        second.response.usage.total_tokens,
    ]
    (lens,) = records.lenses
    summary = lens["summary"]
    assert (summary["total_api_calls"], summary["open_calls"], summary["cost_complete"]) == (2, 0, True)
    assert summary["total_cost_usd"] == pytest.approx(sum(c["cost"]["total_cost_usd"] for c in records.calls))
    assert run.summary == summary


def test_the_caller_receives_exactly_the_events_of_an_uninstrumented_client(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """Watching a connection changes none of the events the caller receives, nor their order."""

    def conversation(client: openai.OpenAI) -> list[str]:
        with client.responses.connect() as connection:
            connection.response.create(model=MODEL, input="hello")
            events = _until_end(connection)
            connection.response.create(
                model=MODEL, input="again", metadata={"x-fake-fault": "response-failed"}
            )
            events += _until_end(connection)
        return [event.to_json() for event in events]

    watched = conversation(ws)
    with socket_client(fake_openai) as raw:
        bare = conversation(raw)
    assert len(records.calls) == 2  # the watched connection's; the bare client's is nobody's

    assert [_unnumbered(e) for e in watched] == [_unnumbered(e) for e in bare]


def _unnumbered(event: str) -> Any:
    """An event's JSON without the ids the fake numbers across connections (of responses and items)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: None if k in ("id", "item_id") else strip(v) for k, v in value.items()}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip(json.loads(event))


@pytest.mark.asyncio
async def test_an_async_connection_is_recorded_as_a_sync_one(
    aws: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The async client's connections are watched alike: each response one call of the lens."""
    async with monitor.lens("support_bot") as run, aws.responses.connect() as connection:
        await connection.response.create(model=MODEL, input="first question")
        await _until_end_async(connection)
        await connection.response.create(
            model=MODEL, input="second", metadata={"x-fake-fault": "response-failed"}
        )
        failed = (await _until_end_async(connection))[-1]
    assert [c["status"] for c in records.calls] == ["ok", "error"]
    assert failed.type == "response.failed"
    assert all(c["context"]["lens_run_id"] == run.run_id for c in records.calls)
    assert all(c["cost"]["total_cost_usd"] > 0 for c in records.calls)
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["errors"], run.summary["cost_complete"]) == (
        2,
        1,
        True,
    )


def test_a_failed_response_and_an_error_mid_response_are_errors(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.failed`` is an ``error`` with the response's usage (billed, so priced); an ``error``
    event mid-response is an ``error`` without usage, leaving its lens's cost incomplete."""
    with monitor.lens("support_bot") as run, ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "response-failed"})
        assert _until_end(connection)[-1].type == "response.failed"
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "stream-error"})
        broke = _until_end(connection)[-1]
    assert broke.type == "error" and broke.to_dict()["error"]["code"] == "server_error"
    failed, cut = records.calls
    assert (failed["status"], failed["error"]["type"]) == ("error", "ResponseError")
    assert failed["usage"]["total_tokens"] > 0 and failed["cost"]["total_cost_usd"] > 0
    assert (cut["status"], cut["error"]["type"]) == ("error", "ResponseError")
    assert cut["usage"]["total_tokens"] is None and cut["response"]["content_length"] > 0
    assert run.summary is not None
    assert (run.summary["errors"], run.summary["cost_complete"]) == (2, False)


def test_an_error_mid_response_ends_that_response_not_the_create_sent_behind_it(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """An ``error`` the response stream emits (its ``sequence_number`` says so) while another
    ``response.create`` waits behind it ends the response streaming, as an ``error``; the next response
    is the waiting create's, with the request it sent, timed from its send."""
    with monitor.lens("support_bot") as run, ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "stream-error"})
        connection.response.create(model=MODEL, input="hello there")
        time.sleep(0.3)
        ends = [_until_end(connection)[-1].type, _until_end(connection)[-1].type]
    assert ends == ["error", "response.completed"]
    broke, answered = records.calls
    assert (broke["status"], broke["error"]["type"], broke["usage"]["total_tokens"]) == (
        "error", "ResponseError", None,
    )  # fmt: skip
    assert (answered["status"], answered["request"]["user_prompt_length"]) == ("ok", 11)
    assert answered["timing"]["duration_ms"] >= 300
    assert run.summary is not None and (run.summary["total_api_calls"], run.summary["errors"]) == (2, 1)


def test_a_connection_closed_mid_response_records_it_interrupted(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A caller closing the connection while a response streams records that response ``interrupted``,
    with no usage (the server never sent it): its lens's cost is incomplete, not silently short."""
    with monitor.lens("support_bot") as run, ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="tell me a long story")
        created: Any = connection.recv()
        while connection.recv().type != "response.output_text.delta":
            pass
        connection.close()
    (record,) = records.calls
    assert created.type == "response.created"
    assert record["status"] == "interrupted" and record["response"]["id"] == created.response.id
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None
    assert record["timing"]["time_to_first_token_ms"] is not None
    assert run.summary is not None and run.summary["cost_complete"] is False


def test_a_response_cut_by_close_is_timed_to_when_close_was_called(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured
) -> None:
    """A response cut by the caller's ``close()`` ends when the caller gave up, not when ``close()``
    returned: with messages left unread, the closing handshake waits for its timeout."""
    options: Any = {"close_timeout": 1}
    with ws.responses.connect(websocket_connection_options=options) as connection:
        sent = time.perf_counter()
        long = "word " * 400  # more events than the SDK's queue holds: the close frame waits behind them
        for _ in range(2):
            connection.response.create(model=MODEL, input=long, metadata={"x-fake-chunks": "400"})
        next(e for e in connection if e.type.endswith(".delta"))
        deadline = time.monotonic() + 10  # the fake reads the second once it sent all the first's events
        while len(fake_openai.realtime_events) < 2:
            assert time.monotonic() < deadline, "the fake never read the second response.create"
            time.sleep(0.01)
        closing = time.perf_counter()
        connection.close()
        assert time.perf_counter() - closing >= 1
    assert [c["status"] for c in records.calls] == ["interrupted"] * 2
    for call in records.calls:
        assert call["timing"]["duration_ms"] <= (closing - sent) * 1000 + 100


def test_a_response_create_whose_answer_was_never_read_is_interrupted_and_the_lens_incomplete(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A caller closing the connection right after sending ``response.create``, before reading anything:
    the server may have generated (and billed) the response, so it is one ``interrupted`` call with the
    request sent and no usage, and its lens's cost is incomplete, not a silent $0."""
    with monitor.lens("support_bot") as run, ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="Say hello.", temperature=0.25)
        connection.close()
    (record,) = records.calls
    assert (record["status"], record["request"]["model"], record["request"]["temperature"]) == (
        "interrupted", MODEL, 0.25,
    )  # fmt: skip
    assert record["usage"]["total_tokens"] is None and record["cost"]["total_cost_usd"] is None
    assert record["context"]["lens_run_id"] == run.run_id
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["cost_complete"]) == (1, False)


def test_a_connection_the_server_breaks_mid_response_records_it_as_an_error(
    ws: openai.OpenAI, records: Captured
) -> None:
    """The server closing the connection abnormally mid-response: the caller gets the SDK's error, the
    response is an ``error`` naming it."""
    with ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "cut-stream"})
        with pytest.raises(ConnectionClosedError):
            _until_end(connection)
    (record,) = records.calls
    assert record["status"] == "error" and record["error"]["type"] == "ConnectionClosedError"
    assert record["usage"]["total_tokens"] is None


def test_a_refused_response_create_records_nothing(ws: openai.OpenAI, records: Captured) -> None:
    """A ``response.create`` the server refuses (an ``error`` event, no response) is no call; the next
    response on the connection is recorded with its own request."""
    with ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hi", max_output_tokens=8)
        refused = _until_end(connection)
        assert [e.type for e in refused] == ["error"] and refused[0].status == 400
        connection.response.create(model=MODEL, input="hello")
        _until_end(connection)
    (record,) = records.calls
    assert record["status"] == "ok" and record["request"]["user_prompt_length"] == 5


def test_raise_mode_refuses_a_response_create_of_a_run_over_its_budget_unsent(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Raise mode: once the connection's lens run went over its budget, ``response.create`` raises
    BudgetExceededError from send() before the event goes out, with the message an HTTP call of the run
    gets; a run under its budget is not refused, and the connection carries on."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"support_bot": {"max_api_calls": 1}}}, mode="raise")
    with monitor.lens("support_bot") as run, ws.responses.connect() as connection:
        for _ in range(2):  # the first within the limit, the second goes over it: neither refused
            connection.response.create(model=MODEL, input="hi")
            _until_end(connection)
        with pytest.raises(llm_ledger.BudgetExceededError) as raised:
            connection.response.create(model=MODEL, input="hi")
        with pytest.raises(llm_ledger.BudgetExceededError) as over_http:
            ws.responses.create(model=MODEL, input="hi")
        connection.send(cast(Any, {"type": "response.cancel"}))  # another event still goes out
        assert [e.type for e in _until_end(connection)] == ["error"]
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create"] * 2 + ["response.cancel"]
    assert str(raised.value) == str(over_http.value)
    assert "'support_bot' is over its budget (max_api_calls 1, reached 2;" in str(raised.value)
    assert raised.value.record["context"]["lens_run_id"] == run.run_id
    assert len(records.calls) == 2 and run.summary is not None and run.summary["total_api_calls"] == 2


@pytest.mark.asyncio
async def test_raise_mode_refuses_an_async_response_create_alike(
    aws: openai.AsyncOpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """The async connection's awaited send() raises the refusal; nothing reaches the server."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"support_bot": {"max_api_calls": 0}}}, mode="raise")
    async with monitor.lens("support_bot"), aws.responses.connect() as connection:
        await connection.response.create(model=MODEL, input="hi")
        await _until_end_async(connection)
        with pytest.raises(llm_ledger.BudgetExceededError, match=r"max_api_calls 0, reached 1; .*not sent"):
            await connection.response.create(model=MODEL, input="hi")
        await connection.send(cast(Any, {"type": "response.cancel"}))
        assert [e.type for e in await _until_end_async(connection)] == ["error"]
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create", "response.cancel"]
    assert len(records.calls) == 1


@pytest.mark.sdk3  # the manager's send(), queueing events the connection writes as it opens, is 3.x's
def test_a_response_create_queued_before_the_connection_opens_is_read_and_refused_over_budget(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.create`` queued with the connection manager's ``send()`` before ``enter()`` is read as
    one the connection sends: its record has the request sent (its prompt's length, which the Response
    does not state); once the run went over its budget in raise mode the manager's ``send()`` refuses it,
    unqueued."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"support_bot": {"max_api_calls": 0}}}, mode="raise")
    create: Any = {"type": "response.create", "model": MODEL, "input": "what is the weather like"}
    with monitor.lens("support_bot"):
        manager = ws.responses.connect()
        manager.send(create)
        with manager as connection:
            _until_end(connection)
        manager = ws.responses.connect()
        with pytest.raises(llm_ledger.BudgetExceededError, match=r"max_api_calls 0, reached 1; .*not sent"):
            manager.send(create)
        with manager as connection:
            connection.send(cast(Any, {"type": "response.cancel"}))
            assert [e.type for e in _until_end(connection)] == ["error"]
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create", "response.cancel"]
    (record,) = records.calls
    assert (record["status"], record["request"]["user_prompt_length"]) == ("ok", 24)


@pytest.mark.sdk3  # reconnecting a dropped connection (on_reconnecting) is openai 3.x's
@pytest.mark.parametrize("reconnects", [True, False], ids=["reconnected", "gave up"])
def test_a_response_create_queued_while_reconnecting_is_a_call_only_once_written(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, records: Captured, reconnects: bool
) -> None:
    """The response a drop cut is an ``error`` (as an HTTP stream reset mid-way), though openai 3.x
    reconnects and the caller sees no exception; a ``response.create`` queued while it reconnects is a
    call with its request once the reconnect writes it, and none when the SDK gives up."""

    def reconnecting(event: Any) -> Any:
        connection.response.create(model=MODEL, input="what is the weather like")
        return None if reconnects else {"abort": True}

    with ws.responses.connect(on_reconnecting=reconnecting, initial_delay=0.01) as connection:
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "cut-stream"})
        if reconnects:
            _until_end(connection)
        else:
            with pytest.raises(openai.WebSocketConnectionClosedError):
                _until_end(connection)
    assert len(fake_openai.realtime_events) == (2 if reconnects else 1)
    statuses = [(c["status"], c["request"]["user_prompt_length"]) for c in records.calls]
    assert statuses == ([("error", 2), ("ok", 24)] if reconnects else [("error", 2)])
    assert records.calls[0]["error"]["type"] == "ConnectionClosedError"


def test_responses_on_lanes_are_each_their_own_call(ws: openai.OpenAI, records: Captured) -> None:
    """Responses created on separate lanes (``stream_id``) of one connection, sent before either is read,
    are each recorded with the request sent on its lane."""
    with ws.responses.connect() as connection:
        # events of the caller's own making (openai 2.x's create() takes no stream_id; 3.x's sends these)
        connection.send(
            {"type": "response.create", "model": MODEL, "input": "the short one", "stream_id": "a"}
        )
        connection.send(
            {"type": "response.create", "model": "gpt-4.1", "input": "the longer question", "stream_id": "b"}
        )
        ends = [_until_end(connection)[-1], _until_end(connection)[-1]]
    assert [e.stream_id for e in ends] == ["a", "b"]
    by_id = {c["response"]["id"]: c for c in records.calls}
    a, b = (by_id[e.response.id] for e in ends)
    assert (a["request"]["model"], a["request"]["user_prompt_length"]) == (MODEL, 13)
    assert (b["request"]["model"], b["request"]["user_prompt_length"]) == ("gpt-4.1", 19)
    assert a["status"] == b["status"] == "ok"


def test_content_is_captured_only_with_content_capture_and_redacted(fake_openai: FakeOpenAI) -> None:
    """The input sent and the output text are the record's content only when content capture is on,
    through the redact hook, as for a Responses stream over HTTP."""
    plain = llm_ledger.LLMCallMonitor(logger=None)
    capturing = llm_ledger.LLMCallMonitor(
        logger=None, capture_content=True, redact=lambda t: t.replace("weather", "[W]")
    )
    for monitor in (plain, capturing):
        with socket_client(fake_openai) as raw, capture(monitor) as records:
            with monitor.instrument(raw).responses.connect() as connection:
                connection.response.create(model=MODEL, input="what is the weather like")
                _until_end(connection)
            (record,) = records.calls
            if monitor is plain:
                assert "content" not in record
            else:
                assert record["content"] == {
                    "input": "what is the [W] like",
                    "output": "Summary: what is the [W] like",
                }


def test_the_beta_responses_connect_is_watched_too(ws: openai.OpenAI, records: Captured) -> None:
    """``client.beta.responses.connect()`` is recorded alike."""
    with ws.beta.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hello")
        _until_end(connection)
    (record,) = records.calls
    assert record["operation"] == "responses" and record["status"] == "ok"
    assert record["request"]["model"] == MODEL and record["cost"]["total_cost_usd"] > 0


def test_a_connection_outliving_its_lens_counts_its_responses_in_it(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A connection opened in a lens and used after the block holds the lens open: its record, written
    when the connection closes, counts every response the connection carried."""
    with monitor.lens("support_bot") as run:
        connection = ws.responses.connect().enter()
    with monitor.lens("another"):  # the thread reading the events is elsewhere: the response is not its
        connection.response.create(model=MODEL, input="hello")
        _until_end(connection)
    assert records.lenses[0]["summary"]["total_api_calls"] == 0
    connection.close()
    (call,) = records.calls
    assert call["context"]["lens_run_id"] == run.run_id
    assert records.lenses[1]["summary"]["total_api_calls"] == 1


@pytest.mark.sdk3  # ResponsesWebSocketSession is openai 3.x's
def test_a_response_sent_by_a_websocket_session_lane_is_recorded_from_its_events(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """openai 3.x's ``ResponsesWebSocketSession`` reads the connection's events and its lanes write to the
    socket themselves: each response is still one call of the lens, its request as ``response.created``
    states it (the model and parameters that applied), its usage and cost the response's."""
    from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession

    limits = ResponsesWebSocketLimits(
        max_lanes=4, max_events_per_lane=128, max_events=512, max_bytes_per_lane=2**24, max_bytes=2**25
    )
    with (
        monitor.lens("support_bot") as run,
        ws.responses.connect() as connection,
        ResponsesWebSocketSession(connection, limits=limits) as session,
    ):
        lane = session.lane("conversation")
        lane.send({
            "type": "response.create", "model": MODEL, "input": "Say hello.", "temperature": 0.5,
            "reasoning": {"effort": "low"}, "text": {"verbosity": "low", "format": {"type": "text"}},
        })  # fmt: skip
        final = lane.get_final_response()
    (record,) = records.calls
    assert (record["status"], record["request"]["model"], record["response"]["id"]) == ("ok", MODEL, final.id)
    stated = {
        key: record["request"][key] for key in ("temperature", "reasoning_effort", "verbosity", "output_type")
    }
    assert stated == {
        "temperature": 0.5,
        "reasoning_effort": "low",
        "verbosity": "low",
        "output_type": "text",
    }
    assert final.usage is not None and record["usage"]["total_tokens"] == final.usage.total_tokens
    assert record["cost"]["total_cost_usd"] > 0 and record["context"]["lens_run_id"] == run.run_id


@pytest.mark.sdk3  # send_raw() is openai 3.x's
def test_a_response_create_sent_raw_is_recorded_with_its_request(
    ws: openai.OpenAI, records: Captured
) -> None:
    """A ``response.create`` written as text with ``send_raw()`` is read as one sent with ``send()``:
    its record has the request sent (its prompt's length, which the Response does not state) and is
    timed from it."""
    with ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="what is the weather like")
        _until_end(connection)
        connection.send_raw(
            json.dumps({"type": "response.create", "model": MODEL, "input": "what is the weather like"})
        )
        time.sleep(0.3)
        _until_end(connection)
    sent, raw = records.calls
    assert raw["request"] == sent["request"] and raw["request"]["messages_count"] == 1
    assert raw["timing"]["duration_ms"] >= 300


def test_a_response_create_sent_as_an_sdk_model_is_read_alike(ws: openai.OpenAI, records: Captured) -> None:
    """A ``response.create`` the caller sends as one of the SDK's models (``connection.send(model)``) is
    read as the dict form is: the record's request is the one sent."""
    from openai.types.responses import responses_client_event

    # openai 3.x's model of the event (2.x's is the union's one member)
    made: Any = getattr(responses_client_event, "ResponseCreate", responses_client_event.ResponsesClientEvent)
    with ws.responses.connect() as connection:
        connection.send(made(type="response.create", model="gpt-4.1", input="a model-made event"))
        _until_end(connection)
    (record,) = records.calls
    assert (record["request"]["model"], record["request"]["user_prompt_length"]) == ("gpt-4.1", 18)


def test_the_fake_refuses_a_misspelt_steering_key_with_an_error_event(
    ws: openai.OpenAI, records: Captured
) -> None:
    """A misspelt ``x-fake-*`` metadata key is never ignored for its default: the fake answers an
    ``error`` event naming it and the keys it knows, as the HTTP fake answers 400; no response, no record."""
    with ws.responses.connect() as connection:
        connection.response.create(model=MODEL, input="hi", metadata={"x-fake-chunk": "3"})
        (refused,) = _until_end(connection)
    error = refused.to_dict()
    assert (refused.type, error["status"]) == ("error", 400)
    assert error["error"]["message"].startswith("x-fake-chunk is not a header the fake server knows")
    assert "x-fake-chunks" in error["error"]["message"]
    assert records.calls == []


def test_events_dispatched_to_handlers_are_watched_alike(ws: openai.OpenAI, records: Captured) -> None:
    """The push interface (``on()`` handlers run by ``dispatch_events()``) reads through the same
    connection: the response is recorded, and the handler gets its end."""
    done: list[Any] = []
    with ws.responses.connect() as connection:

        def finished(event: Any) -> None:
            done.append(event)
            connection.close()

        connection.on("response.completed", finished)
        connection.response.create(model=MODEL, input="hello")
        connection.dispatch_events()
    (record,) = records.calls
    assert [event.response.id for event in done] == [record["response"]["id"]]
    assert record["status"] == "ok"


@pytest.mark.asyncio
async def test_a_response_create_that_failed_to_send_is_no_call(
    aws: openai.AsyncOpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A ``response.create`` whose awaited ``send()`` raised (the socket the server dropped) never went
    out: it is no call of the lens, whose only call is the response the drop cut short."""
    async with monitor.lens("support_bot") as run, aws.responses.connect() as connection:
        await connection.response.create(model=MODEL, input="hi", metadata={"x-fake-fault": "cut-stream"})
        with pytest.raises(ConnectionClosedError):
            await _until_end_async(connection)
        with pytest.raises(ConnectionClosedError):
            await connection.response.create(model=MODEL, input="hi again")
    assert [e["type"] for e in fake_openai.realtime_events] == ["response.create"]
    (record,) = records.calls
    assert record["status"] == "error" and record["error"]["type"] == "ConnectionClosedError"
    assert run.summary is not None and run.summary["total_api_calls"] == 1
