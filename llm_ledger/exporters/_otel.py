"""``OTelSink``: the call and lens records as OpenTelemetry GenAI spans and metrics (semantic conventions
v1.41.1, or the newest experimental names). Every span is made after the fact, from its record; the spans
of a lens's calls wait for the lens's record, which comes last, so that it can be their parent
(docs/exporters.md).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from .. import _jsonl
from .._errors import ConfigError
from .._errors import internal_log as _internal_log
from .._jsonl import json_text
from .._records import ANOMALY_EVENT, BUDGET_EVENT, CALL_EVENT, LENS_EVENT, cost_left_out, made_here
from .._servers import otel_provider_name
from ._prometheus import DURATION_BUCKETS, MAX_LENSES, MAX_TIERS, OTHER, _cap

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["MAX_COUNTER_SETS", "MAX_PENDING_CALLS", "TOKEN_BUCKETS", "OTelSink"]

SCOPE: Final = "llm_ledger"
# the GenAI conventions' advice for gen_ai.client.token.usage: 1, 4, 16 ... 67108864 (x4 steps)
TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))
# spans of calls waiting for their lens's record; past this, calls are emitted at once (no lens parent)
MAX_PENDING_CALLS: Final = 10_000
_EXPORTED_RUNS: Final = 1_000  # lens spans kept as parents for nested runs that end after them
_OPERATIONS: Final = {"chat": "chat", "responses": "chat", "embeddings": "embeddings"}
_API_TYPES: Final = {"chat": "chat_completions", "responses": "responses"}
_JSON_OUTPUTS: Final = frozenset({"json_object", "json_schema"})
_LATEST_USAGE: Final = (
    "input_tokens", "output_tokens", "cache_read.input_tokens", "cache_write.input_tokens",
    "reasoning.output_tokens",
)  # fmt: skip
_ATTRIBUTE_SETS: Final = 10_000  # metric attribute sets kept at hand
# attribute sets a counter kept here reports; later ones are summed under the SDK's overflow set
MAX_COUNTER_SETS: Final = 2_000
_OVERFLOW: Final = {"otel.metric.overflow": True}
# opentelemetry-instrumentation-openai-v2: its scope (a module name) and the record operations it
# makes spans for (it wraps chat.completions.create and embeddings.create, not responses.create)
_OPENAI_V2: Final = "opentelemetry.instrumentation.openai_v2"
_GENAI_HANDLER: Final = "opentelemetry.util.genai.handler"  # openai-v2's spans under latest_experimental
_OPENAI_V2_OPERATIONS: Final = frozenset({"chat", "embeddings"})
# the attributes a call's span and its metrics share (the values: _identity); metrics add the lens key
# and the served tier, each capped
_IDENTITY: Final = (
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "server.address", "server.port",
)  # fmt: skip
_METRIC_ATTRIBUTES: Final = (*_IDENTITY, "llm_ledger.lens", "openai.response.service_tier")


def _ns(iso: str) -> int:
    """Epoch nanoseconds of a record's ``...Z`` timestamp (millisecond precision)."""
    return int(datetime.fromisoformat(iso).timestamp() * 1000) * 1_000_000


