"""``PrometheusSink``: the call and lens records (nothing read from the SDK) as Prometheus metrics, with
bounded labels (docs/exporters.md, Cardinality) and each new series scraped at 0 before its values, so
that ``rate()`` counts them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import json
import math
import os
import socket
import socketserver
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

from .._errors import ConfigError, unchained
from .._errors import internal_log as _internal_log
from .._records import ANOMALY_EVENT, BUDGET_EVENT, CALL_EVENT, LENS_EVENT, cost_left_out
from ..loading import as_typed

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "DURATION_BUCKETS",
    "LENS_COST_BUCKETS",
    "MAX_LENSES",
    "MAX_MODELS",
    "MAX_TIERS",
    "NO_LENS",
    "OTHER",
    "PENDING_CALLS",
    "PrometheusSink",
    "flush_metrics",
    "metrics_registry",
    "shutdown_now",
    "start_metrics_server",
]

# the GenAI semantic conventions' advice for gen_ai.client.operation.duration: 0.01 s doubling to 81.92 s
DURATION_BUCKETS: Final = tuple(0.01 * 2**i for i in range(14))
# USD per lens run: a ten-thousandth of a cent (a short call to a small model) to ten dollars
LENS_COST_BUCKETS: Final = (
    0.000001, 0.000003, 0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0
)  # fmt: skip
MAX_LENSES: Final = 200
MAX_MODELS: Final = 100
# distinct service tiers kept by name: the server answers with one of a few ("default", "flex",
# "priority", "scale", a compatible server's own), so a cap reached means a server answering oddly
MAX_TIERS: Final = 10
OTHER: Final = "other"  # a lens, model or service tier beyond the cap
NO_LENS: Final = "none"  # a call made outside any lens
UNKNOWN_MODEL: Final = "unknown"
NO_TIER: Final = "none"  # an answer that names no service tier (embeddings, a failed call, most providers)
_NONE_LABELS: Final = {"lens": NO_LENS, "model": UNKNOWN_MODEL, "service_tier": NO_TIER}
_CACHE_LIMIT: Final = 10_000  # label tuples whose metric children are kept at hand
_ERRORS_LOGGED: Final = 100  # distinct update errors logged with their traceback; later ones only counted
_CALL_LABELS: Final = ("lens", "model", "provider", "operation", "status", "service_tier")
# a pending key is (event, its labels' raw values...): a call's adds two values that are no labels
_KEY_LABELS: Final = {
    CALL_EVENT: _CALL_LABELS, LENS_EVENT: ("lens",), ANOMALY_EVENT: ("lens", "metric"),
    BUDGET_EVENT: ("lens", "limit"),
}  # fmt: skip
# a call's token counts by token_type (cache_write, input_audio within input; output_audio within output,
# as in OpenAI's usage); after them, the calls billed without a known cost
_TOKENS: Final = ("input", "output", "cached", "reasoning", "cache_write", "input_audio", "output_audio")
_COUNT_INDEXES: Final = range(len(_TOKENS) + 1)
_NO_COUNTS: Final = (0,) * len(_COUNT_INDEXES)
# calls summed per label tuple before they reach the metrics (a collection of the registry, a
# scrape, moves them first): prometheus-client's values are several objects each, cold between
# the SDK's own work, where a call's sums are one list
PENDING_CALLS: Final = 1024
_serving = False  # this process, or one it was forked from, serves /metrics (see _serves_here)
_unserved = False  # this process was forked from one that serves /metrics, and serves none itself
_unusable: set[str] = set()  # files of scraped series that could not be used (logged once each)
_SCRAPED_FILE: Final = "llm_ledger_scraped.labels"  # in the multiprocess directory; not *.db, which it reads
_sinks: weakref.WeakSet[PrometheusSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _unserved
    _unserved = _serving and not _multiprocess_dir()
    for sink in list(_sinks):  # a lock held by another thread at the fork would be held for good
        sink._lock, sink._pending_lock = threading.Lock(), threading.Lock()
        sink._pending.clear()  # the parent's calls: the parent moves them
        sink._pending_calls = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _serves_here() -> None:
    """This process serves its metrics (start_metrics_server, or a collection of a sink's registry: the
    application's own /metrics): a child forked from it, outside multiprocess mode, is unserved."""
    global _serving, _unserved
    _serving, _unserved = True, False


def _warn_unserved() -> None:
    """Once per process: its metrics are kept where no /metrics serves them (gunicorn --preload)."""
    global _unserved
    _unserved = False
    _internal_log.warning(
        "llm-ledger: pid %d was forked from the process that serves /metrics (gunicorn --preload, a "
        "multiprocessing pool), so no /metrics serves the calls it makes; set PROMETHEUS_MULTIPROC_DIR "
        "and serve /metrics once (docs/exporters.md, Multiprocess mode)",
        os.getpid(),
    )


# each label's reserved values and what they stand for: a lens, model or service tier named as one
# shares their series (kept rather than escaped: dashboards already query lens="none"), and is told once
_RESERVED: Final = {
    "lens": {NO_LENS: "the calls outside any lens", OTHER: "the lenses past the cap"},
    "model": {UNKNOWN_MODEL: "the calls that name no model", OTHER: "the models past the cap"},
    "service_tier": {NO_TIER: "the answers that name no service tier", OTHER: "the tiers past the cap"},
}


def _say_reserved(kind: str, value: str) -> None:
    """Once per value kept: a label value named as a reserved one shares that value's series."""
    fix = "; give the lens another key to tell them apart" if kind == "lens" else ""
    _internal_log.warning(
        "llm-ledger: PrometheusSink: the %s %r is a reserved value of the %s label, so its series also "
        "count %s (docs/exporters.md, Cardinality)%s; the JSONL file and the OpenTelemetry spans keep "
        "them apart",
        "lens key" if kind == "lens" else kind.replace("_", " "), value, kind, _RESERVED[kind][value], fix,
    )  # fmt: skip


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            "the Prometheus exporter needs prometheus-client: pip install 'llm-ledger[prometheus]'"
        ) from exc
    return prometheus_client


