"""The one place that defines the shape of every record llm-ledger emits (docs/MONITORING.md):
``llm_api_call``, ``lens_summary``, ``lens_anomaly`` and ``budget_exceeded``, as plain JSON-ready
dicts that every sink, the plugin, reports and exporters consume without a copy of the schema.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "ANOMALY_EVENT",
    "BUDGET_EVENT",
    "CALL_EVENT",
    "IMAGES",
    "LENS_EVENT",
    "LOGGER_NAME",
    "MEDIA",
    "USD_UNITS",
    "USD_UNIT_DIGITS",
    "AnomalyRecord",
    "AnomalyShape",
    "BudgetRecord",
    "CallRecord",
    "LensRecord",
    "LensSummary",
    "LensTotals",
    "ServerShape",
    "Status",
    "add_tool_fees",
    "anomaly_record",
    "billed",
    "billed_without_cost",
    "budget_record",
    "call_record",
    "cost_decimal",
    "cost_left_out",
    "cost_pending",
    "iso_timestamp",
    "lens_record",
    "made_here",
    "new_id",
    "process_of",
    "rounded_ms",
]

LOGGER_NAME = "llm_monitor"
# money inside the ledger: integers of 10**-24 USD, exact for any rate the price table holds
USD_UNIT_DIGITS = 24
USD_UNITS = 10**USD_UNIT_DIGITS


def cost_decimal(value: Any) -> Decimal | None:
    """A record's cost (a JSON number of USD) as the exact decimal written; None unless finite >= 0."""
    if type(value) is int:
        return Decimal(value) if value >= 0 else None
    if type(value) is float and math.isfinite(value) and value >= 0:
        return Decimal(repr(value))  # repr: the shortest spelling of the float, as the JSON has it
    return None


CALL_EVENT = "llm_api_call"
LENS_EVENT = "lens_summary"
ANOMALY_EVENT = "lens_anomaly"
BUDGET_EVENT = "budget_exceeded"

