"""What every library test checks: the ledger's records against what the loopback server answered,
and the library's result with and without the ledger.

Each scenario runs twice, on a fresh loopback server each time (so ids match): once with a bare
client and once with an instrumented one. The library's results must be equal; the instrumented
run's records must say what the server received and answered, call by call: status, model, usage,
finish reason and tool-call count.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import openai

import llm_ledger
from llm_ledger.testing import Captured, FakeOpenAI, RecordedAnswer, capture

KEY = "sk-test-integration-0123456789"


def expected(answer: RecordedAnswer) -> dict[str, Any]:
    """What a call's record should say, read from the server's answer."""
    body = answer.body
    if answer.path.endswith("/responses"):
        if isinstance(body, list):  # a stream: the final response
            body = next(e["response"] for e in body if e.get("type") == "response.completed")
        usage: dict[str, Any] = body.get("usage") or {}
        return {
            "status": "ok" if answer.status == 200 else "error",
            "model": body["model"],
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "finish_reason": body["status"],
            "tool_calls": sum(1 for item in body["output"] if item.get("type") == "function_call"),
        }
    if isinstance(body, list):  # a chat stream
        usage = next((e["usage"] for e in body if e.get("usage")), {})
        finish = next(c["finish_reason"] for e in body for c in e["choices"] if c.get("finish_reason"))
        tools = sum(
            1 for e in body for c in e["choices"] for t in c["delta"].get("tool_calls") or () if t.get("id")
        )
        return {
            "status": "ok",
            "model": body[0]["model"],
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "finish_reason": finish,
            "tool_calls": tools,
        }
    choice = body["choices"][0]
    return {
        "status": "ok" if answer.status == 200 else "error",
        "model": body["model"],
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "completion_tokens": body["usage"]["completion_tokens"],
        "finish_reason": choice["finish_reason"],
        "tool_calls": len(choice["message"].get("tool_calls") or ()),
    }


def observed(record: dict[str, Any]) -> dict[str, Any]:
    """The same facts, read from a call's record."""
    return {
        "status": record["status"],
        "model": record["response"]["model"],
        "prompt_tokens": record["usage"]["prompt_tokens"],
        "completion_tokens": record["usage"]["completion_tokens"],
        "finish_reason": record["response"]["finish_reason"],
        "tool_calls": record["response"]["tool_calls_count"],
    }


@dataclass
class Run:
    """One run of a scenario: its result, what the server received and answered, the records."""

    result: Any
    server: FakeOpenAI
    records: Captured
    lenses: list[dict[str, Any]] = field(default_factory=list)

    def check_records(self) -> None:
        """Every answer has its record saying what the server answered (in any order: a library
        may send its calls concurrently), and every request its record saying what was sent."""
        answers = self.server.answers
        assert answers, "the scenario made no request"
        calls = self.records.calls
        assert sorted(repr(observed(r)) for r in calls) == sorted(repr(expected(a)) for a in answers)
        sent = sorted((r.body["model"], bool(r.body.get("stream"))) for r in self.server.requests)
        assert sent == sorted((r["request"]["model"], r["request"]["stream"]) for r in calls)


Scenario = Callable[[Any], Any]  # (client) -> the library's result; may be a coroutine function


@contextmanager
def _served() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def run_both(scenario: Scenario, *, is_async: bool = False, lens: str | None = None) -> Run:
    """Run ``scenario`` with a bare client, then an instrumented one; the library's results must match."""
    runs = []
    for instrumented in (False, True):
        monitor = llm_ledger.LLMCallMonitor(logger=None)
        with _served() as server, capture(monitor) as records, capture(every_monitor=True) as everything:
            kind = openai.AsyncOpenAI if is_async else openai.OpenAI
            client: Any = kind(api_key=KEY, base_url=server.base_url, max_retries=0)
            if instrumented:
                monitor.instrument(client)
            if is_async:

                async def main(client: Any = client) -> Any:
                    async with client:
                        if lens is None:
                            return await scenario(client)
                        with llm_ledger.lens(lens, source_id="integration"):
                            return await scenario(client)

                result = asyncio.run(main())
            else:
                with client, llm_ledger.lens(lens, source_id="integration") if lens else nullcontext():
                    result = scenario(client)
                    if inspect.iscoroutine(result):
                        raise TypeError("a sync scenario returned a coroutine")
            lenses = [r for r in everything.lenses if (r.get("context") or {}).get("lens_key") == lens]
            runs.append(Run(result, server, records, lenses))
    bare, watched = runs
    assert bare.result == watched.result, (
        f"the library's result differs with the ledger: {bare.result!r} != {watched.result!r}"
    )
    assert not bare.records.calls
    watched.check_records()
    return watched


def check_lens(run: Run) -> None:
    """The lens summary counts the run's calls and tokens."""
    [summary] = [r["summary"] for r in run.lenses]
    calls = run.records.calls
    assert summary["total_api_calls"] == len(calls) == len(run.server.answers)
    assert summary["total_tokens"] == sum(r["usage"]["total_tokens"] for r in calls)
