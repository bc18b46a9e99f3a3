"""Grouped cost sums over call records and lens summaries: the query and the rows it gives (dimensions,
filters and rows: docs/REPORTING.md, "The query" and "The rows").
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from .._errors import ConfigError
from .._records import (
    ANOMALY_EVENT,
    BUDGET_EVENT,
    CALL_EVENT,
    LENS_EVENT,
    cost_decimal,
    cost_left_out,
    cost_pending,
    process_of,
)
from ..loading import did_you_mean, shown
from ._read import InputStats, LogReader

__all__ = [
    "EVENTS", "CostReport", "CostRow", "Query", "QueryError", "aggregate", "make_query", "parse_where",
    "select",
]  # fmt: skip

# the records a report reads: calls and lens runs, and the budget breaches and anomalies it counts
EVENTS: Final = (CALL_EVENT, LENS_EVENT, BUDGET_EVENT, ANOMALY_EVENT)

# -> length of the timestamp prefix (a week: the ISO week of the day's date, 2026-W45)
TIME_DIMENSIONS: Final = {"hour": 13, "day": 10, "week": 10, "month": 7}
_DATE_EXAMPLE: Final = "e.g. 2025-11-24, 2025-11-24T16:00 or 2025-11-24T16:00:00+02:00 (no zone: UTC)"
_WHERE_EXAMPLE: Final = "e.g. user_id=alice or model=gpt-4o-mini"
_BY_EXAMPLE: Final = "e.g. user_id, or lens,model for several"
_LEDGER_STAMP: Final = len("2025-11-24T16:00:00.000Z")
_ZERO: Final = Decimal(0)
_BUILT_IN: Final = frozenset({"lens", "model", "status", *TIME_DIMENSIONS})  # status: a lens run has one too
# the record fields that hold objects: a dimension is a dotted path into them (server.address), never one
_OBJECTS: Final = frozenset(
    {"context", "request", "response", "usage", "cost", "timing", "server", "error", "summary", "content"}
)


def _check_known(query: Query, present: set[str]) -> None:
    """Refuse a dimension no record has (a typo such as ``usr_id``, which would put every record in one
    null group or filter every record out), naming those the records have."""
    for parameter, names in (("by", query.by), ("where", tuple(query.where))):
        for name in names:
            if name in _BUILT_IN or name in present or name.partition(".")[0] in present:
                continue
            choices = sorted(_BUILT_IN | present - _OBJECTS)
            objects = ", ".join(f"{field}.*" for field in sorted(present & _OBJECTS - {"context"}))
            raise QueryError(
                parameter,
                f"no record has a dimension {shown(name)}{did_you_mean(name, choices)}; "
                f"the records have: {', '.join(choices)}"
                + (f"; and dotted paths into {objects}" if objects else ""),
            )


class QueryError(ConfigError):
    """A bad ``by``, ``where``, ``since`` or ``until``; ``parameter`` names which."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class Query:
    """What to sum: the dimensions of a row, the filters, the time range (UTC, half-open) and the time
    zone whose clock the time dimensions read (``tz``, an IANA name)."""

    by: tuple[str, ...] = ("lens",)
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    tz: str = "UTC"

    @property
    def zone(self) -> ZoneInfo | None:
        """The zone of ``tz``; None for UTC (the records' own)."""
        return _zone(self.tz)

    def to_json(self) -> dict[str, Any]:
        return {
            "by": list(self.by),
            "where": {key: sorted(values) for key, values in self.where.items()},
            "since": None if self.since is None else _iso(self.since),
            "until": None if self.until is None else _iso(self.until),
            "tz": self.tz,
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _zone(tz: Any) -> ZoneInfo | None:
    """The zone an IANA name (``Europe/Paris``) names; None for UTC; :class:`QueryError` for no zone."""
    if tz in ("UTC", "Z"):
        return None
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        named, close = repr(tz), ""
        if isinstance(tz, str):
            named, close = shown(tz), did_you_mean(tz, sorted(available_timezones()))
        raise QueryError(
            "tz", f"{named} is not a time zone name{close}; e.g. Europe/Paris, America/New_York or UTC"
        ) from None


def _moment(name: str, value: str | date | datetime | None, zone: ZoneInfo | None) -> datetime | None:
    """A bound as an aware UTC datetime: ISO text, a date (midnight) or a datetime; without a zone, on
    ``zone``'s clock (None: UTC)."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise QueryError(
                name, f"{shown(str(given))} is not an ISO date or date-time; {_DATE_EXAMPLE}"
            ) from None
    elif not isinstance(value, date):
        raise QueryError(name, f"expected an ISO date string, a date or a datetime, got {value!r}")
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    try:
        value = value.replace(tzinfo=zone or UTC) if value.tzinfo is None else value
        value = value.astimezone(UTC)
        _stamp_bound(value)  # compared in the ledger's spelling: rounded up to the millisecond
    except OverflowError:
        raise QueryError(
            name,
            f"{shown(given) if isinstance(given, str) else repr(given)} is out of range: UTC years 1 to 9999 "
            f"(to 9999-12-31T23:59:59.999Z); {_DATE_EXAMPLE}",
        ) from None
    return value


def _dimensions(by: str | Sequence[str]) -> tuple[str, ...]:
    names = list(by) if isinstance(by, Iterable) and not isinstance(by, str) else [by]
    out: list[str] = []
    for item in names:
        if not isinstance(item, str):
            raise QueryError("by", f"{item!r} is not a dimension name; {_BY_EXAMPLE}")
        for name in item.split(","):
            name = name.strip()
            if not name:
                raise QueryError("by", f"{shown(item)} has an empty dimension name; {_BY_EXAMPLE}")
            if name not in out:
                out.append(name)
    if not out:
        raise QueryError("by", f"no dimension given; {_BY_EXAMPLE}")
    return tuple(out)


def parse_where(items: Iterable[str]) -> dict[str, list[str]]:
    """``["user_id=alice", "user_id=bob", "model=x"]`` as ``{"user_id": ["alice", "bob"], ...}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QueryError("where", f"{shown(item)} is not KEY=VALUE; {_WHERE_EXAMPLE}")
        out.setdefault(key.strip(), []).append(value.strip())  # "user_id = alice" as "user_id=alice"
    return out


def make_query(
    by: str | Sequence[str] = ("lens",),
    where: Mapping[str, str | Sequence[str]] | None = None,
    since: str | date | datetime | None = None,
    until: str | date | datetime | None = None,
    tz: str | None = None,
) -> Query:
    """A checked :class:`Query`; :class:`ConfigError` names a bad value and shows a valid one."""
    filters: dict[str, frozenset[str]] = {}
    if where is not None and not isinstance(where, Mapping):
        raise QueryError(
            "where",
            f"expected a mapping of dimension to value(s), e.g. {{'user_id': 'alice'}}, got {where!r}",
        )
    for key, values in (where or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise QueryError("where", f"{key!r} is not a dimension name; {_WHERE_EXAMPLE}")
        chosen = [values] if isinstance(values, str) else values
        if (
            not isinstance(chosen, list | tuple | set | frozenset)
            or not chosen
            or not all(isinstance(v, str) for v in chosen)
        ):
            raise QueryError("where", f"{key}: expected a string or a list of strings, got {values!r}")
        filters[key.strip()] = frozenset(chosen)
    zone = _zone("UTC" if tz is None else tz)
    start, end = _moment("since", since, zone), _moment("until", until, zone)
    if start is not None and end is not None and start >= end:
        raise QueryError(
            "since",
            f"{_iso(start)} is not before until ({_iso(end)}); since is inclusive and until exclusive: "
            "since 2025-11-01 until 2025-12-01 is November",
        )
    return Query(_dimensions(by), filters, start, end, "UTC" if zone is None else str(zone))


@dataclass(frozen=True, slots=True)
class CostRow:
    """The sums of one group: ``key`` maps each dimension to its value (None when records lack it)
    (docs/REPORTING.md, "The rows")."""

    key: dict[str, Any]
    lens_runs: int = 0
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # the part of prompt_tokens the provider's prompt cache served
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = _ZERO
    unpriced_calls: int = 0
    cut_short_runs: int = 0
    over_budget: int = 0  # budget_exceeded records
    anomalies: int = 0  # lens_anomaly records
    duration_ms: float = 0.0  # of all calls together

    @property
    def cost_complete(self) -> bool:
        return self.unpriced_calls == 0

    @property
    def avg_duration_ms(self) -> float | None:
        return self.duration_ms / self.calls if self.calls else None

    def to_json(self) -> dict[str, Any]:
        avg = self.avg_duration_ms
        out = {column.name: getattr(self, column.name) for column in fields(self)[:-1]}  # the sums
        return out | {
            "key": dict(self.key),
            "cost_usd": float(self.cost_usd),
            "cost_complete": self.cost_complete,
            "avg_duration_ms": None if avg is None else round(avg, 3),
        }


@dataclass(frozen=True, slots=True)
class CostReport:
    """The rows of a query (costliest first; by time dimensions only, in time order), their total,
    and what reading each input found."""

    query: Query
    rows: tuple[CostRow, ...]
    total: CostRow
    inputs: tuple[InputStats, ...] = ()
    filtered_out: int = 0  # records left out by where / since / until
    rejected: int = 0  # records with numbers no record has, left out (from logs: malformed lines too)
    seconds: float = 0.0
    # (key, value, the closest value the records have or None) of each where value no call or lens run
    # has, in any period: a typo that empties the report
    unmatched: tuple[tuple[str, str, str | None], ...] = ()

    @property
    def lines(self) -> int:
        return sum(stats.lines for stats in self.inputs)

    @property
    def malformed(self) -> int:
        return sum(stats.malformed for stats in self.inputs)

    @property
    def skipped(self) -> int:
        return sum(stats.skipped for stats in self.inputs)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.query.to_json(),
            "lines": self.lines,
            "calls": self.total.calls,
            "lens_runs": self.total.lens_runs,
            "malformed_lines": self.malformed,
            "skipped_lines": self.skipped,
            "filtered_out": self.filtered_out,
            "rejected_records": self.rejected,
            "inputs": [stats.to_json() for stats in self.inputs],
            "rows": [row.to_json() for row in self.rows],
            "total": {k: v for k, v in self.total.to_json().items() if k != "key"},
            "unmatched_where": {
                key: [v for k, v, _ in self.unmatched if k == key] for key, _, _ in self.unmatched
            },
        }


class BadRecord(ValueError):
    """A record of a known event whose fields are not what the ledger writes."""


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _tokens(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise BadRecord(f"token count {value!r}")
    return value


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadRecord(f"number {value!r}")
    return float(value)


def _usd(value: Any) -> Decimal | None:
    if value is None:
        return None
    cost = cost_decimal(value)
    if cost is None:
        raise BadRecord(f"cost {value!r}")
    return cost


def _values(
    record: dict[str, Any], context: dict[str, Any], name: str, run: list[Any] | None, zone: ZoneInfo | None
) -> list[Any]:
    """The values of dimension ``name`` in a record (one, or each model of ``run``: the models of a lens
    run, or of the run a budget breach or an anomaly is of; None for a call); time dimensions on
    ``zone``'s clock (None: UTC)."""
    if name == "lens":
        return [context.get("lens_key")]
    if name == "model":
        if run is not None:
            return run
        model = _dict(record.get("request")).get("model")
        return [_dict(record.get("response")).get("model") if model is None else model]
    if name in TIME_DIMENSIONS:
        stamp = _when(record)
        if stamp is not None and zone is not None:
            stamp = _local_minute(stamp[:16], zone)
        if stamp is None:
            return [None]
        return [_iso_week(stamp[:10]) if name == "week" else stamp[: TIME_DIMENSIONS[name]]]
    if name in context:
        return [context[name]]
    if name in record:
        return [record[name]]
    # a run's summary has no status: its own is whether a call failed
    if name == "status" and record.get("event") == LENS_EVENT:
        errors = _dict(record.get("summary")).get("errors")
        return ["error" if type(errors) is int and errors > 0 else "ok"]
    value: Any = record  # a dotted path (server.address), else None
    for part in name.split("."):
        value = value.get(part) if type(value) is dict else None
    return [value]


@functools.lru_cache(maxsize=4096)
def _local_minute(minute: str, zone: ZoneInfo) -> str | None:
    """A UTC minute (``2026-11-02T03:30``) as that minute on ``zone``'s clock (``2026-11-01T22:30``);
    None past the years a date can hold. By the minute: a zone may be half an hour off UTC."""
    try:
        return datetime.fromisoformat(minute).replace(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%dT%H:%M")
    except OverflowError:
        return None


@functools.lru_cache(maxsize=1024)
def _iso_week(day: str) -> str:
    """``2026-11-09`` as its ISO week, ``2026-W46``: weeks start on Monday, and text order is time order
    (2027-01-01 is in 2026-W53)."""
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def as_text(value: Any) -> str:
    """A dimension value as ``where`` compares it."""
    if type(value) is str:
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hashable(value: Any) -> Any:
    # strings as themselves; anything else as its canonical JSON in a tuple, so "1" and 1 stay apart
    return value if type(value) is str else (as_text(value),)


def _stamp_bound(moment: datetime | None) -> str | None:
    """A bound in the ledger's timestamp spelling, rounded up to the millisecond the ledger writes."""
    if moment is None:
        return None
    moment += timedelta(microseconds=-moment.microsecond % 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _utc_stamp(stamp: Any) -> str | None:
    """A record's timestamp in the ledger's spelling (UTC, milliseconds, ``Z``); another writer's ISO
    spelling (an offset, no zone: UTC, a space for the ``T``) is converted; None when it is none."""
    if type(stamp) is not str:
        return None
    if len(stamp) == _LEDGER_STAMP and stamp[-1] == "Z" and stamp[10] == "T":
        return stamp
    try:
        moment = datetime.fromisoformat(stamp)
        return _stamp_bound(moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC))
    except (ValueError, OverflowError):  # not ISO, or no UTC millisecond (before year 1, past 9999)
        return None


def _when(record: dict[str, Any]) -> str | None:
    """When a record counts (UTC, the ledger's spelling): a call at its start, the moment it is priced
    at (a call from 23:59:59 to 00:00:01 is the day's it began); a lens run at its end; an alert at its
    own time."""
    timing = record.get("timing")
    start = timing.get("start_time") if type(timing) is dict else None
    return _utc_stamp(start) or _utc_stamp(record.get("timestamp"))


def _in_range(record: dict[str, Any], since: str | None, until: str | None) -> bool:
    stamp = _when(record)
    return stamp is not None and (since is None or stamp >= since) and (until is None or stamp < until)


@dataclass(slots=True)
class _Sums:
    """The running sums of one group: a :class:`CostRow` while it is being added to."""

    key: dict[str, Any]
    lens_runs: int = 0
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = _ZERO
    unpriced_calls: int = 0
    cut_short_runs: int = 0
    over_budget: int = 0
    anomalies: int = 0
    duration_ms: float = 0.0

    def add(self, lens_run: bool, figures: _Figures | None, alert: str | None = None) -> None:
        if lens_run:
            self.lens_runs += 1
        if alert is not None:  # the event of a budget_exceeded or lens_anomaly record
            self.over_budget += alert == BUDGET_EVENT
            self.anomalies += alert == ANOMALY_EVENT
        if figures is not None:
            calls, errors, prompt, cached, completion, total, cost, unpriced, duration = figures
            self.calls += calls
            self.errors += errors
            self.prompt_tokens += prompt
            self.cached_tokens += cached
            self.completion_tokens += completion
            self.total_tokens += total
            if cost is not None:
                self.cost_usd += cost
            self.unpriced_calls += unpriced
            self.duration_ms += duration

    def row(self) -> CostRow:
        return CostRow(**{column.name: getattr(self, column.name) for column in fields(self)})


# calls, errors, prompt, cached, completion and total tokens, cost (None: unknown), unpriced calls, duration
_Figures = tuple[int, int, int, int, int, int, Decimal | None, int, float]


def _call_figures(record: dict[str, Any]) -> _Figures:
    usage = _dict(record.get("usage"))
    prompt, completion = _tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens"))
    cached, total = _tokens(usage.get("cached_tokens")), _tokens(usage.get("total_tokens"))
    failed = record.get("status") == "error"
    recorded = _dict(record.get("cost"))
    cost = _usd(recorded.get("total_cost_usd"))
    # without a cost though billed (the lens summary's rule); or a cost that leaves out its built-in
    # tools' fees (web search...) or answers billed whose usage was lost
    unpriced = cost_left_out(record)
    duration = _number(_dict(record.get("timing")).get("duration_ms"))
    return 1, int(failed), prompt, cached, completion, total, cost, int(unpriced), duration


def _summary_figures(record: dict[str, Any]) -> _Figures:
    # a summary does not say how many of its calls had no price: a run with any counts as one
    summary = _dict(record.get("summary"))
    counts = (
        "total_api_calls",
        "errors",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "total_tokens",
    )
    calls, errors, prompt, cached, completion, total = (_tokens(summary.get(name)) for name in counts)
    cost, unpriced = _usd(summary.get("total_cost_usd")), int(summary.get("cost_complete") is False)
    duration = _number(summary.get("avg_duration_ms")) * calls
    return calls, errors, prompt, cached, completion, total, cost, unpriced, duration


def _nested_sums(records: list[dict[str, Any]]) -> dict[Any, _Sums]:
    """Run id -> the summed figures of the lens runs nested in it, which its own summary counts too:
    gathered before any run is summed, so that summaries may come in any order (an application's table
    gives them back in its own; a nested run whose stream is read after the blocks ends after its parent)."""
    nested: dict[Any, _Sums] = {}
    for record in records:
        if record.get("event") != LENS_EVENT:
            continue
        parent = _dict(record.get("context")).get("parent_lens_run_id")
        if type(parent) is not str:
            continue
        try:
            figures = _summary_figures(record)
        except BadRecord:
            continue  # left out (and counted as rejected) when the runs are summed
        nested.setdefault(parent, _Sums({})).add(False, figures)
    return nested


def _own_figures(figures: _Figures, context: dict[str, Any], nested: dict[Any, _Sums]) -> _Figures:
    """A run's figures without those of the runs nested in it. ``unpriced`` stays: a summary does not
    say whose call it was."""
    run_id = context.get("lens_run_id")
    inner = nested.get(run_id) if type(run_id) is str else None
    if inner is None:
        return figures
    calls, errors, prompt, cached, completion, total, cost, unpriced, duration = figures
    return (
        calls - inner.calls, errors - inner.errors, prompt - inner.prompt_tokens,
        cached - inner.cached_tokens, completion - inner.completion_tokens, total - inner.total_tokens,
        None if cost is None else cost - inner.cost_usd, unpriced, duration - inner.duration_ms,
    )  # fmt: skip


def _run_models(record: dict[str, Any], calls: dict[str, dict[Any, Any]]) -> list[Any] | None:
    """The models of a lens run, or of the run a budget breach or an anomaly is of (the models its
    ``calls`` read so far used: run id -> model), which it counts under; None for a call."""
    event = record.get("event")
    if event == LENS_EVENT:
        used = _dict(record.get("summary")).get("models_used")
        return list(used) if type(used) is list and used else [None]
    if event == ANOMALY_EVENT:  # the run's models_used joined by "+"
        model = _dict(record.get("anomaly")).get("model")
        return model.split("+") if type(model) is str else [None]
    if event == BUDGET_EVENT:
        run_id = _dict(record.get("context")).get("lens_run_id")
        return (list(calls.get(run_id, {}).values()) or [None]) if type(run_id) is str else [None]
    return None


def _keep(
    record: dict[str, Any],
    context: dict[str, Any],
    run: list[Any] | None,
    by: tuple[str, ...],
    where: Mapping[str, frozenset[str]],
    choices: list[list[Any]],
    zone: ZoneInfo | None,
) -> bool:
    """Whether ``record`` passes ``where``; the values of a filtered dimension in ``choices`` are
    narrowed to those that pass (a lens run counts under the models it used that were asked for)."""
    for index, name in enumerate(by):
        if name in where:
            choices[index] = [v for v in choices[index] if as_text(v) in where[name]]
            if not choices[index]:
                return False
    return all(
        any(as_text(v) in wanted for v in _values(record, context, name, run, zone))
        for name, wanted in where.items()
        if name not in by
    )


_HINT_VALUES: Final = 1000  # values of a where key kept to suggest one for a value no record has


def _look_for(
    record: dict[str, Any],
    context: dict[str, Any],
    run: list[Any] | None,
    missing: dict[str, set[str]],
    seen: dict[str, set[str]],
    zone: ZoneInfo | None,
) -> None:
    """Strike off ``missing`` (where key -> the values no record had so far) the values ``record`` has,
    keeping a few of each key's values in ``seen``; a key whose values were all found leaves ``missing``."""
    for name in list(missing):
        for value in _values(record, context, name, run, zone):
            text = as_text(value)
            missing[name].discard(text)
            if len(seen[name]) < _HINT_VALUES:
                seen[name].add(text)
        if not missing[name]:
            del missing[name]


def select(records: Iterable[dict[str, Any]], query: Query) -> Iterator[dict[str, Any]]:
    """The records that pass ``query``'s ``where``, ``since`` and ``until`` (its ``by`` aside), as
    :func:`aggregate` judges them, one at a time (a log's calls are never held together); a ``where``
    dimension no record has is a :class:`QueryError` once they are all read."""
    since, until = _stamp_bound(query.since), _stamp_bound(query.until)
    dated = since is not None or until is not None
    present: set[str] = set()
    zone = query.zone
    for record in records:
        context = _dict(record.get("context"))
        present.update(record)
        present.update(context)
        if dated and not _in_range(record, since, until):
            continue
        if _keep(record, context, _run_models(record, {}), (), query.where, [], zone):
            yield record
    if present:
        _check_known(query, present)


def aggregate(records: Iterable[dict[str, Any]], query: Query, *, from_summaries: bool = False) -> CostReport:
    """Sum ``records`` (call records and lens summaries) by ``query``. A record whose numbers are not a
    record's is left out; from a :class:`LogReader`, its line counts as malformed in the reader's stats."""
    reader = records if isinstance(records, LogReader) else None
    started = time.perf_counter()
    by, where, zone = query.by, query.where, query.zone
    since, until = _stamp_bound(query.since), _stamp_bound(query.until)
    dated = since is not None or until is not None
    groups: dict[tuple[Any, ...], _Sums] = {}
    # a call counts in one group; a lens run may count under several models: the total counts it once
    total = _Sums({})
    filtered = rejected = 0
    # the context keys and fields seen, to name the valid choices for a dimension no record has
    present: set[str] | None = set() if any(n not in _BUILT_IN for n in (*by, *where)) else None
    # from summaries: a call counts under its innermost run only, as with call records
    nested: dict[Any, _Sums] = {}
    if from_summaries:
        records = list(records)
        nested = _nested_sums(records)
    # from calls: lens run id -> the groups its kept calls count in, until its summary is read; a run
    # left here was cut short (its summary never came). Ids of runs summarised before all of their
    # calls were read (a rotated log, read newest first: logrotate may rename the file mid-run), so that
    # the rest open no run: a run's calls read so far are its own plus its nested runs' summaries' (its
    # summary counts those too). A call a child forked inside a run made (its id's process is not the
    # run's) counts in no run, so opens none.
    open_runs: dict[str, set[tuple[Any, ...]]] = {}
    calls_read: dict[str, int] = {}
    summarised: set[str] = set()
    missing = {name: set(wanted) for name, wanted in where.items()}  # where values no record has yet
    # a background response's start kept -> the sums it counts in, until a record of its end is read (its
    # cost); one never ended in the records read counts as unpriced there (docs/PRICING.md)
    waiting: dict[str, list[_Sums]] = {}
    seen: dict[str, set[str]] = {name: set() for name in where}
    # by or where model: lens run id -> the models its calls read so far used, until its summary: those a
    # budget breach of the run (which names none) counts under
    models_of: dict[str, dict[Any, Any]] | None = {} if "model" in (*by, *where) else None
    for record in records:
        event = record.get("event")
        lens_run = event == LENS_EVENT
        # a budget breach or an anomaly: counted in its groups, no figures
        alert = event if event in (BUDGET_EVENT, ANOMALY_EVENT) else None
        if not (lens_run or alert) and event != CALL_EVENT:
            continue
        context = _dict(record.get("context"))
        if present is not None:
            present.update(record)
            present.update(context)
        if models_of is not None and type(context.get("lens_run_id")) is str and not alert:
            if lens_run:
                models_of.pop(context["lens_run_id"], None)
            else:
                model = _values(record, context, "model", None, zone)[0]
                models_of.setdefault(context["lens_run_id"], {})[_hashable(model)] = model
        run = None if event == CALL_EVENT else _run_models(record, models_of or {})
        run_id, run_groups = None if from_summaries or alert else context.get("lens_run_id"), None
        if type(run_id) is str and not lens_run:
            run_process, call_process = process_of(run_id), process_of(record.get("call_id"))
            forked = bool(run_process and call_process) and run_process != call_process
            if not forked and run_id not in summarised:
                run_groups = open_runs.setdefault(run_id, set())
                calls_read[run_id] = calls_read.get(run_id, 0) + 1
        elif type(run_id) is str:
            open_runs.pop(run_id, None)
            run_calls = _dict(record.get("summary")).get("total_api_calls")
            if type(run_calls) is int:  # the rest of its calls come later: a whole run leaves no id behind
                if calls_read.pop(run_id, 0) < run_calls:
                    summarised.add(run_id)
                parent = context.get("parent_lens_run_id")
                if type(parent) is str and parent not in summarised:
                    calls_read[parent] = calls_read.get(parent, 0) + run_calls
        figures = None
        if lens_run == from_summaries and not alert:
            try:
                figures = _summary_figures(record) if lens_run else _call_figures(record)
            except BadRecord as exc:
                rejected += 1
                if reader is not None:
                    reader.reject(f"{event} record with a bad {str(exc)[:80]}")
                continue
            if lens_run:  # a nested run filtered out still leaves its parent's sums (_nested_sums)
                figures = _own_figures(figures, context, nested)
        if missing:
            _look_for(record, context, run, missing, seen, zone)
        if dated and not _in_range(record, since, until):
            filtered += 1
            continue
        choices = [_values(record, context, name, run, zone) for name in by]
        if where and not _keep(record, context, run, by, where, choices, zone):
            filtered += 1
            continue
        total.add(lens_run, figures, alert)
        counted = [total]
        for combo in itertools.product(*choices):
            group_key = tuple(map(_hashable, combo))
            sums = groups.get(group_key)
            if sums is None:
                sums = groups[group_key] = _Sums(dict(zip(by, combo, strict=True)))
            sums.add(lens_run, figures, alert)
            counted.append(sums)
            if run_groups is not None:
                run_groups.add(group_key)
        response_id = _dict(record.get("response")).get("id") if event == CALL_EVENT else None
        if type(response_id) is str and record.get("operation") == "responses":
            if cost_pending(record):
                waiting[response_id] = counted
            else:
                waiting.pop(response_id, None)
    for counted in waiting.values():
        for sums in counted:
            sums.unpriced_calls += 1
    for run_groups in open_runs.values():  # each cut-short run counts once in the total
        for sums in [total, *map(groups.__getitem__, run_groups)] if run_groups else ():
            sums.lens_runs += 1
            sums.cut_short_runs += 1
    if present:  # None, or empty when no call or lens summary was read
        _check_known(query, present)
    rows = [sums.row() for sums in groups.values()]
    rows.sort(key=lambda row: tuple(as_text(value) for value in row.key.values()))
    if not all(name in TIME_DIMENSIONS for name in by):  # by time: in time order; else costliest first
        rows.sort(key=lambda row: (-row.cost_usd, -row.calls, -row.lens_runs))
        times = [name for name in by if name in TIME_DIMENSIONS]  # user_id,day: day by day, costliest first
        rows.sort(key=lambda row: tuple(as_text(row.key[name]) for name in times))
    seconds = time.perf_counter() - started
    inputs = () if reader is None else tuple(reader.stats)
    unmatched = tuple(
        (name, value, next(iter(difflib.get_close_matches(value, seen[name], n=1)), None))
        for name in missing
        for value in sorted(missing[name])
    )
    return CostReport(query, tuple(rows), total.row(), inputs, filtered, rejected, seconds, unmatched)