Status = Literal["ok", "error", "interrupted"]
_LEVELS: dict[str, str] = {"ok": "INFO", "error": "ERROR", "interrupted": "WARNING"}


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` stopped a call on the caller's side (a cancelled task, Ctrl-C): ``interrupted``."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    # neither imported here (a process that never loads them pays nothing): a cancellation comes
    # from a loaded one
    asyncio, trio = sys.modules.get("asyncio"), sys.modules.get("trio")
    return (asyncio is not None and isinstance(exc, asyncio.CancelledError)) or (
        trio is not None and isinstance(exc, trio.Cancelled)
    )


class RequestShape(TypedDict):
    """What the request asked for: a parameter not given (or not of its type) is null."""

    model: str | None
    temperature: float | None
    top_p: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    max_tokens: int | None
    seed: int | None
    n: int | None
    reasoning_effort: str | None
    output_type: str | None
    messages_count: int | None
    system_prompt_length: int
    user_prompt_length: int
    has_images: bool
    image_count: int
    stream: bool
    tools_count: int
    service_tier: str | None
    dimensions: int | None
    encoding_format: str | None
    stop_sequences: list[str] | None
    verbosity: str | None


class ResponseShape(TypedDict):
    model: str | None
    id: str | None
    request_id: str | None
    content_length: int | None
    finish_reason: str | None
    tool_calls_count: int | None
    service_tier: str | None
    tool_uses: dict[str, int] | None  # kind -> uses of the built-in tools billed per use


class ServerShape(TypedDict):
    """Where the call went (the URL of its last HTTP request): host, port and OTel's provider name."""

    address: str | None
    port: int | None
    provider: str


class Usage(TypedDict):
    """Token counts as OpenAI means them, whoever served the call (docs/PRICING.md): the cached,
    cache-write and audio prompt tokens are parts of ``prompt_tokens``; ``completion_tokens`` is all
    output billed, reasoning and audio included."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cache_write_tokens: int | None
    prompt_audio_tokens: int | None
    completion_audio_tokens: int | None
    cached_audio_tokens: int | None
    prompt_image_tokens: int | None
    cached_image_tokens: int | None


class Timing(TypedDict):
    duration_ms: float
    start_time: str
    end_time: str
    time_to_first_token_ms: float | None


class CostShape(TypedDict):
    """What the call cost and where the figure comes from: the provider's own, when it reports one
    (``computed_usd`` then keeps the price table's, the split null), else the price table's."""

    prompt_cost_usd: float | None
    completion_cost_usd: float | None
    tool_fees_usd: float | None  # in the total: prompt + completion + tool fees = total
    total_cost_usd: float | None
    source: str | None  # "genai-prices <version>", "price-file", "provider-reported"; null: no cost
    matched_by: str  # how the rates were chosen: "host", "provider" or "model"
    computed_usd: float | None
    priced_at: str | None  # set only when the time of day sets the rates
    left_out: list[str] | None  # tool kinds billed apart, with no fee known
    attempts_left_out: NotRequired[int]  # present only when there are any


class ErrorShape(TypedDict):
    type: str
    status_code: int | None
    message: str | None


class CallRecord(TypedDict, total=False):
    timestamp: str
    level: str
    logger: str
    event: str
    call_id: str
    status: Status
    operation: str
    server: ServerShape
    context: dict[str, Any]
    request: RequestShape
    response: ResponseShape
    usage: Usage
    timing: Timing
    cost: CostShape
    retries: int | None
    error: ErrorShape | None
    content: dict[str, Any]  # only with capture_content=True


class LensSummary(TypedDict):
    total_api_calls: int
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    total_cost_usd: float
    avg_duration_ms: float | None
    models_used: list[str]
    errors: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    prompt_audio_tokens: int
    completion_audio_tokens: int
    cached_audio_tokens: int
    prompt_image_tokens: int
    cached_image_tokens: int
    duration_ms: float
    open_calls: int
    pending_calls: int
    cost_complete: bool


class _RunRecord(TypedDict):
    """The fields every record of a lens run starts with."""

    timestamp: str
    level: str
    logger: str
    event: str
    context: dict[str, Any]  # the lens run's (lens_key, lens_run_id, ...)


class LensRecord(_RunRecord):
    summary: LensSummary
    anomaly_metrics: NotRequired[list[str]]  # present while anomaly detection is on


def _run_record(timestamp: str, level: str, event: str, context: Mapping[str, Any]) -> _RunRecord:
    # the context copied: a sink may change the record, never the lens's live context
    return {
        "timestamp": timestamp,
        "level": level,
        "logger": LOGGER_NAME,
        "event": event,
        "context": dict(context),
    }


# ids end in a counter's 12 hex digits, hex(16**12 + n)[3:]: cheaper than a format spec
_COUNTER_DIGITS = 12
_ID_START = 16**_COUNTER_DIGITS + 1


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(10).hex(), itertools.count(_ID_START)


# the prefix is also the process's identity: what began before a fork is the prefix's process's
_id_prefix, _id_counter = "", itertools.count(_ID_START)
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_id() -> str:
    """32 hex digits, unique across processes and forks: a random per-process prefix and a counter."""
    return _id_prefix + hex(next(_id_counter))[3:]


def made_here(record_id: str) -> bool:
    """Whether ``new_id()`` made ``record_id`` in this process, not in one it was forked from."""
    return record_id.startswith(_id_prefix)


def process_of(record_id: Any) -> str | None:
    """The process ``new_id()`` made ``record_id`` in (its prefix); None for an id of another form."""
    if isinstance(record_id, str) and len(record_id) == len(_id_prefix) + _COUNTER_DIGITS:
        return record_id[: len(_id_prefix)]
    return None


_second_prefixes: dict[int, str] = {}  # whole epoch seconds -> "YYYY-MM-DDTHH:MM:SS"
_MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


def iso_timestamp(epoch: float) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z`` (``2025-02-14T10:30:45.123Z``), the last seconds'
    text cached (``strftime`` is costly)."""
    seconds = int(epoch)
    prefix = _second_prefixes.get(seconds)
    if prefix is None:
        if len(_second_prefixes) >= 64:
            _second_prefixes.clear()
        prefix = _second_prefixes[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return prefix + _MILLISECONDS[int((epoch - seconds) * 1000)]


def rounded_ms(seconds: float) -> float:
    """Seconds as milliseconds rounded to 3 decimals (cheaper than ``round(x, 3)``)."""
    return int(seconds * 1_000_000 + 0.5) / 1000


def call_record(
    status: Status,
    operation: str,
    context: dict[str, Any],
    request: RequestShape,
    response: ResponseShape,
    usage: Usage,
    start_epoch: float,
    duration_s: float,
    *,
    ttft_s: float | None,
    prompt_cost_units: int | None,
    completion_cost_units: int | None,
    retries: int | None,
    error: ErrorShape | None,
    content: dict[str, Any] | None = None,
    server: ServerShape | None = None,
    cost_source: str | None = None,
    cost_matched_by: str = "model",
    reported_cost_units: int | None = None,
    priced_epoch: float | None = None,
) -> CallRecord:
    """Build one ``llm_api_call`` record; costs in 10**-24 USD, prompt and completion both given or
    both None (unpriced); ``reported_cost_units``, the provider's own figure, wins. ``priced_epoch``:
    the moment the rates were taken at, given only when the time of day sets them. Built-in tools'
    fees: :func:`add_tool_fees`."""
    end = iso_timestamp(start_epoch + duration_s)
    prompt_usd = completion_usd = total_usd = computed_usd = computed_units = None
    if prompt_cost_units is not None and completion_cost_units is not None:
        computed_units = prompt_cost_units + completion_cost_units
        prompt_usd, completion_usd = prompt_cost_units / USD_UNITS, completion_cost_units / USD_UNITS
        total_usd = computed_units / USD_UNITS
    if reported_cost_units is not None:
        if computed_units != reported_cost_units:
            computed_usd, prompt_usd, completion_usd = total_usd, None, None
        total_usd, cost_source = reported_cost_units / USD_UNITS, "provider-reported"
    record: CallRecord = {
        "timestamp": end,
        "level": _LEVELS[status],
        "logger": LOGGER_NAME,
        "event": CALL_EVENT,
        "call_id": new_id(),
        "status": status,
        "operation": operation,
        "server": server or {"address": None, "port": None, "provider": "openai"},
        "context": context,
        "request": request,
        "response": response,
        "usage": usage,
        "timing": {
            "duration_ms": rounded_ms(duration_s),
            "start_time": iso_timestamp(start_epoch),
            "end_time": end,
            "time_to_first_token_ms": None if ttft_s is None else rounded_ms(ttft_s),
        },
        "cost": {
            "prompt_cost_usd": prompt_usd,
            "completion_cost_usd": completion_usd,
            "tool_fees_usd": None,
            "total_cost_usd": total_usd,
            "source": cost_source,
            "matched_by": cost_matched_by,
            "computed_usd": computed_usd,
            "priced_at": None if priced_epoch is None else iso_timestamp(priced_epoch),
            "left_out": None,
        },
        "retries": retries,
        "error": error,
    }
    if content is not None:
        record["content"] = content
    return record


IMAGES = frozenset({"image_generation", "image_edit", "image_variation"})
# the operations billed in images, seconds or characters, whose usage (if any) is never text tokens
MEDIA = frozenset({*IMAGES, "transcription", "translation", "speech", "video_generation", "live"})
# the statuses of a background response still running: its cost comes in the record of its end
PENDING_STATUSES = ("queued", "in_progress")


def cost_pending(record: Mapping[str, Any]) -> bool:
    """Whether a call is a background response's start, whose usage and cost come in the record of
    its end (read leniently: a report reads records of any make)."""
    response = record.get("response")
    return (
        record.get("operation") == "responses"
        and type(response) is dict
        and response.get("finish_reason") in PENDING_STATUSES
    )


def add_tool_fees(
    cost: CostShape, token_units: int | None, fee_units: int | None, left_out: list[str] | None
) -> int | None:
    """Add a call's built-in tools' fees (``fee_units``; None: no fee known) to the cost priced from
    its tokens alone (``token_units``; None: unpriced, which stays so), in 10**-24 USD; the new total.
    ``left_out`` names the kinds with no fee. Not for a provider's own cost, which includes the fees."""
    cost["left_out"] = left_out
    if token_units is None or fee_units is None:
        return token_units
    total = token_units + fee_units
    cost["tool_fees_usd"] = fee_units / USD_UNITS
    cost["total_cost_usd"] = total / USD_UNITS
    return total


def billed_without_cost(record: Mapping[str, Any]) -> bool:
    """Whether a call has no cost yet may have been billed (:func:`billed`): ``cost_complete: false``
    in its lens."""
    cost = record.get("cost")
    return (not isinstance(cost, Mapping) or cost.get("total_cost_usd") is None) and billed(record)


def billed(record: Mapping[str, Any]) -> bool:
    """Whether a call may have been billed: it did not fail, or it failed after reporting tokens,
    after the server answered 2xx (a body that broke), after its streamed answer had begun, or with
    attempts that may have been billed; never a background response's start (``cost_pending``). The
    one rule of the lens summary, the reports and the plugin, read leniently (records of any make)."""
    if cost_pending(record):
        return False
    usage = record.get("usage")
    if record.get("status") != "error" or (isinstance(usage, Mapping) and usage.get("total_tokens")):
        return True
    cost = record.get("cost")
    if isinstance(cost, Mapping) and cost.get("attempts_left_out"):  # answered, or timed out once sent
        return True
    error = record.get("error")
    answered = error.get("status_code") if isinstance(error, Mapping) else None
    if type(answered) is int and 200 <= answered < 300:
        return True
    request, response = record.get("request"), record.get("response")
    return bool(
        isinstance(request, Mapping)
        and request.get("stream")
        and isinstance(response, Mapping)
        and response.get("id")
    )


def cost_left_out(record: Mapping[str, Any]) -> bool:
    """Whether a call's recorded cost leaves out something it may have been billed: it has none, or
    leaves out tool uses (``cost.left_out``) or attempts (``cost.attempts_left_out``). What
    ``cost_complete: false`` says of a lens."""
    cost = record.get("cost")
    if isinstance(cost, Mapping) and cost.get("total_cost_usd") is not None:
        return bool(cost.get("left_out") or cost.get("attempts_left_out"))
    return billed(record)


class LensTotals:
    """Running totals of one lens run, thread-safe. A call counts from ``begin`` to ``add``, and its
    record is emitted before the run's (``settle``): a run ending with calls open reports them as
    ``open_calls``, and the last of them to settle emits the run's whole record."""

    # class defaults, set on a run only by the rare calls that change them (costing the others nothing)
    pending: int = 0  # background responses begun in the run whose end it has not counted
    units_left_out: bool = False  # an image, audio or video call billed in other units than tokens
    unsplit: bool = False  # a call whose usage gave total_tokens alone: no price applies to it
    answers_lost: bool = False  # an answer that may have been billed lost its usage
    cached_audio_tokens: int = 0  # these three: realtime responses', the only calls that report them
    prompt_image_tokens: int = 0
    cached_image_tokens: int = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.made_in: str = _id_prefix  # the process's: a fork gives the child a prefix of its own
        self.calls: int = 0
        self.open: int = 0
        self.emitting: int = 0  # calls counted whose records are not yet emitted
        self.closed: bool = False
        self.errors: int = 0
        self.prompt_tokens: int = 0
        self.completion_tokens: int = 0
        self.total_tokens: int = 0
        self.cached_tokens: int = 0
        self.reasoning_tokens: int = 0
        self.cache_write_tokens: int = 0
        self.prompt_audio_tokens: int = 0
        self.completion_audio_tokens: int = 0
        self.cost_units: int = 0
        self.priced: bool = True  # every call counted had its whole cost (background starts aside)
        self.tokens_complete: bool = True  # False once a call that was answered reported no usage
        self.fees_left_out: bool = False  # True once a call's cost left out its built-in tools' fees
        self.duration_s: float = 0.0
        self.models: set[str] = set()

    def begin(self) -> bool:
        """Count a call that starts now; False once the run ended, or in a child forked since it began
        (the run is the parent's, and the lock may have been held at the fork)."""
        if self.made_in is not _id_prefix:
            return False
        with self._lock:
            if self.closed:
                return False
            self.open += 1
            return True

    def hold(self) -> None:
        """Count one more call of a realtime connection the run counts (its ``begin``), even once the run
        ended: the connection holds it open until it ends (``release``)."""
        with self._lock:
            self.open += 1

    def release(self) -> None:
        """The realtime connection ``begin`` counted ended: settled as a call (``settle``), counting none."""
        with self._lock:
            self.open -= 1
            self.emitting += 1

    def add(self, record: CallRecord, total_cost_units: int | None) -> None:
        """Count one ended call (failed and interrupted calls count too); cost in 10**-24 USD."""
        status = record["status"]
        usage = record["usage"]
        # the model asked for, else the one that answered (a request naming none), as reports name it
        model = record["request"]["model"] or record["response"]["model"]
        with self._lock:
            self.calls += 1
            self.open -= 1
            self.emitting += 1
            if status == "error":
                self.errors += 1
            self.prompt_tokens += usage["prompt_tokens"] or 0
            self.completion_tokens += usage["completion_tokens"] or 0
            self.total_tokens += usage["total_tokens"] or 0
            self.cached_tokens += usage["cached_tokens"] or 0
            self.reasoning_tokens += usage["reasoning_tokens"] or 0
            self.cache_write_tokens += usage["cache_write_tokens"] or 0
            self.prompt_audio_tokens += usage["prompt_audio_tokens"] or 0
            self.completion_audio_tokens += usage["completion_audio_tokens"] or 0
            if record["operation"] == "realtime":
                self.cached_audio_tokens += usage["cached_audio_tokens"] or 0
                self.prompt_image_tokens += usage["prompt_image_tokens"] or 0
                self.cached_image_tokens += usage["cached_image_tokens"] or 0
            if total_cost_units is not None:
                self.cost_units += total_cost_units
                if record["cost"]["left_out"]:  # tool uses billed apart, with no price
                    self.priced = False
                    self.fees_left_out = True
            elif billed_without_cost(record):
                self.priced = False
                if status == "error" and not usage["total_tokens"]:  # billed, its usage lost
                    self.answers_lost = True
                if usage["prompt_tokens"] is None and usage["total_tokens"] is not None:
                    self.unsplit = self.unsplit or record["operation"] not in MEDIA
            elif cost_pending(record):  # complete once its end is counted (ended())
                self.pending += 1
            if usage["total_tokens"] is None and status != "error" and not cost_pending(record):
                if record["operation"] in MEDIA:  # billed in images, seconds...: never tokens
                    self.units_left_out = True
                else:
                    self.tokens_complete = False
            self.duration_s += record["timing"]["duration_ms"] / 1000
            if type(model) is str:
                self.models.add(model)

    def lose_answer(self) -> None:
        """A call counted here dropped an answer that may have been billed, its usage unknown (the
        record's ``cost.attempts_left_out``): told when the SDK drops it, so that counting a call
        (``add``) pays nothing for it."""
        with self._lock:
            self.priced = False
            self.answers_lost = True

    def ended(self) -> None:
        """A background response begun in the run ended: its end's record is counted next."""
        with self._lock:
            self.pending -= 1

    @property
    def cost_complete(self) -> bool:
        """Every call counted had its whole cost, and every background response begun here ended."""
        return self.priced and self.pending <= 0

    def settle(self) -> bool:
        """A counted call's record was emitted; True when the run's record is due now."""
        with self._lock:
            self.emitting -= 1
            return self.closed and self.open == 0 and self.emitting == 0

    def close(self, wall_s: float) -> tuple[LensSummary, bool]:
        """End the run: its summary now, and whether its record is due now."""
        with self._lock:
            self.closed = True
            return self._summary(wall_s), self.open == 0 and self.emitting == 0

    def summary(self, wall_s: float) -> LensSummary:
        """The aggregate dict an application stores in ``SourceLog.extra_data``."""
        with self._lock:
            return self._summary(wall_s)

    def _summary(self, wall_s: float) -> LensSummary:
        return {
            "total_api_calls": self.calls,
            "total_tokens": self.total_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_cost_usd": self.cost_units / USD_UNITS,
            "avg_duration_ms": round(self.duration_s * 1000 / self.calls, 3) if self.calls else None,
            "models_used": sorted(self.models),
            "errors": self.errors,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "prompt_audio_tokens": self.prompt_audio_tokens,
            "completion_audio_tokens": self.completion_audio_tokens,
            "cached_audio_tokens": self.cached_audio_tokens,
            "prompt_image_tokens": self.prompt_image_tokens,
            "cached_image_tokens": self.cached_image_tokens,
            "duration_ms": round(wall_s * 1000, 3),
            "open_calls": self.open,
            "pending_calls": max(self.pending, 0),
            "cost_complete": self.cost_complete and self.open == 0,
        }


def lens_record(
    *, context: dict[str, Any], summary: LensSummary, end_epoch: float, anomaly_metrics: tuple[str, ...] = ()
) -> LensRecord:
    """Build one ``lens_summary`` record, its summary a copy (a sink never changes the run's);
    ``anomaly_metrics``: the keys anomaly detection judges the run on (none: it is off)."""
    summary = summary.copy()
    summary["models_used"] = list(summary["models_used"])
    run = _run_record(iso_timestamp(end_epoch), "INFO", LENS_EVENT, context)
    record: LensRecord = {**run, "summary": summary}  # type: ignore[typeddict-item]  # mypy: a NotRequired key
    if anomaly_metrics:
        record["anomaly_metrics"] = list(anomaly_metrics)
    return record


class AnomalyShape(TypedDict):
    """What docs/ANOMALIES.md describes ("What an anomaly gives you")."""

    metric: str  # a LensSummary key
    value: float
    median: float
    mad: float
    threshold: float
    k: float
    scale: str
    runs: int
    model: str | None


class AnomalyRecord(_RunRecord):
    anomaly: AnomalyShape


class BudgetShape(TypedDict):
    """What docs/BUDGETS.md describes ("What happens")."""

    limit: str  # a budgets.yaml limit key: max_cost_usd, max_total_tokens, ...
    max: float
    actual: float
    source: str  # the budgets file, or configure(budgets=...)
    mode: str  # "warn" or "raise"
    refused: bool  # True: the call past max_api_calls in raise mode, refused unsent (docs/BUDGETS.md)


class BudgetRecord(_RunRecord):
    budget: BudgetShape


def anomaly_record(*, lens: Mapping[str, Any], anomaly: AnomalyShape) -> AnomalyRecord:
    """Build one ``lens_anomaly`` record for the lens run ``lens`` (stamped with the run's end)."""
    return {**_run_record(lens["timestamp"], "WARNING", ANOMALY_EVENT, lens["context"]), "anomaly": anomaly}


def budget_record(*, context: dict[str, Any], budget: BudgetShape, epoch: float) -> BudgetRecord:
    """Build one ``budget_exceeded`` record for the lens run whose ``context`` is given."""
    # floats for every limit (tokens and calls too): a log index maps a field by its first value
    budget = {**budget, "max": float(budget["max"]), "actual": float(budget["actual"])}
    return {**_run_record(iso_timestamp(epoch), "WARNING", BUDGET_EVENT, context), "budget": budget}
