"""The SDK's stream helpers (``chat.completions.stream()``, ``responses.stream()``) raising at the
answer's end: a structured answer cut by its token limit or by the content filter, or content that
does not parse. The SDK
raises in the caller's frame, above the stream the ledger watches: the call is still recorded as
``parse()`` records the same answer (``error``, with the exception the caller got)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import openai
import pydantic
import pytest

import llm_ledger
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY

MESSAGES: Any = [{"role": "user", "content": "Answer in JSON"}]
NOT_JSON: Any = {"extra_headers": {"x-fake-content": "not json"}}


class Out(pydantic.BaseModel):
    answer: str


# each case: the stream helper's arguments and parse()'s, for the same answer
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat cut by its token limit": ("chat", {"max_completion_tokens": 2}),
    "chat content not json": ("chat", NOT_JSON),
    "chat stopped by the content filter": ("chat", {"extra_headers": {"x-fake-finish": "content_filter"}}),
    "responses content not json": ("responses", NOT_JSON),
}


def _stream(api: str, client: Any, kwargs: dict[str, Any]) -> Any:
    if api == "beta chat":  # openai 1.x's home of the chat helper (in 2.x and 3.x chat's own, in beta)
        return client.beta.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, response_format=Out, **kwargs
        )
    if api == "chat":
        return client.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, response_format=Out, **kwargs
        )
    return client.responses.stream(model="gpt-4o-mini", input="Answer in JSON", text_format=Out, **kwargs)


def _parse(api: str, client: Any, kwargs: dict[str, Any]) -> Any:
    if api == "chat":
        return client.chat.completions.parse(
            model="gpt-4o-mini", messages=MESSAGES, response_format=Out, **kwargs
        )
    return client.responses.parse(model="gpt-4o-mini", input="Answer in JSON", text_format=Out, **kwargs)


# what the SDK raises at such an answer's end: LengthFinishReasonError,
# ContentFilterFinishReasonError, or the JSON parser's / pydantic's ValueError
RAISED = (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError, ValueError)


def _read(api: str, client: openai.OpenAI, kwargs: dict[str, Any]) -> tuple[list[str], BaseException]:
    """The event types a caller of the helper gets, and the exception that ends them."""
    seen: list[str] = []
    try:
        with _stream(api, client, kwargs) as stream:
            for event in stream:
                seen.append(event.type)
    except RAISED as exc:
        return seen, exc
    raise AssertionError("the helper raised nothing")


async def _aread(
    api: str, client: openai.AsyncOpenAI, kwargs: dict[str, Any]
) -> tuple[list[str], BaseException]:
    seen: list[str] = []
    try:
        async with _stream(api, client, kwargs) as stream:
            async for event in stream:
                seen.append(event.type)
    except RAISED as exc:
        return seen, exc
    raise AssertionError("the helper raised nothing")


def _parse_record(api: str, client: openai.OpenAI, records: Captured, kwargs: dict[str, Any]) -> Any:
    with pytest.raises(RAISED):
        _parse(api, client, kwargs)
    return records.calls[-1]


def _check(
    record: dict[str, Any], parsed: dict[str, Any], caught: BaseException, bare: BaseException
) -> None:
    # the caller gets what the bare SDK raises
    assert type(caught) is type(bare) and str(caught) == str(bare)
    # recorded as parse() records the same answer: an error, of the type the caller got
    assert parsed["status"] == record["status"] == "error"
    assert record["error"]["type"] == type(caught).__name__
    # the usage chunk comes after the point where the SDK raised: never read (docs/RELIABILITY.md)
    assert record["usage"]["total_tokens"] is None and parsed["usage"]["total_tokens"]


@pytest.mark.parametrize("case", CASES)
def test_a_stream_helper_raising_at_the_answers_end_is_recorded_as_parse_records_it(
    case: str,
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
) -> None:
    api, kwargs = CASES[case]
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        bare_events, bare_exc = _read(api, bare, kwargs)
    with monitor.lens("helper-raises") as run:
        events, caught = _read(api, client, kwargs)
    assert events == bare_events
    [record] = records.calls
    # a billed answer whose usage is unknown: the lens cannot say its cost is complete
    assert run.summary is not None and run.summary["cost_complete"] is False
    _check(record, _parse_record(api, client, records, kwargs), caught, bare_exc)


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES)
async def test_an_async_stream_helper_raising_at_the_answers_end_is_recorded_as_parse_records_it(
    case: str,
    fake_openai: FakeOpenAI,
    aclient: openai.AsyncOpenAI,
    client: openai.OpenAI,
    records: Captured,
) -> None:
    api, kwargs = CASES[case]
    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        bare_events, bare_exc = await _aread(api, bare, kwargs)
    events, caught = await _aread(api, aclient, kwargs)
    assert events == bare_events
    [record] = records.calls
    _check(record, _parse_record(api, client, records, kwargs), caught, bare_exc)


def test_an_exception_the_caller_raises_inside_the_helper_block_is_not_the_calls(
    client: openai.OpenAI, records: Captured
) -> None:
    """The caller's own exception in the ``with`` block, after the answer ended, leaves the call ok."""

    def read_then_fail() -> None:
        with _stream("chat", client, {}) as stream:
            for _ in stream:
                pass
            raise KeyError("the caller's")

    with pytest.raises(KeyError, match="the caller's"):
        read_then_fail()
    [record] = records.calls
    assert record["status"] == "ok" and record["error"] is None and record["usage"]["total_tokens"]


