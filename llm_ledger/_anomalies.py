"""Anomalies: lens runs far above the median + k * MAD of the last runs of their service, lens and
models, online (the baseline rebuilt at start from the end of the log: no state file) and replayed
from logs (``llm-ledger anomalies``). The rule, its settings and why: docs/ANOMALIES.md.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import itertools
import math
import os
import statistics
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from ._errors import ConfigError, check_hook
from ._pricing import day_parts
from ._records import LENS_EVENT, AnomalyRecord, AnomalyShape, anomaly_record, process_of
from .loading import BOOLEAN_WORDS, did_you_mean, loads, shown

__all__ = ["METRICS", "AnomalyConfig", "AnomalyDetector"]

METRICS: Final = ("total_tokens", "total_cost_usd", "duration_ms")  # lens summary keys judged
SCALES: Final = ("log", "linear")
_MAX_BASELINES: Final = 1000  # (service, lens, model) kept; the least recently seen is dropped past it
_LENS_MARK: Final = b'"lens_summary"'  # cheap to look for: only these lines are parsed
_COLD_DURATION: Final = "duration_ms at process start"  # the baseline of a process's first runs
_MAX_STARTS: Final = 10_000  # (process, service, lens, model) kept; past it, the oldest is forgotten
# MAD / mean absolute deviation for normal data (0.6745 / 0.7979): the two then measure the same spread
# (Iglewicz and Hoaglin's fallback for a MAD of 0)
_MEAN_TO_MAD: Final = 0.6745 / math.sqrt(2 / math.pi)
_Key = tuple[str | None, str, str | None]  # what a baseline is of: (service, lens key, models)


def _as_logged(value: Any) -> Any:
    """A live run's context value as the rebuild reads it back from the log (an ``Enum`` member as its
    value, a tuple as a list, a date as ISO text...): its baseline is the same after a restart."""
    try:
        return loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, ValueError, RecursionError):  # what the log writes otherwise: str() of it
        return str(value)


def _number(name: str, value: Any, *, whole: bool, low: float, why: str) -> None:
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    # a whole number sizes a deque or a read (a C size); NaN is in no range; an int is never converted
    high = sys.maxsize if whole else sys.float_info.max
    if not ok or isinstance(value, bool) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        most = f" (at most {high:,})" if ok and value > high else ""
        raise ConfigError(f"anomalies: {name} must be {kind} {why}{most}, got {value!r}")


@dataclass(frozen=True)
class AnomalyConfig:
    """How the anomaly detector judges a lens run (``configure(anomalies=AnomalyConfig(...))``); each
    setting, its default and why: docs/ANOMALIES.md."""

    window: int = 100
    k: float = 6.0
    min_runs: int = 20
    min_mad_ratio: float = 0.05
    metrics: tuple[str, ...] = METRICS
    history_bytes: int = 32 << 20
    scale: str = "log"

    def __post_init__(self) -> None:
        _number("window", self.window, whole=True, low=3, why="of runs, at least 3")
        _number("k", self.k, whole=False, low=math.ulp(0), why="of MADs, greater than 0")
        _number("min_runs", self.min_runs, whole=True, low=3, why="of runs, at least 3")
        if self.min_runs > self.window:
            raise ConfigError(
                f"anomalies: min_runs ({self.min_runs}) must not exceed window ({self.window}): "
                "a baseline never holds more than window runs"
            )
        _number("min_mad_ratio", self.min_mad_ratio, whole=False, low=0, why="from 0 up")
        _number("history_bytes", self.history_bytes, whole=True, low=0, why="from 0 up")
        if isinstance(self.metrics, list):  # a list reads as well as a tuple; the config stays hashable
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if not isinstance(self.metrics, tuple) or not self.metrics:
            raise ConfigError(
                f"anomalies: metrics must be a non-empty tuple or list of {', '.join(METRICS)}, "
                f"got {self.metrics!r}"
            )
        if self.scale not in SCALES:
            raise ConfigError(f"anomalies: scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        for metric in self.metrics:
            if metric not in METRICS:
                hint = did_you_mean(metric, METRICS) if isinstance(metric, str) else ""
                raise ConfigError(
                    f"anomalies: unknown metric {metric!r}{hint}; choose from {', '.join(METRICS)}"
                )
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(self.metrics)))  # each judged once

    @classmethod
    def parse(cls, text: str, source: str = "LLM_LEDGER_ANOMALIES") -> AnomalyConfig | None:
        """``on`` / ``off`` (and 1, 0, true, false), or settings such as ``k=5,window=100,min_runs=20``."""
        value = text.strip().lower()
        on = BOOLEAN_WORDS.get(value)
        if on is not None:
            return cls() if on else None
        settings = [setting.name for setting in fields(cls)]
        values: dict[str, Any] = {}
        # an empty item ("k=6,") is ignored, as in LLM_LEDGER_EXPORTERS; nothing but commas is no setting
        for part in [part for part in value.split(",") if part.strip()] or [value]:
            name, sep, raw = (s.strip() for s in part.partition("="))
            if not sep and name in BOOLEAN_WORDS:  # "on,k=6"
                raise ConfigError(
                    f"{source}={shown(text)}: {shown(name)} goes alone; settings (k=6) turn detection on "
                    "by themselves: give either on or off, or the settings"
                )
            if not sep or name not in settings:
                raise ConfigError(
                    f"{source}={shown(text)}: expected on, off, or comma-separated settings such as "
                    f"k=6,window=100,min_runs=20 (settings: {', '.join(settings)}), got {shown(part.strip())}"
                    + (did_you_mean(name, settings) if sep else "")
                )
            if name in values:
                raise ConfigError(f"{source}={shown(text)}: {name} is given twice; give each setting once")
            if name in ("metrics", "scale"):
                values[name] = tuple(m for m in raw.split("+") if m) if name == "metrics" else raw
                continue
            real = name in ("k", "min_mad_ratio")
            try:  # k=5 reads as AnomalyConfig(k=5) does
                values[name] = float(raw) if real and not raw.lstrip("+-").isdigit() else int(raw)
            except ValueError:
                kind = "a number" if real else "a whole number"
                got = shown(raw)
                raise ConfigError(f"{source}={shown(text)}: {name} must be {kind}, got {got}") from None
        try:
            return cls(**values)
        except ConfigError as exc:  # the checks of the settings, named after the variable holding them
            raise ConfigError(f"{source}={shown(text)}: {str(exc).removeprefix('anomalies: ')}") from None


def _value(summary: Mapping[str, Any], metric: str) -> float | None:
    value = summary.get(metric)
    # a float's range, not isfinite(): an int past it (a corrupt line) would raise
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= sys.float_info.max:
        return None
    if metric == "total_cost_usd" and summary.get("cost_complete") is False:
        return None  # an unpriced call makes the cost too low to compare
    return float(value)


def _part_of_day(record: Mapping[str, Any], summary: Mapping[str, Any], models: Any) -> str | None:
    """When the run's models are priced by the time of day: the part of the day (UTC) its calls began
    in, named by the second it starts at for each model; ``None`` otherwise."""
    parts = [day_parts(m) if isinstance(m, str) else () for m in models] if isinstance(models, list) else []
    if not any(parts):
        return None
    try:
        end = datetime.fromisoformat(str(record.get("timestamp")).replace("Z", "+00:00"))
        start = end.timestamp() - float(summary.get("duration_ms") or 0) / 1000
    except (TypeError, ValueError, OverflowError):
        return None
    second = int(start) % 86_400
    # per model: its last price change at or before that second (the day's last one, before the first)
    return "+".join(str(max((s for s in p if s <= second), default=p[-1])) if p else "-" for p in parts)


class AnomalyDetector:
    """Judges each lens summary record against the recent runs of its service, lens and models; thread-safe.
    ``configure(anomalies=...)`` sets one on the default monitor; ``monitor.anomalies = ...`` on yours,
    which then emits what it finds through its sinks and calls ``on_anomaly`` with each record."""

    def __init__(
        self,
        config: AnomalyConfig | None = None,
        *,
        on_anomaly: Callable[[AnomalyRecord], object] | None = None,
    ) -> None:
        if config is None:
            config = AnomalyConfig()
        elif not isinstance(config, AnomalyConfig):
            raise ConfigError(
                f"AnomalyDetector() takes an AnomalyConfig (or None for the defaults), got {config!r}"
            )
        check_hook("on_anomaly", on_anomaly)
        self.config = config
        self.on_anomaly = on_anomaly
        self._lock = threading.Lock()
        # (service, lens key, model) -> metric -> its last `window` values
        self._baselines: dict[_Key, dict[str, collections.deque[float]]] = {}
        # (process id prefix, service, lens key, model) of the runs seen: the others are a process's first
        self._started: collections.OrderedDict[tuple[str, _Key], None] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<AnomalyDetector {self.config} baselines={len(self._baselines)}>"

    def observe(self, record: Mapping[str, Any], *, judge: bool = True) -> list[AnomalyRecord]:
        """The anomalies of one ``lens_summary`` record (other records: none); it then joins the baseline.
        ``judge=False`` only adds it (the rebuild: a verdict costs most of a run's time)."""
        context = record.get("context")
        summary = record.get("summary")
        if (
            record.get("event") != LENS_EVENT
            or not isinstance(context, dict)
            or not isinstance(summary, dict)
        ):
            return []
        lens = context.get("lens_key")
        pending = summary.get("pending_calls")
        if not isinstance(lens, str) or (type(pending) is int and pending > 0):
            # a run that began a background response and ended before it: its tokens, cost and
            # duration leave out the response's, which its end's record has (docs/ANOMALIES.md)
            return []
        models = summary.get("models_used")
        model = "+".join(map(str, models)) if isinstance(models, list) and models else None
        # two services (api and batch, staging and prod) writing one log are kept apart: one's usual
        # runs would make the other's look anomalous, or hide its runaways. str(): a service read from
        # a log may be any JSON value, a list (unhashable) among them
        service = context.get("service")
        if service is not None and type(service) is not str:
            service = _as_logged(service)
        key: _Key = (None if service is None else str(service), lens, model)
        config = self.config
        linear = config.scale == "linear"
        found: list[AnomalyRecord] = []
        with self._lock:
            # the least recently seen baseline is dropped past _MAX_BASELINES: a dict keeps order
            series = self._baselines.pop(key, None) or {}
            self._baselines[key] = series
            if len(self._baselines) > _MAX_BASELINES:
                del self._baselines[next(iter(self._baselines))]
            cold = self._first_of_process(context.get("lens_run_id"), key)
            for metric in config.metrics:
                metric_key = metric
                if cold and metric == "duration_ms":
                    # the process's cold start (imports, first connection, price data) is in this
                    # run's duration: judged against the lens's other first runs, not its usual ones
                    metric_key = _COLD_DURATION
                elif metric == "total_cost_usd" and (part := _part_of_day(record, summary, models)):
                    # a price by time of day (DeepSeek's off-peak hours): each part of the day's costs
                    # are a baseline of their own, or the daily end of a discount looks like a runaway
                    metric_key = f"{metric} from {part}"
                window = series.setdefault(metric_key, collections.deque(maxlen=config.window))
                value = _value(summary, metric)
                if value is None or (value <= 0 and not linear):  # a log scale has no place for 0
                    continue
                point = value if linear else math.log(value)
                if judge and len(window) >= config.min_runs:
                    center = statistics.median(window)
                    deviations = [abs(v - center) for v in window]
                    mad = statistics.median(deviations)
                    floor = config.min_mad_ratio * abs(center) if linear else math.log1p(config.min_mad_ratio)
                    spread = max(mad, floor)
                    if mad < floor:
                        # Most runs alike: the MAD says nothing of the others (a lens that makes one call
                        # or, now and then, two). Their mean deviation does, scaled to the MAD's unit.
                        spread = max(spread, _MEAN_TO_MAD * statistics.fmean(deviations))
                    # exp(ln x) is x give or take its last bits: 73, not 72.99999999999999
                    median = center if linear else float(f"{math.exp(center):.12g}")
                    threshold = center + config.k * spread if linear else math.exp(center + config.k * spread)
                    if value > threshold:
                        anomaly: AnomalyShape = {
                            "metric": metric,
                            "value": value,
                            "median": median,
                            "mad": mad,
                            "threshold": threshold,
                            "k": float(config.k),
                            "scale": config.scale,
                            "runs": len(window),
                            "model": model,
                        }
                        found.append(anomaly_record(lens=record, anomaly=anomaly))
                window.append(point)
        return found

    def _first_of_process(self, run_id: Any, baseline: _Key) -> bool:
        """Whether the run ``run_id`` is the first of its ``baseline`` (service, lens, models) in the
        process that made it (the process is the id's prefix: ``new_id()``); ``False`` for an id of
        another form."""
        process = process_of(run_id)
        if process is None:
            return False
        key = (process, baseline)
        if key in self._started:
            return False
        self._started[key] = None
        if len(self._started) > _MAX_STARTS:
            self._started.popitem(last=False)
        return True

    def rebuild(self, path: str | os.PathLike[str]) -> int:
        """Replay the lens summaries in the last ``history_bytes`` of the log ``path`` into the
        baseline, silently, those of the log logrotate last moved away first when ``path`` holds
        less (``path.1``, ``.1.gz``, ``-YYYYMMDD``...); returns how many runs were read (0: no file)."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        older = _rotated(path) if size < self.config.history_bytes else None
        runs = 0
        for record in itertools.chain(
            () if older is None else _tail_records(older, self.config.history_bytes - size, OSError),
            _tail_records(path, self.config.history_bytes),
        ):
            self.observe(record, judge=False)
            runs += 1
        return runs


def _rotated(path: Path) -> Path | None:
    """The log rotated away last: of the files named ``path`` plus a suffix, the one written last."""
    found: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError):
        for sibling in path.parent.iterdir():
            name = sibling.name
            rotation = name.startswith(path.name) and name[len(path.name) : len(path.name) + 1] in (".", "-")
            if rotation and sibling.is_file():  # not a directory named so (llm_calls.jsonl.d)
                with contextlib.suppress(OSError):
                    found.append((sibling.stat().st_mtime, sibling))
    return max(found, default=(0.0, None))[1]


def _gz_tail(path: Path, max_bytes: int) -> list[bytes]:
    """The lens lines in the last ``max_bytes`` of the compressed log ``path``, read through (gzip
    cannot seek back from its end); one cut short (being compressed now) gives those before the cut."""
    kept: collections.deque[tuple[int, bytes]] = collections.deque()  # (where the line ends, line)
    read = 0
    try:
        with gzip.open(path, "rb") as file:
            for line in file:
                read += len(line)
                if _LENS_MARK in line:
                    kept.append((read, line))
                while kept and kept[0][0] - len(kept[0][1]) < read - max_bytes:
                    kept.popleft()
    except (OSError, EOFError):
        pass
    return [line for _, line in kept]


def _tail_records(
    path: Path, max_bytes: int, unread: type[OSError] = FileNotFoundError
) -> Iterator[dict[str, Any]]:
    """The lens summaries in the last ``max_bytes`` of ``path`` (a ``.gz`` read through), a line at a
    time; other events and malformed lines are skipped, and so is the file if opening it raises
    ``unread`` (a rotated log that cannot be read: the live log still counts)."""
    if path.name.endswith(".gz"):
        yield from _records(_gz_tail(path, max_bytes))
        return
    try:
        file = path.open("rb")
    except unread:
        return
    with file:
        start = max(0, os.fstat(file.fileno()).st_size - max_bytes)
        if start:
            file.seek(start - 1)
            file.readline()  # the rest of the line cut at the start
        yield from _records(file)


def _records(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if _LENS_MARK in line:
            try:
                record = loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict) and record.get("event") == LENS_EVENT:
                yield record
