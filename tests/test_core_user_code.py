"""The application's code that the ledger runs (sinks, log handlers, the redact hook, alert callbacks)
never breaks the call it watches, whatever it raises, except Ctrl-C: SystemExit or a BaseException
of its own is caught and reported like any other failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger import AnomalyConfig, AnomalyDetector, BudgetGuard
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests.conftest import FAKE_KEY

HI: Any = [{"role": "user", "content": "hi"}]


class OwnBaseException(BaseException):
    """An application's own exception outside the Exception tree."""


RAISED = [SystemExit(3), OwnBaseException("own")]


def _raiser(exc: BaseException) -> Any:
    def user_code(*args: Any) -> Any:
        raise exc

    return user_code


@pytest.fixture(params=RAISED, ids=lambda exc: type(exc).__name__)
def raised(request: pytest.FixtureRequest) -> BaseException:
    """What the application's code raises."""
    return request.param  # type: ignore[no-any-return]


def _reported(internal_log: pytest.LogCaptureFixture, where: str, exc: BaseException) -> bool:
    return any(where in r.getMessage() and type(exc).__name__ in r.getMessage() for r in internal_log.records)


def test_a_sink_raising_is_reported_and_the_call_returns(
    raised: BaseException,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A sink raising SystemExit (or another BaseException) leaves the call, the other sinks and the
    lens alone; the failure is reported."""
    monitor.add_sink(_raiser(raised))
    with monitor.lens("digest") as run:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content
    assert [r["event"] for r in records] == ["llm_api_call", "lens_summary"]
    assert run.summary is not None and run.summary["total_api_calls"] == 1
    assert _reported(internal_log, "sink", raised)


@pytest.mark.asyncio
async def test_a_sink_raising_at_the_end_of_a_stream_leaves_the_stream_alone(
    raised: BaseException,
    aclient: openai.AsyncOpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """The record of a stream is emitted while the caller iterates: a sink raising then does not
    end the caller's loop early."""
    monitor.add_sink(_raiser(raised))
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text.startswith("Summary:")
    [record] = records.calls
    assert record["status"] == "ok" and record["usage"]["total_tokens"]
    assert _reported(internal_log, "sink", raised)


def test_a_log_handler_raising_is_reported(
    raised: BaseException, fake_openai: FakeOpenAI, internal_log: pytest.LogCaptureFixture
) -> None:
    """A handler on the records' logger raising SystemExit never reaches the caller."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise raised

    logger = logging.getLogger("test_core_user_code")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Broken()
    logger.addHandler(handler)
    try:
        monitor = llm_ledger.LLMCallMonitor(logger=logger.name)
        with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url) as raw:
            assert monitor.instrument(raw).chat.completions.create(model="gpt-4o-mini", messages=HI).id
    finally:
        logger.removeHandler(handler)
    assert _reported(internal_log, "a log handler", raised)


@pytest.mark.parametrize("exc", [RuntimeError("down"), *RAISED], ids=lambda exc: type(exc).__name__)
def test_a_failing_handler_of_the_ledgers_own_reports_is_ignored(exc: BaseException, sdk: Any) -> None:
    """The ledger's reports (a failing sink, a model without a price) go to the application's log
    handlers: one raising there, even SystemExit, loses neither the call nor its record."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise exc

    internal = logging.getLogger("llm_ledger.internal")
    handler = Broken()
    internal.addHandler(handler)
    try:
        monitor = llm_ledger.LLMCallMonitor(logger=None)
        monitor.add_sink(_raiser(RuntimeError("sink down")))
        with capture(monitor) as records:
            answer = sdk(monitor).chat.completions.create(model="no-price-model-for-this-test", messages=HI)
    finally:
        internal.removeHandler(handler)
    assert answer.choices[0].message.content
    [record] = records.calls
    assert record["status"] == "ok" and record["cost"]["total_cost_usd"] is None


def test_a_redact_hook_raising_is_reported_and_redacts_everything(
    raised: BaseException, sdk: Any, internal_log: pytest.LogCaptureFixture
) -> None:
    """A redact hook raising SystemExit gives the placeholder for every captured string, never the
    text, and the call returns."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True, redact=_raiser(raised))
    with capture(monitor) as records:
        answer = sdk(monitor).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content
    [record] = records.calls
    assert record["content"]["messages"][0]["content"] == "[REDACTION FAILED]"
    assert record["content"]["output"] == "[REDACTION FAILED]"
    assert _reported(internal_log, "the redact hook", raised)


def test_alert_callbacks_raising_are_reported(
    raised: BaseException,
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """on_budget_exceeded and on_anomaly raising SystemExit: the alert record is still emitted, the
    call and the lens are unaffected, and the failure is reported."""
    monitor.budgets = BudgetGuard({"default": {"max_api_calls": 0}}, on_exceeded=_raiser(raised))
    config = AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",))
    monitor.anomalies = AnomalyDetector(config, on_anomaly=_raiser(raised))
    for words in (5, 5, 5, 5, 5, 300):
        with monitor.lens("digest"):
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-completion-words": str(words)}
            )
        assert answer.choices[0].message.content
    events = [r["event"] for r in records]
    assert events.count("lens_summary") == 6 and "budget_exceeded" in events and "lens_anomaly" in events
    assert _reported(internal_log, "on_budget_exceeded callback", raised)
    assert _reported(internal_log, "on_anomaly callback", raised)


def test_ctrl_c_in_a_sink_still_reaches_the_caller(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Ctrl-C is the user's, not a failure of the sink: it reaches the caller, after the record."""
    monitor.add_sink(_raiser(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    [record] = records.calls
    assert record["status"] == "ok"


class _CtrlCHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["sink", "log handler", "redact hook", "alert callback"])
def test_ctrl_c_in_the_applications_code_reaches_the_application(
    where: str, sdk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) in a sink, a log handler, the redact hook or an alert callback is the
    one exception not caught: it reaches the application, as Ctrl-C anywhere else in the call would."""
    ctrl_c = _raiser(KeyboardInterrupt())
    if where == "log handler":
        logger = logging.getLogger("tests.ctrl_c_in_a_handler")
        monkeypatch.setattr(logger, "handlers", [_CtrlCHandler()])
        monkeypatch.setattr(logger, "level", logging.INFO)
        monitor = llm_ledger.LLMCallMonitor(logger=logger.name)
    elif where == "redact hook":
        monitor = llm_ledger.LLMCallMonitor(logger=None, capture_content=True, redact=ctrl_c)
    else:
        monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[ctrl_c] if where == "sink" else [])
        if where == "alert callback":
            monitor.budgets = BudgetGuard({"default": {"max_api_calls": 0}}, on_exceeded=ctrl_c)
    client = sdk(monitor)
    with pytest.raises(KeyboardInterrupt), monitor.lens("digest"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)


async def _async_hook(value: Any) -> Any:
    return value


class _AsyncCallable:
    async def __call__(self, value: Any) -> Any:
        return value


# every place the application hands the ledger code it runs (an asyncio service's natural async def)
HOOK_PLACES: dict[str, Any] = {
    "sinks": lambda hook: llm_ledger.LLMCallMonitor(sinks=[hook]),
    "add_sink()": lambda hook: llm_ledger.LLMCallMonitor().add_sink(hook),
    "redact": lambda hook: llm_ledger.LLMCallMonitor(capture_content=True, redact=hook),
    "configure(redact=)": lambda hook: llm_ledger.configure(log_dir=None, redact=hook),
    "configure(on_budget_exceeded=)": lambda hook: llm_ledger.configure(
        log_dir=None, budgets={"default": {"max_api_calls": 1}}, on_budget_exceeded=hook
    ),
    "configure(on_anomaly=)": lambda hook: llm_ledger.configure(
        log_dir=None, anomalies=True, on_anomaly=hook
    ),
    "BudgetGuard": lambda hook: BudgetGuard({"default": {"max_api_calls": 1}}, on_exceeded=hook),
    "AnomalyDetector": lambda hook: AnomalyDetector(AnomalyConfig(), on_anomaly=hook),
}


@pytest.mark.parametrize("hook", [_async_hook, _AsyncCallable()], ids=["async def", "async __call__"])
@pytest.mark.parametrize("place", list(HOOK_PLACES))
def test_an_async_hook_is_refused_with_the_fix(place: str, hook: Any, fresh_config: None) -> None:
    """An ``async def`` sink, redact hook or alert callback would never be awaited (the ledger calls
    them on the thread that ended the call): every record it should get would be lost, with only a
    RuntimeWarning each time. It is refused where it is given, naming it and the fix."""
    with pytest.raises(
        llm_ledger.ConfigError, match="must be a plain function, got the async function"
    ) as raised:
        HOOK_PLACES[place](hook)
    assert "pass a def" in str(raised.value)


@pytest.mark.asyncio
async def test_a_sink_handing_records_to_the_event_loop_gets_every_record(
    aclient: openai.AsyncOpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """The fix the error names works: a plain sink handing each record to the loop's queue, from the
    loop's own thread or another, gets the call's and the lens's records."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def sink(record: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, record)

    monitor.add_sink(sink)
    with monitor.lens("digest"):
        await aclient.chat.completions.create(model="gpt-4o-mini", messages=HI)
    got = [await asyncio.wait_for(queue.get(), 5) for _ in range(2)]
    assert [r["event"] for r in got] == ["llm_api_call", "lens_summary"]
