"""openai 3.x's Live API (``client.live.connect()``, a WebSocket past the client's ``request`` seam): each
response of the session's Responses delegation (its events in ``response.event``) is one ``responses``
call priced as any Responses call; the session, billed by the second, one ``live`` call with no price,
its lens's cost incomplete; counted in the lens the connection was opened in."""

from __future__ import annotations

import base64
from typing import Any, cast

import openai
import pytest

import llm_ledger
from llm_ledger.testing import Captured, FakeOpenAI

pytestmark = pytest.mark.sdk3

LIVE = "gpt-live-1"
DELEGATE = "gpt-4.1-mini"
START: Any = {
    "type": "session.start",
    "session": {"model": LIVE, "delegation": {"type": "responses", "responses": {"model": DELEGATE}}},
}
SECOND_OF_AUDIO = base64.b64encode(bytes(48_000)).decode()  # 24 kHz 16-bit


def _until(connection: Any, kind: str) -> list[Any]:
    """The events up to and including the next of type ``kind`` (a delegated one's, inside
    ``response.event``)."""
    events = []
    for event in connection:
        events.append(event)
        if kind in (event.type, cast(dict[str, Any], getattr(event, "event", None) or {}).get("type")):
            return events
    raise AssertionError(f"the connection ended before {kind}: {[e.type for e in events]}")


def test_a_delegated_response_is_a_responses_call_and_the_session_an_unpriced_live_call(
    ws: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A session that delegated one response: the response is a ``responses`` call of the delegation's
    model with the usage its ``response.completed`` reports, priced; the session, closed, a ``live``
    call of its model with no tokens and no cost (billed by the second: its lens's cost incomplete)."""
    with monitor.lens("voice_agent") as run, ws.live.connect() as connection:
        connection.send(START)
        assert _until(connection, "session.started")[-1].session.model == LIVE
        connection.send(cast(Any, {"type": "session.input_audio.append", "audio": SECOND_OF_AUDIO}))
        connection.send(cast(Any, {"type": "response.create"}))
        completed = _until(connection, "response.completed")[-1]
        connection.send(cast(Any, {"type": "session.close"}))
        closed = _until(connection, "session.closed")[-1]
    delegated, session = records.calls
    usage = completed.event["response"]["usage"]
    assert (delegated["operation"], delegated["status"], delegated["request"]["model"]) == (
        "responses", "ok", DELEGATE,
    )  # fmt: skip
    assert delegated["response"]["id"] == completed.event["response"]["id"]
    assert delegated["usage"]["total_tokens"] == usage["total_tokens"] > 0
    assert delegated["cost"]["total_cost_usd"] > 0
    assert (session["operation"], session["status"], session["request"]["model"]) == ("live", "ok", LIVE)
    assert session["response"]["id"] == closed.session.id and closed.usage.seconds == 1
    assert session["response"]["finish_reason"] == "close_requested"
    assert session["usage"]["total_tokens"] is None and session["cost"]["total_cost_usd"] is None
    assert session["timing"]["duration_ms"] >= delegated["timing"]["duration_ms"]
    assert {c["context"]["lens_run_id"] for c in records.calls} == {run.run_id}
    assert run.summary is not None
    assert (run.summary["total_api_calls"], run.summary["cost_complete"]) == (2, False)


def test_a_session_cut_by_close_is_interrupted(ws: openai.OpenAI, records: Captured) -> None:
    """A connection the caller closes before ``session.closed``: the session is one ``interrupted``
    ``live`` call with no usage, as a response cut short is."""
    with ws.live.connect() as connection:
        connection.send(START)
        _until(connection, "session.started")
    (record,) = records.calls
    assert (record["operation"], record["status"], record["usage"]["total_tokens"]) == (
        "live", "interrupted", None,
    )  # fmt: skip


def test_raise_mode_refuses_a_response_create_of_a_run_over_its_budget_unsent(
    ws: openai.OpenAI, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """Raise mode: once the connection's lens run went over its budget, the Live ``response.create`` (a
    delegated response asked for) raises BudgetExceededError from ``send()``, unsent, as a realtime
    one does; the session goes on."""
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"voice_agent": {"max_api_calls": 0}}}, mode="raise")
    with monitor.lens("voice_agent"), ws.live.connect() as connection:
        connection.send(START)
        connection.send(cast(Any, {"type": "response.create"}))
        _until(connection, "response.completed")
        with pytest.raises(llm_ledger.BudgetExceededError, match=r"max_api_calls 0, reached 1; .*not sent"):
            connection.send(cast(Any, {"type": "response.create"}))
        connection.send(cast(Any, {"type": "session.close"}))
        _until(connection, "session.closed")
    sent = [e["type"] for e in fake_openai.realtime_events]
    assert sent == ["session.start", "response.create", "session.close"]


@pytest.mark.asyncio
async def test_an_async_session_is_recorded_as_a_sync_one(aws: openai.AsyncOpenAI, records: Captured) -> None:
    """The async client's Live connection gives the same two calls."""
    async with aws.live.connect() as connection:
        await connection.send(START)
        await connection.send(cast(Any, {"type": "response.create"}))
        await connection.send(cast(Any, {"type": "session.close"}))
        async for event in connection:
            if event.type == "session.closed":
                break
    assert [(c["operation"], c["status"]) for c in records.calls] == [("responses", "ok"), ("live", "ok")]