class _Totals:
    """An observable counter whose sums are kept here: a call adds to a dict, where ``Counter.add``
    sends each measurement through the SDK's whole path. ``zero_first``: a new attribute set is
    reported at 0 by the first collection that sees it, then at its total, so that ``increase()``
    counts its first rise (docs/exporters.md); the process's last collection, and the one a meter
    provider makes as it shuts down, report every total."""

    def __init__(
        self,
        meter: Any,
        name: str,
        unit: str,
        description: str,
        *,
        zero_first: bool = False,
        provider: Any = None,
    ) -> None:
        self._sums: dict[Any, list[Any]] = {}  # key -> [attributes, total]
        self._new: set[Any] | None = set() if zero_first else None  # keys no collection reported yet
        self._provider = provider  # the meter provider given to the sink (None: the global one)
        self._lock = threading.Lock()
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: float, key: Any, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            found = self._sums.get(key)
            if found is None:
                if len(self._sums) >= MAX_COUNTER_SETS:
                    key, attributes = None, _OVERFLOW
                    found = self._sums.get(key)
                if found is None:
                    found = self._sums[key] = [attributes, 0]
                    if self._new is not None:
                        self._new.add(key)
                        _release_at_exit()
            found[1] += amount

    def _observe(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            new = self._new
            if new:
                self._new = set()
                if _shut_down(self._provider):  # its last collection: a 0 now would be its last word
                    new = None
            return [
                Observation(0 if new and key in new else total, attributes)
                for key, (attributes, total) in self._sums.items()
            ]

    def release(self) -> None:
        """The next collection reports every total, new attribute sets' too: the process's last."""
        with self._lock:
            if self._new:
                self._new.clear()


_hooked_for: list[Any] | None = None  # the meter providers when _release was last registered


def _release_at_exit() -> None:
    """At a new attribute set held at 0 (``_Totals``'s ``zero_first``): release them all before the
    SDK's own exit hook makes the last collection. ``atexit`` runs the hooks registered last first, and
    a meter provider registers its own when made: registered again when the sinks' providers changed
    (the application set its global one up), this one runs before theirs. A provider made after the
    last new set shuts down first, and its last collection reports the totals itself, without the 0
    before (``_Totals._observe``). (Not registered again otherwise: a hook registered while the exit
    hooks run never runs.)"""
    global _hooked_for
    providers = _providers(meters=True)
    if providers != _hooked_for:
        _hooked_for = providers
        atexit.unregister(_release)
        atexit.register(_release)


def _release() -> None:
    totals = [totals for sink in list(_sinks) for totals in sink._totals]
    if any(t._new for t in totals):
        # an attribute set no export carried yet (a batch job's breach in its last minute, or in a job
        # shorter than the export interval): one export more, which carries it at 0, so that the rise
        # to its count in the last one is one a rule on increase() counts, not a lone first point
        for provider in _providers(meters=True):
            _flush(provider)  # unless shut down: its own shutdown exported them, at their counts
    for t in totals:
        t.release()


def _shut_down(provider: Any) -> bool:
    """Whether the SDK meter ``provider`` (None: the global one) is shut down, or shutting down: a
    collection now is its last (the flag is set before its readers collect a last time). A tracer
    provider has no flag: one whose batch span processor is ``done`` (an older SDK's, 1.32's, whose
    ``force_flush`` then warns "Already shutdown"; a newer one's returns without a word)."""
    if provider is None:
        from opentelemetry import metrics

        provider = metrics.get_meter_provider()
    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    return bool(getattr(provider, "_shutdown", False)) or any(
        getattr(p, "done", False) is True for p in processors
    )


def _providers(*, meters: bool) -> list[Any]:
    """The distinct meter (else tracer) providers of every sink, the global one for a sink given none."""
    from opentelemetry import metrics, trace

    found: list[Any] = []
    for sink in list(_sinks):
        given = sink._providers[1 if meters else 0]
        provider = given or (metrics.get_meter_provider() if meters else trace.get_tracer_provider())
        if provider not in found:
            found.append(provider)
    return found


def _flush(provider: Any) -> None:
    flush = getattr(provider, "force_flush", None)  # the SDK's; the API's no-op providers have none
    # not one the application shut down (plain uvicorn runs our handler after its lifespan's shutdown):
    # the SDK's MeterProvider would export into its shut-down exporter, which warns
    if callable(flush) and not _shut_down(provider):
        try:
            flush()
        except Exception as exc:  # never in the way of the process's end
            _internal_log.warning("llm-ledger: exporting %r at the process's end failed: %s", provider, exc)


def _say_reserved(attribute: str) -> None:
    """Once per sink and attribute: a lens key or service tier named ``other`` shares the metrics of
    those past the cap (as ``PrometheusSink`` says of its reserved label values)."""
    lens = attribute == "llm_ledger.lens"
    _internal_log.warning(
        "llm-ledger: OTelSink: the %s 'other' is a reserved value of the %s attribute, so its metrics also "
        "count the %s past the cap (docs/exporters.md, OpenTelemetry)%s; the JSONL file and the spans keep "
        "them apart",
        "lens key" if lens else "service tier", attribute, "lenses" if lens else "tiers",
        "; give the lens another key to tell them apart" if lens else "",
    )  # fmt: skip


def _openai_v2_instrumented() -> bool:
    """Whether ``OpenAIInstrumentor().instrument()`` is in force (its class keeps the one instance)."""
    cls = getattr(sys.modules.get(_OPENAI_V2), "OpenAIInstrumentor", None)
    instrumentor = getattr(cls, "_instance", None)
    return bool(getattr(instrumentor, "is_instrumented_by_opentelemetry", False))


def _waited_for(record: Mapping[str, Any]) -> Any:
    """The lens run a call's or a nested lens run's span waits for, to be its parent."""
    return record["context"].get("parent_lens_run_id" if record["event"] == LENS_EVENT else "lens_run_id")


def _identity(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A call's values of the ``_IDENTITY`` attributes."""
    server = record.get("server") or {}
    return (
        _OPERATIONS.get(record["operation"], record["operation"]),
        otel_provider_name(server.get("provider") or "openai"),
        record["request"]["model"],
        record["response"]["model"],
        server.get("address"),
        server.get("port"),
    )


def _parameters(request: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The span attributes of a request's other parameters (.get: records of older versions lack
    them). The reasoning effort has no name in v1.41.1: the newest conventions' is used in both modes."""
    n, output, encoding = request.get("n"), request.get("output_type"), request.get("encoding_format")
    return (
        ("gen_ai.request.top_p", request.get("top_p")),
        ("gen_ai.request.frequency_penalty", request.get("frequency_penalty")),
        ("gen_ai.request.presence_penalty", request.get("presence_penalty")),
        ("gen_ai.request.seed", request.get("seed")),
        ("gen_ai.request.choice.count", n if n != 1 else None),  # the conventions: only when not 1
        ("gen_ai.request.reasoning.level", request.get("reasoning_effort")),
        # the conventions' values are text, json, image and speech: json_object and json_schema are json
        ("gen_ai.output.type", "json" if output in _JSON_OUTPUTS else output),
        ("gen_ai.request.encoding_formats", [encoding] if encoding is not None else None),
        ("gen_ai.embeddings.dimension.count", request.get("dimensions")),
        ("gen_ai.request.stop_sequences", request.get("stop_sequences")),
    )


def _error_type(record: Mapping[str, Any]) -> str | None:
    """The conventions' ``error.type``: the error's class, or ``interrupted`` for a call the caller
    stopped without one (a stream closed before its end: it did not complete); None for a call that did."""
    error = record["error"]
    if error:
        return error["type"]  # type: ignore[no-any-return]
    return "interrupted" if record["status"] == "interrupted" else None


def _modalities(record: Mapping[str, Any]) -> tuple[tuple[str, str, str, int], ...]:
    """(usage kind, usage field, ``gen_ai.token.modality`` of the tokens beside the audio ones, audio
    tokens counted apart) of a call's input, output, cache read, cache write and reasoning tokens.
    OpenAI's usage splits off audio only: the rest is text, unless the request holds an image (its
    tokens are inside the input count, inseparable) or the model is an audio model whose usage counts
    no audio apart (unknown). Which part of the cached tokens was audio only a Realtime response says
    (``cached_audio_tokens``, its ``prompt_audio_tokens`` being the audio the cache did not serve); its
    usage splits audio off even when there is none, and its image tokens, counted apart, make the rest
    unknown too."""
    usage = record["usage"]
    cached_heard = usage.get("cached_audio_tokens") or 0  # .get: records of older versions
    heard = (usage.get("prompt_audio_tokens") or 0) + cached_heard
    spoken = usage.get("completion_audio_tokens") or 0
    model = record["request"]["model"] or ""
    realtime = record["operation"] == "realtime"
    unsplit = not (heard or spoken or realtime) and ("audio" in model or "realtime" in model)
    images = (
        record["request"]["has_images"]
        or usage.get("prompt_image_tokens")
        or usage.get("cached_image_tokens")
    )
    inputs = "unknown" if unsplit or images else "text"
    outputs = "unknown" if unsplit else "text"
    cached = inputs if not heard or realtime else "unknown"
    return (
        ("input_tokens", "prompt_tokens", inputs, heard),
        ("output_tokens", "completion_tokens", outputs, spoken),
        ("cache_read.input_tokens", "cached_tokens", cached, cached_heard),
        ("cache_write.input_tokens", "cache_write_tokens", cached, 0),
        ("reasoning.output_tokens", "reasoning_tokens", outputs, 0),
    )


def _parts(content: Any) -> list[dict[str, Any]]:
    """Chat / Responses message content as the conventions' message parts (an image only as a part: the
    image itself is never exported)."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text"):
            parts.append({"type": "text", "content": part.get("text")})
        elif kind in ("image_url", "input_image"):
            parts.append({"type": "uri", "modality": "image"})
    return parts


def _content_attributes(record: Mapping[str, Any]) -> dict[str, str]:
    """The opt-in content attributes (JSON strings), from a record made with content capture on."""
    content = record["content"]
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    instructions = content.get("instructions")
    system = [{"type": "text", "content": instructions}] if isinstance(instructions, str) else []
    messages = content.get("messages")
    if messages is None and "input" in content:
        raw = content["input"]
        messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        role = message.get("role") or "user"
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content")))
        else:
            inputs.append({"role": role, "parts": _parts(message.get("content"))})
    if content.get("output") is not None:
        outputs.append({"role": "assistant", "parts": [{"type": "text", "content": content["output"]}]})
        if record["response"]["finish_reason"]:
            outputs[0]["finish_reason"] = record["response"]["finish_reason"]
    found = (
        ("gen_ai.input.messages", inputs), ("gen_ai.system_instructions", system),
        ("gen_ai.tool.definitions", content.get("tools")), ("gen_ai.output.messages", outputs),
    )  # fmt: skip
    return {key: orjson.dumps(value).decode() for key, value in found if value}


def _context_attributes(context: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    """The record's context as ``llm_ledger.*`` attributes."""
    for key, value in context.items():
        if value is not None and not isinstance(value, (str, bool, int, float)):
            # as the file writes it (a UUID as text...), a mapping or list as JSON text: an attribute
            # holds no object (json, not orjson: a big integer, a lone surrogate the file escapes)
            value = json.loads(json_text({key: value}))[key]
            if isinstance(value, (dict, list)):
                value = json.dumps(value, separators=(",", ":"))
        if value is not None:
            attributes[f"llm_ledger.{key}"] = value


_sinks: weakref.WeakSet[OTelSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child keeps none of its parent's waiting spans and counter sums (the parent exports
    them: the child exporting them too would count them twice) nor its locks (another thread may
    have held one at the fork)."""
    for sink in list(_sinks):
        sink._lock = threading.Lock()
        for totals in sink._totals:
            totals._lock = threading.Lock()
            totals._sums.clear()
            if totals._new:
                totals._new.clear()
        sink._pending.clear()
        sink._pending_count = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_providers() -> None:
    """The spans and metrics every sink's providers hold, exported now: SIGTERM ends the process by
    the ledger's handler past the exit hooks, where the SDK's providers would export them (the last
    call and lens spans, and every metric since the last export, up to a minute of spend)."""
    _release()  # the last export: every breach at its count (a new one at 0 first)
    for provider in [*_providers(meters=False), *_providers(meters=True)]:
        _flush(provider)


_jsonl.after_sigterm_flush.append(_flush_providers)


class OTelSink:
    """A sink (``monitor.add_sink(OTelSink())``) that emits OpenTelemetry GenAI spans (one per call, one
    per lens run as their parent) and metrics (docs/exporters.md), through ``tracer_provider`` and
    ``meter_provider``, by default the global ones an application or ``opentelemetry-instrument`` set.
    Past ``max_lenses`` distinct lens keys, metrics carry later ones as ``"other"`` (spans keep them).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        max_lenses: int = MAX_LENSES,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:
            raise ConfigError(
                "the OpenTelemetry exporter needs opentelemetry-api: pip install 'llm-ledger[otel]'"
            ) from exc
        self.max_lenses: int = _cap("max_lenses", max_lenses)
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("llm-ledger")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            ours = ""  # get_meter's default; get_tracer takes None for it
        self._trace = trace
        self._client_kind = trace.SpanKind.CLIENT
        self._providers = (tracer_provider, meter_provider)  # None: the global one
        self.tracer: Tracer = trace.get_tracer(SCOPE, ours or None, tracer_provider)
        # the global providers are checked at the first record: applications often set up
        # OpenTelemetry after configure()
        self._check_provider = None in self._providers
        self._metrics_api = metrics
        meter = metrics.get_meter(SCOPE, ours, meter_provider)
        opt_in = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")  # the newest experimental names?
        self.latest: bool = "gen_ai_latest_experimental" in {value.strip() for value in opt_in.split(",")}
        # v1.41.1's name for the prompt tokens written to the cache; the newest conventions renamed it
        self._cache_write = "cache_write" if self.latest else "cache_creation"

        def histogram(name: str, unit: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(name, unit, doc, explicit_bucket_boundaries_advisory=buckets)

        self._totals: list[_Totals] = []  # the counters whose sums the sink keeps

        def counter(name: str, unit: str, doc: str, *, zero_first: bool = False) -> _Totals:
            self._totals.append(
                _Totals(meter, name, unit, doc, zero_first=zero_first, provider=meter_provider)
            )
            return self._totals[-1]

        if self.latest:
            # semantic-conventions-genai (unreleased): counters by modality for totals, histograms
            # per operation for percentiles, embeddings apart
            self._usage = {
                kind: counter(f"gen_ai.client.inference.usage.{kind}", "{token}", f"{kind} used")
                for kind in _LATEST_USAGE
            }
            self._operation_tokens = {
                kind: histogram(
                    f"gen_ai.client.inference.operation.{kind}", "{token}", f"{kind} per call", TOKEN_BUCKETS
                )
                for kind in ("input_tokens", "output_tokens")
            }
            self._embeddings_tokens = histogram(
                "gen_ai.client.embeddings.operation.input_tokens", "{token}", "Input tokens per call",
                TOKEN_BUCKETS,
            )  # fmt: skip
            self._embeddings_duration = histogram(
                "gen_ai.client.embeddings.duration", "s", "Embeddings call duration", DURATION_BUCKETS
            )
            duration = "gen_ai.client.inference.duration"
            first_chunk = "gen_ai.client.inference.time_to_first_chunk"
        else:
            self._token_usage = histogram(
                "gen_ai.client.token.usage", "{token}", "Input and output tokens used", TOKEN_BUCKETS
            )
            duration = "gen_ai.client.operation.duration"
            first_chunk = "gen_ai.client.operation.time_to_first_chunk"
        self._duration = histogram(duration, "s", "GenAI operation duration", DURATION_BUCKETS)
        self._first_chunk = histogram(first_chunk, "s", "Time to a stream's first chunk", DURATION_BUCKETS)
        self._cost = counter("llm_ledger.cost", "{USD}", "Cost of GenAI calls, USD (llm-ledger prices)")
        # what llm_ledger.cost leaves out, under the same attributes (as llm_ledger_unpriced_calls)
        self._unpriced = counter(
            "llm_ledger.unpriced_calls",
            "{call}",
            "Calls billed without a known cost (not in llm_ledger.cost)",
        )
        # the lens_anomaly and budget_exceeded records, as the Prometheus sink counts them, new
        # attribute sets at 0 first (an anomaly's from the lens's first judged run on: __call__)
        self._anomalies = counter(
            "llm_ledger.lens_anomalies", "{anomaly}", "Lens runs above their baseline", zero_first=True
        )
        self._breaches = counter(
            "llm_ledger.budget_exceeded", "{breach}", "Limits lens runs went over (one per run and limit)",
            zero_first=True,
        )  # fmt: skip
        self._attribute_sets: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._tiers: set[str] = set()  # service tiers kept by name in metric attributes
        self._lenses: set[str] = set()  # lens keys kept by name in metric attributes
        self._lock = threading.Lock()
        # lens_run_id -> (records whose span waits for the lens: its calls and nested lenses,
        # openai-v2's spans of its other calls)
        self._pending: dict[str, tuple[list[Mapping[str, Any]], list[Any]]] = {}
        self._pending_count = 0
        self._gave_up = False  # whether _give_up has said so (once)
        # the spans of lens runs already exported, for a nested run that ends after its parent did
        self._exported: collections.OrderedDict[str, Any] = collections.OrderedDict()
        _sinks.add(self)

    def __repr__(self) -> str:
        return f"<OTelSink {'latest experimental' if self.latest else 'v1.41.1'} names>"

    def _say_where_nothing_goes(self) -> None:
        """Once: which of the global providers this sink uses was never set, so its output is lost."""
        tracing, metering = (given is None for given in self._providers)
        if tracing and isinstance(self._trace.get_tracer_provider(), self._trace.ProxyTracerProvider):
            _internal_log.warning(
                "llm-ledger: OTelSink has no OpenTelemetry tracer provider to send spans to, so they "
                "go nowhere: run the application under opentelemetry-instrument, or call "
                "trace.set_tracer_provider(...) with an exporter (docs/exporters.md, OpenTelemetry)"
            )
        # the API's stand-in before set_meter_provider() has no public class: named as the API names it
        if metering and type(self._metrics_api.get_meter_provider()).__name__ == "_ProxyMeterProvider":
            _internal_log.warning(
                "llm-ledger: OTelSink has no OpenTelemetry meter provider to send metrics to: the "
                "histograms (durations, time to first chunk, token usage per call) recorded until one is "
                "set are lost, and its totals (the spend in llm_ledger.cost among them) go nowhere unless "
                "one is set later: run the application under opentelemetry-instrument, or call "
                "metrics.set_meter_provider(...) with a metric reader and exporter before the first call "
                "(docs/exporters.md, OpenTelemetry)"
            )

    def __call__(self, record: Mapping[str, Any]) -> None:
        if self._check_provider:
            self._check_provider = False
            self._say_where_nothing_goes()
        event = record["event"]
        if event == CALL_EVENT:
            theirs, their_span = self._openai_v2(record)
            # openai-v2 records a non-streamed call's token usage, its span sampled out or not
            self._metrics(record, theirs, theirs and not record["request"]["stream"])
            if theirs and their_span is None:
                return  # openai-v2 makes the span; nothing to link it by
            waits, lens = self._parent(record, their_span if theirs else record, link=theirs)
            if not (waits or theirs):
                self._call_span(record, lens)
        elif event == LENS_EVENT:
            for metric in record.get("anomaly_metrics") or ():  # whenever anomaly detection is on
                self._run_alert(self._anomalies, record, "llm_ledger.anomaly.metric", metric, 0)
            waits, parent = self._parent(record, record)
            if not waits:
                self._lens(record, parent)
        elif event == ANOMALY_EVENT:
            self._run_alert(self._anomalies, record, "llm_ledger.anomaly.metric", record["anomaly"]["metric"])
        elif event == BUDGET_EVENT:
            self._run_alert(self._breaches, record, "llm_ledger.budget.limit", record["budget"]["limit"])

    def _parent(self, record: Mapping[str, Any], item: Any, *, link: bool = False) -> tuple[bool, Any]:
        """(whether ``item``, a record or with ``link`` the context of openai-v2's span, now waits for its
        lens's record, else the lens span's context or None). A run of a parent process has no record
        here; a call that began after its lens's record went out (a thread outliving the block) joins
        the lens span, as waiting would keep it for good. Past ``MAX_PENDING_CALLS`` the runs that
        waited longest are given up (a lens of another monitor never reaches this sink)."""
        run_id = _waited_for(record)
        if run_id is None or not made_here(run_id):
            return False, None
        given_up: list[Mapping[str, Any]] = []
        with self._lock:
            lens = self._exported.get(run_id)
            if lens is None:
                while self._pending_count >= MAX_PENDING_CALLS:
                    records, links = self._pending.pop(next(iter(self._pending)))
                    self._pending_count -= len(records) + len(links)
                    given_up.extend(records)
                self._pending.setdefault(run_id, ([], []))[1 if link else 0].append(item)
                self._pending_count += 1
        self._give_up(given_up)
        return lens is None, lens

    def _give_up(self, records: list[Mapping[str, Any]]) -> None:
        """Emit the records of lens runs given up by ``_parent``, without their lens parent."""
        if not records:
            return
        if not self._gave_up:
            self._gave_up = True
            _internal_log.warning(
                "llm-ledger: OTelSink gave up waiting for the record of lens run %s and exported its "
                "calls without their lens span: more than %d calls waited for their lens. Lenses of "
                "another monitor (llm_ledger.lens() around a client of your own LLMCallMonitor) never "
                "reach this sink: open them with that monitor's lens() (docs/exporters.md, OpenTelemetry)",
                _waited_for(records[0]), MAX_PENDING_CALLS,
            )  # fmt: skip
        self._spans(records, None)

    def _spans(self, records: list[Mapping[str, Any]], parent: Any) -> None:
        """The spans of records that waited for their lens: calls' and nested lens runs'. One that fails
        (the application's span processor raising on it) costs no other; the first failure is raised
        once every span is out, for the monitor to report."""
        failed: Exception | None = None
        for record in records:
            try:
                (self._lens if record["event"] == LENS_EVENT else self._call_span)(record, parent)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    # -- the OTel openai-v2 instrumentation --------------------------------------------------------

    def _openai_v2(self, record: Mapping[str, Any]) -> tuple[bool, Any]:
        """Whether openai-v2 makes this call's span, and that span's context when it is still open here:
        the current span when a non-streamed call ends (it wraps ``create``, the ledger the client's
        ``request`` inside it), which then gets the cost and the ledger's attributes."""
        if _OPENAI_V2 not in sys.modules:
            return False, None
        span = self._trace.get_current_span()
        scope = getattr(getattr(span, "instrumentation_scope", None), "name", None)
        if (
            (scope == _OPENAI_V2 or (scope == _GENAI_HANDLER and _openai_v2_instrumented()))
            and getattr(span, "kind", None) is self._client_kind
            and span.is_recording()
        ):
            attributes = {"llm_ledger.call_id": record["call_id"]}
            if record["cost"]["total_cost_usd"] is not None:  # OpenTelemetry drops an attribute of None
                attributes["gen_ai.usage.cost"] = record["cost"]["total_cost_usd"]
            _context_attributes(record["context"], attributes)
            span.set_attributes(attributes)
            return True, span.get_span_context()
        return record["operation"] in _OPENAI_V2_OPERATIONS and _openai_v2_instrumented(), None

    # -- metrics -----------------------------------------------------------------------------------

    def _kept(self, kept: set[str], cap: int, raw: Any) -> str | None:
        """A served tier or a lens key as a metric attribute: itself, or ``other`` past ``cap``
        distinct ones (spans carry it as it is). One named ``other`` shares the attribute sets of those
        past the cap: said once, as the Prometheus sink says it of its reserved label values."""
        if raw is None or raw in kept:
            return raw  # type: ignore[no-any-return]
        with self._lock:
            if raw in kept:
                return raw  # type: ignore[no-any-return]
            if len(kept) >= cap:
                return OTHER
            kept.add(raw)
        if raw == OTHER:
            _say_reserved("llm_ledger.lens" if kept is self._lenses else "openai.response.service_tier")
        return raw  # type: ignore[no-any-return]

    def _run_alert(
        self, totals: _Totals, record: Mapping[str, Any], name: str, value: str, amount: int = 1
    ) -> None:
        """Count a lens run's anomaly or budget breach (``amount`` 0: its attribute set at 0) under its
        lens key (capped, absent outside any lens) and ``name``: its metric or limit, each one of a few."""
        lens = self._kept(self._lenses, self.max_lenses, record["context"].get("lens_key"))
        totals.add(
            amount, (lens, value), {name: value} if lens is None else {"llm_ledger.lens": lens, name: value}
        )

    def _attributes(self, base: tuple[Any, ...], extra: tuple[str, Any] | None = None) -> dict[str, Any]:
        """The metric attributes of ``base`` (plus ``extra``), built once: many calls share them."""
        key = (base, extra)
        found = self._attribute_sets.get(key)
        if found is None:
            found = {
                key: value for key, value in zip(_METRIC_ATTRIBUTES, base, strict=True) if value is not None
            }
            if extra is not None:
                found[extra[0]] = extra[1]
            if len(self._attribute_sets) >= _ATTRIBUTE_SETS:
                self._attribute_sets.clear()  # only a cache
            self._attribute_sets[key] = found
        return found

    def _metrics(self, record: Mapping[str, Any], theirs: bool, their_usage: bool) -> None:
        """``theirs``: openai-v2 records the call's duration; ``their_usage``: and its token usage
        (not for a stream, whose usage arrives after openai-v2 has recorded its metrics)."""
        base = (
            *_identity(record),
            self._kept(self._lenses, self.max_lenses, record["context"].get("lens_key")),
            self._kept(self._tiers, MAX_TIERS, record["response"].get("service_tier")),
        )
        operation = base[0]
        attributes = self._attributes(base)
        usd = record["cost"]["total_cost_usd"]
        if usd is not None:
            self._cost.add(usd, base, attributes)
        if cost_left_out(record):
            self._unpriced.add(1, base, attributes)
        timing = record["timing"]
        first = timing["time_to_first_token_ms"]
        if first is not None:
            self._first_chunk.record(first / 1000, attributes)
        if not their_usage:
            usage = record["usage"]
            if self.latest:
                self._latest_usage(record, operation, base, attributes)
            else:
                for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                    n = usage[field]
                    if n is not None:
                        self._token_usage.record(n, self._attributes(base, ("gen_ai.token.type", kind)))
        if theirs:
            return
        error_type = _error_type(record)
        timed = self._attributes(base, ("error.type", error_type)) if error_type else attributes
        histogram = self._embeddings_duration if self.latest and operation == "embeddings" else self._duration
        histogram.record(timing["duration_ms"] / 1000, timed)

    def _latest_usage(
        self, record: Mapping[str, Any], operation: str, base: tuple[Any, ...], attributes: dict[str, Any]
    ) -> None:
        usage = record["usage"]
        if operation == "embeddings":
            if usage["prompt_tokens"] is not None:
                self._embeddings_tokens.record(usage["prompt_tokens"], attributes)
            return
        if usage["prompt_tokens"] is None and usage["completion_tokens"] is None:
            if record["error"]:  # the conventions: a failed call counts 0 tokens of unknown modality
                self._tokens("input_tokens", 0, base, "unknown")
                self._tokens("output_tokens", 0, base, "unknown")
            return
        for kind, field, modality, audio in _modalities(record):
            n = usage.get(field)
            if n is None:
                continue
            if kind in self._operation_tokens:
                self._operation_tokens[kind].record(n, attributes)
            if audio:
                self._tokens(kind, audio, base, "audio")
                n -= audio
            if n or not audio:
                self._tokens(kind, n, base, modality)

    def _tokens(self, kind: str, n: int, base: tuple[Any, ...], modality: str) -> None:
        """Add ``n`` tokens of ``modality`` to the ``kind`` usage counter."""
        extra = ("gen_ai.token.modality", modality)
        self._usage[kind].add(n, (base, extra), self._attributes(base, extra))

    # -- spans -------------------------------------------------------------------------------------

    def _call_span(self, record: Mapping[str, Any], parent: Context | None) -> None:
        request = record["request"]
        response = record["response"]
        usage = record["usage"]
        identity = _identity(record)
        operation, model = identity[0], identity[2]
        first = record["timing"]["time_to_first_token_ms"]
        finish = response["finish_reason"]
        modalities = _modalities(record)
        heard, spoken = modalities[0][3], modalities[1][3]
        error_type = _error_type(record)
        optional = (
            *zip(_IDENTITY, identity, strict=True),
            ("gen_ai.request.temperature", request["temperature"]),
            ("gen_ai.request.max_tokens", request["max_tokens"]),
            ("gen_ai.request.stream", True if request["stream"] else None),
            *_parameters(request),
            ("openai.api.type", _API_TYPES.get(record["operation"])),
            ("openai.request.service_tier", request.get("service_tier")),  # .get: older records
            ("openai.response.service_tier", response.get("service_tier")),
            ("gen_ai.response.id", response["id"]),
            ("gen_ai.response.finish_reasons", [finish] if finish else None),
            ("gen_ai.usage.input_tokens", usage["prompt_tokens"]),
            ("gen_ai.usage.output_tokens", usage["completion_tokens"]),
            ("gen_ai.usage.cache_read.input_tokens", usage["cached_tokens"]),
            (f"gen_ai.usage.{self._cache_write}.input_tokens", usage.get("cache_write_tokens")),
            ("gen_ai.usage.reasoning.output_tokens", usage["reasoning_tokens"]),
            # the newest conventions' names, in both modes: v1.41.1 has none for audio tokens
            ("gen_ai.usage.audio.input_tokens", heard or None),
            ("gen_ai.usage.audio.output_tokens", spoken or None),
            ("gen_ai.usage.cost", record["cost"]["total_cost_usd"]),
            ("llm_ledger.call_id", record["call_id"]),
            ("llm_ledger.status", record["status"]),
            ("llm_ledger.request_id", response["request_id"]),
            ("llm_ledger.retries", record["retries"]),
            ("gen_ai.response.time_to_first_chunk", None if first is None else first / 1000),
            ("error.type", error_type),
        )
        attributes = {key: value for key, value in optional if value is not None}
        if self.latest and operation != "embeddings":  # the text tokens: input, output, cache reads
            for kind, field, modality, audio in modalities[:3]:
                if modality != "unknown" and usage[field] is not None:
                    attributes[f"gen_ai.usage.{modality}.{kind}"] = usage[field] - audio
        _context_attributes(record["context"], attributes)
        if "content" in record:
            attributes.update(_content_attributes(record))
        start = _ns(record["timing"]["start_time"])
        end = start + int(record["timing"]["duration_ms"] * 1_000_000)
        span = self.tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=parent,
            kind=self._client_kind,
            attributes=attributes,
            start_time=start,
        )
        if error_type:
            message = record["error"]["message"] if record["error"] else None
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
        span.end(end_time=end)

    def _lens(self, record: Mapping[str, Any], parent: Any) -> None:
        """The lens run's span (under ``parent``, its enclosing run's span context, else the current
        span), then the spans of its calls and nested runs under it."""
        context = record["context"]
        summary = record["summary"]
        run_id = context.get("lens_run_id")
        with self._lock:
            calls, links = self._pending.pop(run_id, ([], []))
            self._pending_count -= len(calls) + len(links)
        # tokens not as gen_ai.usage.*: backends total a trace's tokens by adding those over its
        # spans, and the calls under this span carry them. Its cost stays gen_ai.usage.cost, the name
        # the exporter's contract gives it (docs/exporters.md says what that means for such backends)
        attributes: dict[str, Any] = {
            "llm_ledger.lens.input_tokens": summary["prompt_tokens"],
            "llm_ledger.lens.output_tokens": summary["completion_tokens"],
            "llm_ledger.lens.cache_read.input_tokens": summary["cached_tokens"],
            "llm_ledger.lens.reasoning.output_tokens": summary["reasoning_tokens"],
            "gen_ai.usage.cost": summary["total_cost_usd"],
            "llm_ledger.lens.calls": summary["total_api_calls"],
            "llm_ledger.lens.errors": summary["errors"],
            "llm_ledger.lens.models": list(summary["models_used"]),
            "llm_ledger.lens.cost_complete": summary["cost_complete"],
        }
        # as on its calls' spans: the cache writes under the mode's name, audio (heard afresh or cached)
        # only where there is some (.get: a record of an older version has none of these)
        heard = (summary.get("prompt_audio_tokens") or 0) + (summary.get("cached_audio_tokens") or 0)
        optional = (
            (f"llm_ledger.lens.{self._cache_write}.input_tokens", summary.get("cache_write_tokens")),
            ("llm_ledger.lens.audio.input_tokens", heard or None),
            ("llm_ledger.lens.audio.output_tokens", summary.get("completion_audio_tokens") or None),
            ("llm_ledger.lens.pending_calls", summary.get("pending_calls")),
        )
        attributes.update((key, value) for key, value in optional if value is not None)
        _context_attributes(context, attributes)
        end = _ns(record["timestamp"])
        # records keep milliseconds: a call begun within a millisecond of its lens can seem to start
        # first; the lens span starts no later than its calls, as a parent span contains its children
        starts = [_ns(item["timing"]["start_time"]) for item in calls if item["event"] != LENS_EVENT]
        start = min([end - int(summary["duration_ms"] * 1_000_000), *starts])
        try:
            lens_span = self.tracer.start_span(
                f"lens {context.get('lens_key')}",
                context=parent,  # None: the application's current span when the lens ended
                kind=self._trace.SpanKind.INTERNAL,
                attributes=attributes,
                links=[self._trace.Link(link) for link in links],
                start_time=start,
            )
        except Exception:  # the application's span processor raising on it: its calls still go out
            self._spans(calls, parent)
            raise
        if summary["errors"]:  # as llm_ledger_lens_runs_total counts the run: status="error"
            calls_failed = f"{summary['errors']} of {summary['total_api_calls']} call(s) failed"
            lens_span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, calls_failed))
        lens_context = self._trace.set_span_in_context(lens_span)
        with self._lock:
            self._exported[run_id] = lens_context
            if len(self._exported) > _EXPORTED_RUNS:
                self._exported.popitem(last=False)
        try:
            self._spans(calls, lens_context)
        finally:
            lens_span.end(end_time=max(end, start))
