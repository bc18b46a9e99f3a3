"""``LLMCallMonitor``: turns watched SDK calls into records, rolls them up per lens, emits them.

The monitor never breaks the call it watches: every failure inside it is caught and reported on
the ``llm_ledger.internal`` logger, and the caller gets exactly what the SDK gave.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Never, TypeVar, cast

from . import _background, _records
from ._background import LATER
from ._context import RUN_KEYS, LensRun, TrackedContext, counted_in, current_context, filed_under
from ._credentials import request_credentials
from ._errors import REDACT_FIX, REDACT_TAKES, ConfigError, check_hook, passed_on, refuse_async, warn_internal
from ._extract import body_view, no_usage, reasoning_in_completion, request_shape, usage_of
from ._jsonl import json_text, once_a_minute
from ._pricing import PriceTable, Route, UnpricedCounts, reported_cost_units
from ._records import (
    LOGGER_NAME,
    PENDING_STATUSES,
    AnomalyRecord,
    BudgetRecord,
    CallRecord,
    ErrorShape,
    LensRecord,
    LensSummary,
    RequestShape,
    ResponseShape,
    ServerShape,
    Status,
    Usage,
    add_tool_fees,
    call_record,
    lens_record,
)
from ._servers import Endpoint, server_of

if TYPE_CHECKING:
    from ._anomalies import AnomalyDetector
    from ._budgets import BudgetGuard

__all__ = ["LLMCallMonitor", "Redactor", "Sink"]

Sink = Callable[[Mapping[str, Any]], None]
"""Receives every record a monitor emits, synchronously, on the thread that finished the call; the
sinks after it get the same dict, so a sink copies it before changing it."""

Redactor = Callable[[str], str]
"""Applied to every captured string (message text, output text, error messages) before it is recorded."""

C = TypeVar("C")

# an answer's finish reasons when a limit or a filter cut it (chat's; a Response's incomplete_details)
_CUT_SHORT = frozenset({"length", "content_filter", "max_output_tokens", "incomplete"})
_LAST_WORD = re.compile(r"\S+\Z")  # the last word of a text, unless a space follows it
_NO_RESPONSE = cast(ResponseShape, dict.fromkeys(ResponseShape.__annotations__))  # nothing known
_UNPRICED = (None, None, None, None)  # a call's (prompt cost, completion cost, source, priced at)
_LEVELNO = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_UNPRICED_NAMED = 100  # models with no price named one by one (as Prometheus' max_models), then no more
_NO_PRICE = (
    "llm-ledger: no price known for model %r at provider %r: its calls are recorded with null cost. Add "
    "it to a price file (LLM_LEDGER_PRICE_FILE or configure(price_file=...))."
)
_NO_PRICES = (  # said once, past _UNPRICED_NAMED
    f"llm-ledger: no price known for model %r at provider %r either: over {_UNPRICED_NAMED} models have "
    "none, and the next ones are not named (a model name made per request?). Their calls are recorded "
    "with null cost."
)

# sinks of every monitor in the process (the pytest plugin's, testing.capture(every_monitor=True))
_global_sinks: tuple[Sink, ...] = ()
_global_sinks_lock = threading.Lock()


def add_global_sink(sink: Sink) -> None:
    """Send every record of every monitor, those made later included, to ``sink`` as well."""
    global _global_sinks
    with _global_sinks_lock:
        _global_sinks = (*_global_sinks, sink)


def remove_global_sink(sink: Sink) -> None:
    """Undo ``add_global_sink(sink)``; a sink never added is ignored."""
    global _global_sinks
    with _global_sinks_lock:
        _global_sinks = tuple(s for s in _global_sinks if s != sink)  # != : a bound method is made anew


def _heard(logger: logging.Logger, level: int, upward: bool) -> bool:
    """Whether a handler other than a ``NullHandler`` would get a record of ``level`` (else none is
    built, nor printed by logging's last resort); ``upward``: the ancestors' handlers count too."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level >= handler.level and type(handler) is not logging.NullHandler:
                return True
        if not (upward and current.propagate):
            return False
        current = current.parent
    return False


class _LedgerLogRecord(logging.LogRecord):
    """A ledger record as a ``LogRecord``: handlers formatting it as text show the dict as JSON."""

    def getMessage(self) -> str:
        return json_text(self.msg) if type(self.msg) is dict else super().getMessage()


class _Call:
    """What the monitor knows about one call in flight."""

    # a retrieve or cancel only (owner LATER): the response's id, the Response it answered (None: not
    # read yet), and the lens runs open where it was made
    background_id: str
    answer: Any
    around: tuple[LensRun, ...]
    answered: int | None = None  # the last HTTP status: a call failing after a 2xx answer was billed
    lost: int = 0  # attempts that may have been billed, usage unknown: the record's cost.attempts_left_out

    def __init__(
        self,
        operation: str,
        request: RequestShape,
        endpoint: Endpoint,
        raw: str | None,
        hide_usage: bool,
        retries: int | None,
    ) -> None:
        self.operation = operation
        self.endpoint = endpoint  # the instrumented client's server: how its calls are priced
        self.request = request
        # the context is never changed in place: copied into the record
        self.context, self.lenses = counted_in(current_context())
        self.client: Any = None  # with content capture only: its API key is scrubbed from the text
        self.retries = retries  # None when the client's retries cannot be counted
        self.request_id: str | None = None
        self.raw = raw  # the SDK's raw-response header: "true" or "stream" (with_*_response)
        self.http_response: Any = None  # the last HTTP response, set by the client's response hook
        self.ttft: float | None = None
        self.hide_usage = hide_usage  # the ledger asked a stream for usage on the caller's behalf
        # the process recording it (None once recorded): a call in flight at a fork is not the child's
        self.owner: str | None = _records._id_prefix
        self.content: dict[str, Any] | None = None  # captured request content, scrubbed when recorded
        self.server: ServerShape | None = None
        self.start_epoch = time.time()
        self.start_perf = time.perf_counter()

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.start_perf

    def let_go(self, error: BaseException | None = None) -> None:
        """Keep the server, request id and status of the last HTTP response (else of the request ``error``
        names) and let the response go: the call may outlive it."""
        response = self.http_response
        source: Any = response if response is not None else error
        if self.server is None and source is not None:
            try:
                url = source.request.url
            except Exception:
                url = None  # no request known: the server stays unknown
            self.server = server_of(url)
        if self.client is not None and source is not None:  # content is captured: scrubbed of these
            self.secrets = _carried(source)
        if response is not None:
            self.http_response = None
            self.answered = response.status_code
            if self.request_id is None:
                try:
                    self.request_id = response.headers.get("x-request-id")
                except Exception:
                    pass  # a response without readable headers: no request id


def _answer(call: _Call) -> Any:
    """The Response a retrieve or cancel answered: a stream's last, else the body read (or None)."""
    if call.answer is None:
        call.answer = body_view(call.http_response)
    return call.answer


_STATED = ("model", "temperature", "top_p", "max_output_tokens", "service_tier", "tools")


def stated_request(answer: Any, stream: bool) -> RequestShape:
    """The request of a response as ``answer``, a Response (the SDK's, or a ``JsonView``), states it:
    the model and parameters that applied (a default where the request gave none, the tier that
    served it). Its input is not in the Response: the prompt lengths and messages stay unknown."""
    reasoning, text = getattr(answer, "reasoning", None), getattr(answer, "text", None)
    body = {key: getattr(answer, key, None) for key in _STATED}
    body["reasoning"] = {"effort": getattr(reasoning, "effort", None)}
    body["text"] = {
        "format": {"type": getattr(getattr(text, "format", None), "type", None)},
        "verbosity": getattr(text, "verbosity", None),
    }
    return request_shape("responses", body, stream=stream)


def _carried(source: Any) -> set[str]:
    """The credentials of the HTTP request behind a response or an SDK error (its headers, query and
    URL: a gateway's own header, an Azure AD token, a proxy's password...)."""
    try:
        request = source.request
        return request_credentials(request.headers, str(request.url))
    except Exception:  # no request known: the client's API key is still scrubbed
        return set()


def _secrets(call: _Call) -> list[str]:
    """What is scrubbed from a call's captured text (read only when content is captured): its client's
    API key and the credentials its request carried, longest first (none left half-replaced)."""
    key = getattr(call.client, "api_key", None)
    found = {key, *getattr(call, "secrets", ())}  # unset when the call never reached the network
    return sorted((s for s in found if isinstance(s, str) and len(s) >= 8), key=len, reverse=True)


def _json_ready(value: Any, text: Callable[[str], str]) -> Any:
    """``value`` as JSON holds it, each string through ``text``; what JSON cannot hold is None."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, (int, float)):  # bool is an int
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, text) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, text) for v in value]
    return None


def _callable_sink(where: str, sink: Sink) -> Sink:
    if not callable(sink):
        raise ConfigError(
            f"{where}: a sink is a function taking each record dict, {sink!r} is not callable "
            "(for a JsonlFileHandler, pass its write_record)"
        )
    refuse_async(f"{where}: a sink", sink)
    return sink


def _own_keys(function: str, context: Mapping[str, Any]) -> None:
    """Refuse the keys a lens run sets: passed as context, they would file calls under another run."""
    for key in RUN_KEYS:
        if key in context:
            raise TypeError(
                f"{function}(): {key} is set by lens() itself, not passed as context; "
                "open a lens run with llm_ledger.lens(lens_key, ...), or give your key another name"
            )


class LLMCallMonitor:
    """Watches OpenAI clients, prices their calls, and emits one record per call and per lens run.

    The module-level functions (``llm_ledger.instrument``, ``lens``, ``track_llm_call``) use a
    default monitor; build your own for a separate price table or separate sinks.

    Args:
        prices: a :class:`PriceTable`, or the path of a YAML price file layered over genai-prices.
        capture_content: record message text, output text and error messages (off by default).
        redact: applied to every captured string before it is recorded.
        stream_usage: ask streamed chat calls for usage (``stream_options.include_usage``) when
            the caller did not, and hide what was asked for from the caller's chunks (not on
            ``with_streaming_response``, whose raw bytes are the caller's).
        logger: name of the logger records go to (``llm_monitor``); ``None`` for sinks only.
        sinks: callables receiving every record dict.

    ``monitor.budgets`` (a :class:`BudgetGuard`) checks lens runs against budgets and
    ``monitor.anomalies`` (an :class:`AnomalyDetector`) compares them with their baseline; both
    ``None`` unless set (``configure(budgets=..., anomalies=...)`` sets the default monitor's).
    """

    def __init__(
        self,
        *,
        prices: PriceTable | str | os.PathLike[str] | None = None,
        capture_content: bool = False,
        redact: Redactor | None = None,
        stream_usage: bool = True,
        logger: str | None = LOGGER_NAME,
        sinks: Iterable[Sink] = (),
    ) -> None:
        for name, flag in (("capture_content", capture_content), ("stream_usage", stream_usage)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        check_hook("redact", redact, REDACT_TAKES, REDACT_FIX)
        if logger is not None and not isinstance(logger, str):
            raise ConfigError(f"logger must be a logger name or None, got {logger!r}")
        if prices is None:
            prices = PriceTable()
        elif isinstance(prices, (str, os.PathLike)):
            prices = PriceTable.from_file(prices)
        elif not isinstance(prices, PriceTable):
            raise ConfigError(f"prices must be a PriceTable or the path of a price file, got {prices!r}")
        self.prices = prices
        self.capture_content = capture_content
        self.redact = redact
        self.stream_usage = stream_usage
        self._logger = logging.getLogger(logger) if logger is not None else None
        if self._logger is not None and self._logger.level == logging.NOTSET:
            # records are INFO; without this the root logger's default WARNING would drop them
            self._logger.setLevel(logging.INFO)
        if callable(sinks) or isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
            raise ConfigError(
                f"sinks must be a list of functions taking each record dict, got {sinks!r}; "
                "for one sink, pass sinks=[sink]"
            )
        self._sinks: tuple[Sink, ...] = tuple(_callable_sink("sinks", sink) for sink in sinks)
        self._sinks_lock = threading.Lock()
        # logged records reach the ancestors' handlers too (the root's), as logging propagates them;
        # not while configure()'s file takes the default monitor's (they need no second copy)
        self._upward = True
        self._unpriced: set[tuple[str, str]] = set()
        self._last_report: dict[str, float] = {}
        self.budgets: BudgetGuard | None = None
        self.anomalies: AnomalyDetector | None = None

    # -- public API -------------------------------------------------------------------------------

    def instrument(self, client: C) -> C:
        """Instrument an ``OpenAI`` / ``AsyncOpenAI`` / Azure client in place and return it."""
        from ._instrument import instrument_client

        return instrument_client(self, client)

    def lens(
        self, lens_key: str, *, source_id: Any = None, service: str | None = None, **context: Any
    ) -> LensRun:
        """Open a lens run: every call inside counts toward its summary (see ``LensRun``)."""
        _own_keys("lens", context)
        # unset keys inherit from an enclosing lens / track_llm_call block
        if source_id is not None:
            context["source_id"] = source_id
        if service is not None:
            context["service"] = service
        return LensRun(self, lens_key, context)

    def track_llm_call(self, *function: Never, **context: Any) -> TrackedContext:
        """Add context (``service``, ``source_id``, ``user_id``...) to every call inside."""
        if function:  # @track_llm_call without its parentheses
            raise TypeError(
                "track_llm_call() takes context keywords only: write @track_llm_call(service=...) with "
                "parentheses (instrument(client) records the calls; this adds context to them)"
            )
        _own_keys("track_llm_call", context)
        return TrackedContext(context)

    def add_sink(self, sink: Sink) -> None:
        """Send every record to ``sink`` as well (it must be quick and must not block)."""
        _callable_sink("add_sink()", sink)
        with self._sinks_lock:
            self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Sink) -> None:
        """Stop sending records to ``sink``; a sink never added is ignored."""
        with self._sinks_lock:
            self._sinks = tuple(s for s in self._sinks if s != sink)  # != : a bound method is made anew

    def _replace_first_sink(self, old: Sink | None, new: Sink | None) -> None:
        """Put ``new`` (if any) first among the sinks, in place of ``old`` (``configure()``'s JSONL file)."""
        with self._sinks_lock:
            rest = tuple(s for s in self._sinks if s != old)
            self._sinks = rest if new is None else (new, *rest)
            self._upward = new is None

    # -- used by the instrumentation ----------------------------------------------------------------

    def _report(self, where: str, exc: BaseException) -> None:
        """Report a failure inside the ledger, at most once a minute per place and kind."""
        kind = type(exc).__name__
        if once_a_minute(self._last_report, f"{where}:{kind}"):
            message = "llm-ledger failed in %s (the monitored call is unaffected): %s: %s"
            warn_internal(message, where, kind, exc, exc_info=exc)

    def _scrub(self, text: str, secrets: list[str]) -> str:
        """``text`` without the call's credentials, through the ``redact`` hook (a placeholder on failure)."""
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "[REDACTED]")
        redact = self.redact
        if redact is None:
            return text
        try:
            redacted = redact(text)
            if type(redacted) is not str:
                raise TypeError(f"redact returned {type(redacted).__name__}, not str")
            return redacted
        except BaseException as exc:
            if passed_on(exc):
                raise
            self._report("the redact hook", exc)
            return "[REDACTION FAILED]"

    def _captured_request(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A JSON-ready copy of the request's content (scrubbed when the call is recorded: an API-key
        provider runs inside the request); None, reported, when it cannot be copied."""
        keys = ("messages", "input", "instructions", "tools", "prompt")
        try:
            return {k: _json_ready(v, lambda text: text) for k in keys if (v := body.get(k)) is not None}
        except Exception as exc:  # e.g. nested deeper than the recursion limit allows
            self._report("capturing a request's content", exc)
            return None

    def _content(
        self, call: _Call, status: Status, response: ResponseShape, output_text: str | None
    ) -> dict[str, Any] | None:
        """The captured content and output, scrubbed; None, reported, when it cannot be copied. An
        answer cut short (stopped, failed, or cut by a limit or a filter) may end mid-word ("Ali" of
        "Alice", part of a key), which the redact hook and the scrubbing would miss: its output keeps
        up to its last whole word."""
        try:
            secrets = _secrets(call)
            scrubbed: dict[str, Any] = _json_ready(call.content, lambda text: self._scrub(text, secrets))
            if output_text is not None:
                if status != "ok" or response["finish_reason"] in _CUT_SHORT:
                    output_text = _LAST_WORD.sub("", output_text)
                scrubbed["output"] = self._scrub(output_text, secrets)
        except Exception as exc:  # e.g. nested deeper than the stack allows where the call ended
            self._report("capturing a call's content", exc)
            return None
        return scrubbed

    def _error_shape(self, call: _Call, exc: BaseException) -> ErrorShape:
        """The error's type, status and message: quoted and scrubbed with content capture on, else
        only what quotes neither request nor response."""
        name = type(exc).__name__
        try:
            status = getattr(exc, "status_code", None)
            status = status if isinstance(status, int) else None
            message = None
            if call.content is not None:
                message = self._scrub(str(exc), _secrets(call))
            elif status is not None:
                words = (getattr(exc, attr, None) for attr in ("type", "code"))
                message = " ".join([f"HTTP {status}", *(w for w in words if isinstance(w, str) and w)])
            elif name in ("APIConnectionError", "APITimeoutError"):
                message = str(exc)  # the SDK's fixed wording: "Connection error." / "Request timed out."
        except Exception as failure:
            self._report("reading a call's error", failure)
            status = message = None
        # an error of its own without a status (a body that broke): the status the server answered
        return {"type": name, "status_code": call.answered if status is None else status, "message": message}

    def _finish(
        self,
        call: _Call,
        status: Status,
        response: ResponseShape | None,
        usage_obj: Usage | Any,
        *,
        error: BaseException | None = None,
        output_text: str | None = None,
    ) -> None:
        """Record a call that ended, once: counted in the lens runs it began in, then emitted."""
        # taken in one line, with no switch point inside: two threads ending it at once (a stream
        # closed on one as another reads on) find it theirs once, also under a debugger's tracer
        owner, call.owner = call.owner, None
        if owner is not _records._id_prefix:
            if owner is LATER:  # a background response's retrieve or cancel
                self._later(call, status, response, usage_obj, error, output_text)
            return
        record, cost_units = self._record(call, status, response, usage_obj, error, output_text)
        # counted before the sinks may change the record (counting normalised counts cannot fail),
        # settled after: a lens's record follows its calls'
        for run in call.lenses:
            run._totals.add(record, cost_units)
        try:
            self._emit(record)
        finally:  # even when Ctrl-C lands in a sink: else its lens would wait for the call for good
            for run in call.lenses:
                try:
                    run._settle_call()
                except Exception as exc:
                    self._report("ending a lens", exc)

    def _later(
        self,
        call: _Call,
        status: Status,
        response: ResponseShape | None,
        usage_obj: Usage | Any,
        error: BaseException | None,
        output_text: str | None,
    ) -> None:
        """A retrieve or cancel answered: a background response's end it shows is recorded once in this
        process (a poll of one still running records nothing). One begun here, by its monitor, with the
        request, context, start and open lens runs of the call that began it; one begun elsewhere, with
        the retrieve's context and lens runs and the request its Response states."""
        reason = None if response is None else response["finish_reason"]
        if reason is None or reason in PENDING_STATUSES:
            return
        entry = _background.take(
            _background.key(call.endpoint, call.background_id),
            lambda: getattr(_answer(call), "background", None) is True,  # whether it runs in the background
        )
        if entry is _background.ENDED:
            return
        monitor = self
        if entry is None:
            runs = tuple(run for run in call.around if run._totals.begin())
            try:
                call.request = stated_request(_answer(call), call.request["stream"])
            except Exception as exc:  # recorded with the retrieve's own request
                self._report("reading a background response's request", exc)
        else:
            monitor, began = entry
            runs = tuple(run for run in began.lenses if run._totals.begin())
            for run in runs:
                run._totals.ended()
            context = began.context
            if began.lenses and began.lenses[-1] not in runs:  # its run wrote its record already
                context = filed_under(context, runs)
            call.request = {**began.request, "stream": call.request["stream"]}
            call.context, call.endpoint = context, began.endpoint
            call.start_epoch, call.start_perf = began.start_epoch, began.start_perf
            call.ttft = None  # a resumed stream's first token is not the response's
            call.client, call.content = began.client, began.content
        call.lenses = runs
        call.owner = _records._id_prefix
        if reason == "cancelled":  # stopped by a caller: billed for what ran, which OpenAI does not say
            status = "interrupted"
        monitor._finish(call, status, response, usage_obj, error=error, output_text=output_text)

    def _record(
        self,
        call: _Call,
        status: Status,
        response: ResponseShape | None,
        usage_obj: Usage | Any,
        error: BaseException | None,
        output_text: str | None,
    ) -> tuple[CallRecord, int | None]:
        """The call's record and its cost in 10**-24 USD; what it cannot read is reported and left out."""
        duration = time.perf_counter() - call.start_perf
        try:
            usage = usage_of(call.operation, usage_obj)
        except Exception as exc:
            self._report("reading a call's result", exc)
            usage = no_usage()
        if response is None:
            response = _NO_RESPONSE.copy()
        elif type(response["model"]) is not str:
            response["model"] = None  # e.g. a compatible server answering with a number
        if response["request_id"] is not None:
            call.request_id = response["request_id"]  # the response's header need not be read
        call.let_go(error)
        response["request_id"] = call.request_id
        server = call.server or server_of(None)  # no response, and no error naming a request
        prices = self.prices
        try:
            route = call.endpoint.route(prices)  # resolved once per client and price table
        except Exception as exc:
            self._report("choosing how a client is priced", exc)
            route = prices.route()
        server["provider"] = route.provider
        if route.reasoning_outside:  # Google, xAI: thinking tokens left out of completion_tokens
            usage = reasoning_in_completion(usage)
        costs = self._price(route, response, call.request["model"], usage, call.start_epoch)
        if costs is None and response["finish_reason"] in PENDING_STATUSES and call.operation == "responses":
            _background.begun(self, call, response["id"])  # its end is recorded when a retrieve sees it
        prompt_cost, completion_cost, source, priced_at = costs or _UNPRICED
        total_cost = None if costs is None else costs[0] + costs[1]
        reported = reported_cost_units(usage_obj)  # the provider's own figure wins
        if reported is not None:
            total_cost = reported
        uses = response["tool_uses"]
        # a search model answering in chat searched the web first, as it does for every request:
        # billed per request (docs/PRICING.md, "Built-in tools")
        if "-search-" in (response["model"] or "") and call.operation == "chat":
            uses = response["tool_uses"] = {"web_search": 1}
        record = call_record(  # 8 by position: a call passing over 15 keywords builds a dict of them
            status,
            call.operation,
            dict(call.context),
            call.request,
            response,
            usage,
            call.start_epoch,
            duration,
            server=server,
            ttft_s=call.ttft,
            prompt_cost_units=prompt_cost,
            completion_cost_units=completion_cost,
            retries=call.retries,
            error=None if error is None else self._error_shape(call, error),
            content=None if call.content is None else self._content(call, status, response, output_text),
            cost_source=source,
            cost_matched_by=route.matched_by,
            reported_cost_units=reported,
            priced_epoch=priced_at,
        )
        if uses and reported is None:  # the price file's fees, else left out; a provider's cost has them
            fees, left_out = prices._tool_fees(response["model"], call.request["model"], uses)
            total_cost = add_tool_fees(record["cost"], total_cost, fees, left_out)
        if call.lost:
            record["cost"]["attempts_left_out"] = call.lost
        return record, total_cost

    def _price(
        self, route: Route, response: ResponseShape, requested: str | None, usage: Usage, at: float
    ) -> tuple[int, int, str, float | None] | None:
        """(prompt, completion) cost in 10**-24 USD, the rates' source and when they were taken (None:
        the time of day does not change them), for the served model (else the requested one) on its
        service tier at the call's start; None without usage or price."""
        if usage["prompt_tokens"] is None or usage["completion_tokens"] is None:
            return None
        try:
            tier = response["service_tier"]
            costs = route._costs(response["model"], usage, fallback=requested, at=at, tier=tier, live=True)
            if costs is not None:
                return costs
        except UnpricedCounts as exc:  # the server's usage (cached > prompt tokens), not a fault of ours
            if once_a_minute(self._last_report, "usage"):
                warn_internal(
                    "llm-ledger: the usage answered for model %r cannot be priced, so the call is recorded "
                    "with a null cost: %s",
                    response["model"] or requested,
                    exc,
                )
            return None
        except Exception as exc:
            self._report("pricing a call", exc)
            return None  # the call is still recorded, with a null cost
        name = requested or response["model"] or "<none>"
        unpriced = self._unpriced  # bounded: model names made per request must not grow it nor flood the log
        if (name, route.provider) not in unpriced and len(unpriced) <= _UNPRICED_NAMED:
            unpriced.add((name, route.provider))
            warn_internal(_NO_PRICE if len(unpriced) <= _UNPRICED_NAMED else _NO_PRICES, name, route.provider)
        return None

    def _emit(self, record: CallRecord | LensRecord | AnomalyRecord | BudgetRecord) -> None:
        """Hand a record to the logger and to every sink, each failure reported."""
        logger = self._logger
        if logger is not None:
            level = _LEVELNO[record["level"]]
            try:
                if _heard(logger, level, self._upward) and logger.isEnabledFor(level):
                    # built directly: logger.log() would walk the stack to find the caller
                    log_record = _LedgerLogRecord(logger.name, level, "", 0, record, None, None)
                    if self._upward:
                        logger.handle(log_record)
                    elif logger.filter(log_record):  # the logger's own handlers only
                        for handler in logger.handlers:
                            if level >= handler.level:
                                handler.handle(log_record)
            except BaseException as exc:
                if passed_on(exc):
                    raise
                self._report("a log handler", exc)
        for sink in (*self._sinks, *_global_sinks) if _global_sinks else self._sinks:
            try:
                sink(record)
            except BaseException as exc:
                if passed_on(exc):
                    raise
                self._report(f"sink {sink!r}", exc)

    def _alert(
        self, record: AnomalyRecord | BudgetRecord, callback: Callable[[Any], object] | None, what: str
    ) -> None:
        """Emit an alert record, then hand it to the application's ``callback`` (its failure reported)."""
        self._emit(record)
        if callback is not None:
            try:
                callback(record)
            except BaseException as exc:
                if passed_on(exc):
                    raise
                self._report(what, exc)

    def _emit_lens(self, context: dict[str, Any], summary: LensSummary, end_epoch: float) -> None:
        """Emit a lens run's record; with anomaly detection on, it is judged before any sink may
        change it, and its anomalies follow it."""
        detector = self.anomalies
        metrics = () if detector is None else detector.config.metrics
        record = lens_record(context=context, summary=summary, end_epoch=end_epoch, anomaly_metrics=metrics)
        if detector is None:
            self._emit(record)
            return
        try:
            found = detector.observe(record)
        except Exception as exc:
            self._report("anomaly detection", exc)
            found = []
        self._emit(record)
        for anomaly in found:
            self._alert(anomaly, detector.on_anomaly, "the on_anomaly callback")