def _buckets(buckets: Sequence[float] | None) -> tuple[float, ...]:
    if buckets is None:
        return DURATION_BUCKETS
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise ConfigError(f"buckets must be a sequence of numbers (seconds), got {buckets!r}") from None
    if (
        not values
        or any(not math.isfinite(v) or v <= 0 for v in values)
        or any(a >= b for a, b in itertools.pairwise(values))
    ):
        raise ConfigError(f"buckets must be positive, finite and increasing (seconds), got {buckets!r}")
    return values


def _cap(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


class PrometheusSink:
    """A sink (``monitor.add_sink(PrometheusSink())``) that keeps Prometheus metrics of the records.

    ``registry`` defaults to prometheus-client's global ``REGISTRY`` (one sink per registry);
    ``buckets`` (seconds) are the duration histograms'; past ``max_lenses`` / ``max_models`` distinct
    values (``MAX_TIERS`` service tiers), later ones are counted under ``"other"``. A call's sums
    reach the metrics when the registry is collected, at ``flush()``, or every ``PENDING_CALLS`` calls
    (at once with ``PROMETHEUS_MULTIPROC_DIR``). Every metric, label, bucket and alert, and the
    multiprocess mode: docs/exporters.md. Raises ``ConfigError`` without prometheus-client, for bad
    arguments, or when the registry already holds these metrics.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        buckets: Sequence[float] | None = None,
        max_lenses: int = MAX_LENSES,
        max_models: int = MAX_MODELS,
    ) -> None:
        pc = _client()
        self.registry: CollectorRegistry = pc.REGISTRY if registry is None else registry
        self.buckets: tuple[float, ...] = _buckets(buckets)
        self.max_lenses: int = _cap("max_lenses", max_lenses)
        self.max_models: int = _cap("max_models", max_models)
        self._lock = threading.Lock()
        # label -> (the values kept by name, how many may be)
        self._caps: dict[str, tuple[set[str], int]] = {
            "lens": (set(), self.max_lenses),
            "model": (set(), self.max_models),
            "service_tier": (set(), MAX_TIERS),
        }
        # a pending key (_KEY_LABELS) -> its metric children (_new_children)
        self._children: dict[tuple[Any, ...], Any] = {}
        # a pending key -> its sums (_call, _add), whose first item is a list of one value per record
        self._pending: dict[tuple[Any, ...], list[Any]] = {}
        self._pending_calls = 0
        directory = _multiprocess_dir(check=True)
        if directory and not _writes_files():
            raise ConfigError(
                f"PROMETHEUS_MULTIPROC_DIR={directory} was set after prometheus_client was imported, so "
                "it keeps this process's metrics in memory, where no /metrics of that directory sees "
                "them: set it in the environment the process starts with, before anything imports "
                "prometheus_client (with gunicorn's raw_env: import it in gunicorn.conf.py only inside "
                "a hook; docs/exporters.md, Multiprocess mode)"
            )
        self._pending_limit = 1 if directory else PENDING_CALLS
        # multiprocess mode: the values each cap keeps, in a file every worker's sink shares (not *.db,
        # which the collector reads), so that the caps hold across processes and worker restarts
        self._shared: dict[str, str] = {}
        if directory:
            self._shared = {kind: os.path.join(directory, f"llm_ledger_{kind}.labels") for kind in self._caps}
        self._full: set[str] = set()  # the labels whose shared file holds its cap of values
        self._pending_lock = threading.Lock()
        self._errors_logged: set[tuple[str, str]] = set()
        self._watched: set[tuple[str, str]] = set()  # (lens, metric) anomaly series made (see _lens)
        _sinks.add(self)
        made: list[Any] = [_Moving(self._flush)]
        self.registry.register(made[0])  # first: a collection moves the pending sums, then reads

        def metric(kind: Any, name: str, doc: str, labels: tuple[str, ...], **buckets: Any) -> Any:
            try:
                made.append(kind(name, doc, labels, registry=self.registry, **buckets))
            except ValueError as exc:  # a name already registered: leave the registry as it was
                for done in made:
                    self.registry.unregister(done)
                raise ConfigError(
                    f"this registry already has llm-ledger's metrics ({exc}); use one PrometheusSink "
                    "per registry (configure(exporters=['prometheus']) makes the one of the global REGISTRY)"
                ) from None
            return made[-1]

        counter, histogram = functools.partial(metric, pc.Counter), functools.partial(metric, pc.Histogram)
        spend = ("lens", "model", "provider", "service_tier")
        self.calls: Counter = counter("llm_ledger_calls", "LLM API calls", _CALL_LABELS)
        self.tokens: Counter = counter(
            "llm_ledger_tokens", "Tokens by type (cached, cache_write, input_audio within input; reasoning, "
            "output_audio within output)",
            ("lens", "model", "provider", "operation", "service_tier", "token_type"),
        )  # fmt: skip
        self.cost: Counter = counter("llm_ledger_cost_usd", "Cost of calls, USD", spend)
        # status as on the calls: a fast failure kept apart from the latency of successful calls (the
        # conventions' error.type on gen_ai.client.operation.duration, as a fixed vocabulary of three)
        self.duration: Histogram = histogram(
            "llm_ledger_call_duration_seconds", "Call duration, seconds",
            ("lens", "model", "operation", "status"), buckets=self.buckets,
        )  # fmt: skip
        self.ttft: Histogram = histogram(
            "llm_ledger_time_to_first_token_seconds", "Time to a stream's first chunk, seconds",
            ("lens", "model", "operation"), buckets=self.buckets,
        )  # fmt: skip
        self.lens_runs: Counter = counter("llm_ledger_lens_runs", "Lens runs", ("lens", "status"))
        self.lens_cost: Histogram = histogram(
            "llm_ledger_lens_cost_usd", "Cost of one lens run, USD", ("lens",), buckets=LENS_COST_BUCKETS
        )
        # the cost counter's labels: which lens's, model's, provider's and tier's spend is short
        self.unpriced: Counter = counter(
            "llm_ledger_unpriced_calls", "Calls billed at an unknown cost (not in cost_usd)", spend
        )
        self.anomalies: Counter = counter(
            "llm_ledger_lens_anomalies", "Lens runs above their baseline", ("lens", "metric")
        )
        self.budget_exceeded: Counter = counter(
            "llm_ledger_budget_exceeded",
            "Limits lens runs went over (one per run and limit)",
            ("lens", "limit"),
        )
        self.dropped: Counter = counter(
            "llm_ledger_dropped_records",
            "Records whose values could not reach the metrics (see the llm_ledger.internal log)", ("event",),
        )  # fmt: skip
        for event in (CALL_EVENT, LENS_EVENT, ANOMALY_EVENT, BUDGET_EVENT):  # 0 from the start: increase()
            self.dropped.labels(event)

    def __repr__(self) -> str:
        lenses, models = (f"{len(kept)}/{cap}" for kept, cap in (self._caps["lens"], self._caps["model"]))
        return f"<PrometheusSink lenses={lenses} models={models}>"

    def __call__(self, record: Mapping[str, Any]) -> None:
        if _unserved:
            _warn_unserved()
        event = record["event"]
        if event == CALL_EVENT:
            self._call(record)
        elif event == LENS_EVENT:
            self._lens(record)
        elif event == ANOMALY_EVENT:  # metric: one of three summary keys, a bounded label
            self._add((ANOMALY_EVENT, record["context"].get("lens_key"), record["anomaly"]["metric"]))
        elif event == BUDGET_EVENT:  # limit: one of the five budget limits
            self._add((BUDGET_EVENT, record["context"].get("lens_key"), record["budget"]["limit"]))

    def flush(self) -> None:
        """Move the pending sums into the metrics (a collection of the registry does it first)."""
        self._flush(collecting=False)

    def _flush(self, *, collecting: bool, overflow: bool = False) -> None:
        # A series Prometheus first scrapes already at its value has no rise, so rate() and increase()
        # would miss its first calls (a lens run once a day: $0). A collection therefore shows a new
        # series at 0 and keeps its sums for the next one. PENDING_CALLS reached between two scrapes
        # (``overflow``: a busy process) keeps a new series' sums too, made into no metric yet, unless
        # they pile up (nobody collects this registry; with PROMETHEUS_MULTIPROC_DIR, the process that
        # reads the files shows new series at 0 itself, and nothing here is held)
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            self._pending_calls = 0
        held: dict[Any, list[Any]] = {}
        if overflow and self._pending_limit > 1:
            new = {key: sums for key, sums in pending.items() if key not in self._children}
            if sum(len(sums[0]) for sums in new.values()) <= PENDING_CALLS:
                held = new
        for key, sums in pending.items():
            if key in held:
                continue
            event = key[0]
            try:
                children = self._children.get(key)
                if children is None:
                    children = self._new_children(key)
                    if len(self._children) >= _CACHE_LIMIT:
                        self._children.clear()  # only a cache: the metrics keep every series
                    self._children[key] = children
                    if collecting:
                        held[key] = sums
                        continue
                self._move(event, children, sums)
            except Exception as exc:  # one series must not cost the others, nor a scrape
                self._dropped(event, len(sums[0]), dict(zip(_KEY_LABELS[event], key[1:], strict=False)), exc)
        if held:
            with self._pending_lock:
                for key, sums in held.items():
                    newer = self._pending.setdefault(key, sums)
                    if newer is not sums:
                        for i, value in enumerate(sums):
                            newer[i] += value  # numbers add, lists of durations extend

    def _dropped(self, event: str, count: int, series: Mapping[str, Any], exc: Exception) -> None:
        """Count ``count`` records of ``event`` as lost; log the first of each distinct error (a
        failure repeats at every flush: a traceback each time would bury the log)."""
        error = (type(exc).__name__, str(exc))
        with self._lock:
            new = error not in self._errors_logged and len(self._errors_logged) < _ERRORS_LOGGED
            if new:
                self._errors_logged.add(error)
        if new:
            labels = ", ".join(f"{name}={value!r}" for name, value in series.items())
            _internal_log.error(
                "llm-ledger: PrometheusSink could not update the series {%s}, so %d %s record(s) are "
                "missing from its metrics: %s: %s. Every record lost this way is counted in "
                "llm_ledger_dropped_records_total{event=...}; this error is not logged again",
                labels, count, event, *error, exc_info=unchained(exc),
            )  # fmt: skip
        try:
            self.dropped.labels(event).inc(count)
        except Exception:  # the metrics themselves failing (a multiprocess directory gone): logged above
            pass

    # -- labels ------------------------------------------------------------------------------------

    def _label(self, kind: str, raw: Any) -> str:
        """``raw`` as the ``lens``, ``model`` or ``service_tier`` label: itself, or ``OTHER`` once its
        cap is full."""
        if raw is None:
            return _NONE_LABELS[kind]
        value = str(raw)
        seen, cap = self._caps[kind]
        if value in seen:
            return value
        with self._lock:
            kept = len(seen) < cap and self._admit(kind, value, cap)
            if kept:
                seen.add(value)
        if not kept:
            return OTHER
        if value in _RESERVED[kind]:
            _say_reserved(kind, value)
        return value

    def _admit(self, kind: str, value: str, cap: int) -> bool:
        """Whether ``value`` is among the first ``cap`` values of ``kind`` over every process writing
        to the multiprocess directory (outside multiprocess mode: this process's count decides)."""
        path = self._shared.get(kind)
        if path is None:
            return True
        if kind in self._full:
            return False
        try:
            with _shared_lines(path) as (lines, file):
                kept = {json.loads(line) for line in lines}
                if value in kept:
                    return True
                if len(kept) >= cap:
                    self._full.add(kind)
                    return False
                file.write(json.dumps(value) + "\n")
                return True
        except (OSError, ValueError) as exc:
            del self._shared[kind]
            _internal_log.warning(
                "llm-ledger: PrometheusSink could not share the %s label's cap with the other processes "
                "through %s (%s); this process now caps its own %s values, so the total may exceed %d",
                kind, path, exc, kind, cap,
            )  # fmt: skip
            return True

    def _new_children(self, key: tuple[Any, ...]) -> Any:
        """The metric children a pending key's sums move into (``_move``): its series are made here."""
        event = key[0]
        if event != CALL_EVENT:
            lens = self._label("lens", key[1])
            if event == LENS_EVENT:
                return (
                    self.lens_runs.labels(lens, "ok"),
                    self.lens_runs.labels(lens, "error"),
                    self.lens_cost.labels(lens),
                )
            return (self.anomalies if event == ANOMALY_EVENT else self.budget_exceeded).labels(lens, key[2])
        _, raw_lens, raw_model, provider, operation, status, raw_tier, streamed, counted = key
        lens = self._label("lens", raw_lens)
        model = self._label("model", raw_model)
        tier = self._label("service_tier", raw_tier)
        spend = (lens, model, provider, tier)
        return (
            self.calls.labels(lens, model, provider, operation, status, tier),
            self.cost.labels(*spend),
            self.duration.labels(lens, model, operation, status),
            # only where a first chunk came: a series of empty buckets for every other call costs
            # as much as the duration histogram
            self.ttft.labels(lens, model, operation) if streamed else None,
            # only the counts this key's calls have: a token type or unpriced series is made (and so
            # scraped at 0 before its value, as this key is new) once a call counts some
            [
                (i, self.tokens.labels(lens, model, provider, operation, tier, _TOKENS[i]))
                if i < len(_TOKENS)
                else (i, self.unpriced.labels(*spend))
                for i in _COUNT_INDEXES
                if counted >> i & 1
            ],
        )

    def _move(self, event: str, children: Any, sums: list[Any]) -> None:
        if event == CALL_EVENT:
            calls, cost, duration, ttft, counts = children
            durations, firsts, usd = sums[:3]
            calls.inc(len(durations))
            cost.inc(usd)
            for seconds in durations:
                duration.observe(seconds)
            for seconds in firsts:
                ttft.observe(seconds)
            for i, child in counts:
                child.inc(sums[3 + i])
        elif event == LENS_EVENT:
            ok, failed, cost = children
            costs, errors = sums
            ok.inc(len(costs) - errors)
            failed.inc(errors)
            for usd in costs:
                cost.observe(usd)
        else:
            children.inc(len(sums[0]))

    # -- records -----------------------------------------------------------------------------------

    def _call(self, record: Mapping[str, Any]) -> None:
        server = record.get("server")
        response = record["response"]
        timing = record["timing"]
        first = timing["time_to_first_token_ms"]
        usd = record["cost"]["total_cost_usd"]
        usage = record["usage"]
        # in _TOKENS' order, written out: a loop over them, with the lists it made, about doubled what the
        # sink adds to a call; .get: a record of an older version lacks the newer usage fields
        t_in = usage["prompt_tokens"] or 0
        t_out = usage["completion_tokens"] or 0
        cached = usage["cached_tokens"] or 0
        reasoning = usage["reasoning_tokens"] or 0
        written = usage.get("cache_write_tokens") or 0
        # all the audio in: a Realtime response's cached audio is apart from its prompt_audio_tokens
        heard = (usage.get("prompt_audio_tokens") or 0) + (usage.get("cached_audio_tokens") or 0)
        spoken = usage.get("completion_audio_tokens") or 0
        unpriced = 1 if cost_left_out(record) else 0
        counted = (  # a bit for each count that is not 0: (n and b) is 0 or b
            (t_in and 1) | (t_out and 2) | (cached and 4) | (reasoning and 8) | (written and 16)
            | (heard and 32) | (spoken and 64) | (unpriced and 128)
        )  # fmt: skip
        key = (
            CALL_EVENT,
            record["context"].get("lens_key"),
            record["request"]["model"] or response["model"],
            server["provider"] if server else "openai",
            record["operation"],
            record["status"],
            response.get("service_tier"),
            first is not None,  # not a label: whether the call has a time to first token
            counted,  # nor this: which counts it has, a bit each (their series exist only then)
        )
        with self._pending_lock:
            # durations, times to first token, cost, then each count (those of ``counted`` added)
            sums = self._pending.get(key) or self._pending.setdefault(key, [[], [], 0.0, *_NO_COUNTS])
            sums[0].append(timing["duration_ms"] / 1000)
            if first is not None:
                sums[1].append(first / 1000)
            if usd is not None:
                sums[2] += usd
            sums[3] += t_in
            sums[4] += t_out
            sums[5] += cached
            sums[6] += reasoning
            sums[7] += written
            sums[8] += heard
            sums[9] += spoken
            sums[10] += unpriced
            self._pending_calls += 1
            full = self._pending_calls >= self._pending_limit
        if full:
            self._flush(collecting=False, overflow=True)

    def _lens(self, record: Mapping[str, Any]) -> None:
        lens_key = record["context"].get("lens_key")
        summary = record["summary"]
        self._add((LENS_EVENT, lens_key), summary["total_cost_usd"], 1 if summary["errors"] else 0)
        # a series at 0 for each metric the run was judged on, long before a first anomaly (which needs
        # runs before it), so that increase() counts it; none for a lens nobody judges
        judged = record.get("anomaly_metrics")
        if judged:
            lens = self._label("lens", lens_key)
            for metric in judged:
                if (lens, metric) not in self._watched:
                    self.anomalies.labels(lens, metric)
                    self._watched.add((lens, metric))

    def _add(self, key: tuple[Any, ...], value: Any = None, errors: int = 0) -> None:
        """A lens run (its cost, whether it failed) or an anomaly or budget breach into the pending sums,
        as a call: a series new to a scrape (a lens judged first in this process, found anomalous at
        once) shows 0 first."""
        with self._pending_lock:
            # one value a record (a run's cost; None for an alert), and the failed runs
            sums = self._pending.get(key) or self._pending.setdefault(key, [[], 0])
            sums[0].append(value)
            sums[1] += errors
            self._pending_calls += 1
            full = self._pending_calls >= self._pending_limit
        if full:
            self._flush(collecting=False, overflow=True)


def flush_metrics() -> None:
    """Move the pending sums of every ``PrometheusSink`` of this process (``configure()``'s included)
    into its metrics, new series at their values: before a batch job's last collection
    (``push_to_gateway``, ``write_to_textfile``), which would show each new series at 0
    (docs/exporters.md, Batch jobs)."""
    for sink in list(_sinks):
        sink.flush()


class _Moving:
    """Registered before the sink's metrics: collecting the registry moves the pending sums first."""

    def __init__(self, flush: Callable[..., None]) -> None:
        self._flush = flush

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        _serves_here()
        self._flush(collecting=True)
        return []


@contextlib.contextmanager
def _shared_lines(path: str) -> Iterator[tuple[list[str], TextIO]]:
    """A file the processes of a multiprocess directory share, locked for the block: its lines, and the
    file to append lines to (a line cut short by a writer killed mid-write is dropped first)."""
    with open(path, "a+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released when the file is closed
        file.seek(0)
        text = file.read()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            file.truncate(len(text.encode()))
        yield text.split("\n")[:-1], file


class _NewSeriesAtZero:
    """The multiprocess files' metrics, where an llm-ledger series no scrape of the directory has shown
    yet shows 0, as ``_flush`` does in one process (why: there). The series shown are kept in a file
    there (one JSON key a line, appended under a file lock), so that each shows 0 once whichever process
    serves it (every web worker, a registry made per request, a restarted server: a second 0 would read
    to Prometheus as a counter reset). Should that file be unusable, the metrics are shown as they are."""

    def __init__(self, inner: Any, path: str) -> None:
        self._inner = inner
        self._path = path

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        families = list(self._inner.collect())
        try:
            with _shared_lines(self._path) as (lines, file):
                shown = set(lines)
                new: dict[str, None] = {}  # in the order met
                for family in families:
                    if not family.name.startswith("llm_ledger_"):  # the application's own: as they are
                        continue
                    for index, sample in enumerate(family.samples):
                        # a histogram's buckets, sum and count: one series, one key
                        labels = sorted((k, v) for k, v in sample.labels.items() if k != "le")
                        key = json.dumps([family.name, labels], separators=(",", ":"))
                        if key not in shown:
                            new[key] = None
                            family.samples[index] = sample._replace(value=0.0)
                file.write("".join(key + "\n" for key in new))
        except OSError as exc:
            if self._path not in _unusable:
                _unusable.add(self._path)
                _internal_log.warning(
                    "llm-ledger: cannot keep the series scraped from the multiprocess directory in %s "
                    "(%s), so new series are scraped at their values and rate() can miss their first calls",
                    self._path, exc,
                )  # fmt: skip
            return list(self._inner.collect())
        return families


def _writes_files() -> bool:
    """Whether prometheus-client writes its values to the multiprocess files (it decides at its import)."""
    from prometheus_client import values

    in_memory = getattr(values, "MutexValue", None)
    return in_memory is None or getattr(values, "ValueClass", None) is not in_memory


def _multiprocess_dir(*, check: bool = False) -> str | None:
    # prometheus-client also reads the older lower-case name
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    if check and path and not os.path.isdir(path):  # else: a traceback at every call, metrics lost
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR={path}: no such directory; create it (empty) before the "
            "application starts, and empty it at each deploy (docs/exporters.md, Multiprocess mode)"
        )
    return path


def metrics_registry() -> CollectorRegistry:
    """The registry to serve on ``/metrics`` (what ``start_metrics_server`` serves by default):
    prometheus-client's global ``REGISTRY``; with ``PROMETHEUS_MULTIPROC_DIR``, a new registry that sums
    every process's files and shows each new llm-ledger series at 0 in its first scrape, from whichever
    process serves it (docs/exporters.md, Multiprocess mode)."""
    pc = _client()
    directory = _multiprocess_dir(check=True)
    if not directory:
        return pc.REGISTRY  # type: ignore[no-any-return]
    from prometheus_client import multiprocess

    registry = pc.CollectorRegistry()
    collector = multiprocess.MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
    registry.register(_NewSeriesAtZero(collector, os.path.join(directory, _SCRAPED_FILE)))
    return registry  # type: ignore[no-any-return]


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", *, registry: CollectorRegistry | None = None
) -> WSGIServer:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread and return the server (docs/exporters.md);
    ``port=0`` binds a free port: ``server.server_port`` says which, as does the INFO line logged on
    ``llm_ledger.internal``. With ``PROMETHEUS_MULTIPROC_DIR`` and no ``registry``, the sum over every
    process's files. A port in use, or an address that cannot be bound, is a ``ConfigError``."""
    pc = _client()
    if type(port) is not int or not 0 <= port <= 65535:
        raise ConfigError(f"port must be a whole number from 0 to 65535, got {port!r}")
    if registry is None:
        registry = metrics_registry()
    try:
        server, _thread = pc.start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot serve metrics on {addr}:{port}: the port is already in use; choose another "
                "port (e.g. LLM_LEDGER_EXPORTERS=prometheus:9465) or stop what listens there. The "
                "worker processes of one server (gunicorn, uWSGI) cannot each serve it: give them "
                "LLM_LEDGER_EXPORTERS=prometheus, without a port, and serve /metrics once "
                "(docs/exporters.md, Multiprocess mode)"
            ) from None
        fix = ""
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # not this machine's
            fix = (
                "; give an address of this machine: 0.0.0.0 for all its interfaces, 127.0.0.1 for "
                f"itself only (LLM_LEDGER_EXPORTERS=prometheus:{port} or prometheus:127.0.0.1:{port})"
            )
        where = as_typed(addr)  # a key given as the host is not printed
        raise ConfigError(f"cannot serve metrics on {where}:{port}: {exc.strerror or exc}{fix}") from None
    # shutdown() alone returns when the serving loop next looks for it, up to half a second later
    server.shutdown = functools.partial(shutdown_now, server)
    _serves_here()
    host = f"[{addr}]" if ":" in addr else addr
    _internal_log.info("llm-ledger: serving /metrics on http://%s:%d/metrics", host, server.server_port)
    return server  # type: ignore[no-any-return]


def shutdown_now(server: socketserver.TCPServer) -> None:
    """``server.shutdown()`` returning at once, not when its ``serve_forever()`` loop next looks (up to
    its poll interval later): closing the listening socket's reading side wakes the loop (its accept
    fails, then it sees the request). The /metrics server's, and the fake OpenAI server's."""
    with contextlib.suppress(OSError):
        server.socket.shutdown(socket.SHUT_RD)
    socketserver.TCPServer.shutdown(server)