def test_instrument_imports_none_of_the_sdks_resources() -> None:
    """``instrument()`` (and a copy of the client) makes none of the client's resources, so imports none
    of their modules: openai's beta package (assistants, threads, realtime...: about half a CPU-second)
    is imported only by a caller using it, and responses' only by one calling it."""
    code = (
        "import sys, openai, llm_ledger\n"
        "before = set(sys.modules)\n"
        "assert not [m for m in before if m.startswith('openai.resources')], 'imported before the test'\n"
        "monitor = llm_ledger.LLMCallMonitor(logger=None)\n"
        "for cls in (openai.OpenAI, openai.AsyncOpenAI):\n"
        "    monitor.instrument(cls(api_key='sk-x', base_url='http://127.0.0.1:9/v1')).with_options(timeout=5)\n"
        "print(sorted(m for m in sys.modules if m.startswith('openai.resources') and m not in before))"
    )
    # a child forked with openai imported (and no resource of it: checked above), as `import openai` leaves it
    done = warm_python.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def _made_first(raw: Any, monitor: llm_ledger.LLMCallMonitor) -> Any:
    raw.chat, raw.responses, raw.beta  # noqa: B018 (made before the client is instrumented)
    return monitor.instrument(raw)


def _copy_after(raw: Any, monitor: llm_ledger.LLMCallMonitor) -> Any:
    client = monitor.instrument(raw)
    client.chat, client.beta  # noqa: B018 (the original's made: the copy makes its own)
    return client.copy()


# each: an instrumented client made from a bare one, whose resources are made (or not yet) at a
# different moment
MADE: dict[str, Callable[[Any, llm_ledger.LLMCallMonitor], Any]] = {
    "resources first read after instrument()": lambda raw, monitor: monitor.instrument(raw),
    "resources read before instrument()": _made_first,
    "a with_options() copy": lambda raw, monitor: monitor.instrument(raw).with_options(timeout=30),
    "a copy() of a client whose resources were read": _copy_after,
}
CUT: dict[str, Any] = {"max_completion_tokens": 2}


@pytest.mark.parametrize("api", ["chat", "beta chat"])
@pytest.mark.parametrize("made", MADE)
def test_a_stream_helper_is_watched_whenever_the_client_makes_its_resource(
    made: str, api: str, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """``chat.completions.stream()`` and ``beta.chat.completions.stream()`` raising at the answer's end
    are recorded as ``parse()`` records it, whether the client made the resource before
    ``instrument()``, after it, or is a copy."""
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        bare_events, bare_exc = _read(api, bare, CUT)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = MADE[made](raw, monitor)
        events, caught = _read(api, client, CUT)
        assert events == bare_events
        [record] = records.calls
        _check(record, _parse_record("chat", client, records, CUT), caught, bare_exc)


@pytest.mark.asyncio
@pytest.mark.parametrize("made", MADE)
async def test_the_async_beta_stream_helper_is_watched_whenever_the_client_makes_its_beta(
    made: str, fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, client: Any
) -> None:
    """The same for an async client's ``beta.chat.completions.stream()``."""
    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as bare:
        bare_events, bare_exc = await _aread("beta chat", bare, CUT)
    async with openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        events, caught = await _aread("beta chat", MADE[made](raw, monitor), CUT)
    assert events == bare_events
    [record] = records.calls
    _check(record, _parse_record("chat", client, records, CUT), caught, bare_exc)


def test_a_client_not_instrumented_gets_its_resources_as_the_sdk_makes_them(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """Another client of an instrumented client's class makes its resources untouched: its stream
    helpers are the SDK's own."""
    client.chat, client.beta  # noqa: B018
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as other:
        for resource in (other.chat.completions, other.responses, other.beta.chat.completions):
            assert "stream" not in vars(resource)  # the class's own
    assert "stream" in vars(client.chat.completions) and "stream" in vars(client.beta.chat.completions)
