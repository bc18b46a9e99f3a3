"""``llm-ledger report LOG.jsonl``: calls, errors, tokens, cost and latency per lens, model, source...

One streaming pass over the file in fixed-size chunks with bounded memory (one small row per group
key), fast enough for logs of many gigabytes:

* **fast path**: the key order of a record is fixed by :mod:`llm_ledger._records`, so the fields a
  report needs are read with two short anchored regular expressions and one ``bytes.find``
  (no JSON parsing), and their numbers are converted in bulk once per chunk;
* **slow path**: a line the fast path does not recognise (another writer's key order, escaped
  characters in a key, nested context values) is parsed as JSON (orjson) and read by key;
* a line that is not a JSON object is counted as malformed and reported with its line number;
  JSON objects of other events (plain log messages) are counted as skipped.

Calls are grouped by the model they *asked* for (``request.model``, else the served model).
Errors are calls with status ``error`` (as in the lens summary). Lens runs come from the
``lens_summary`` records; by model, a run counts once under each model it used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import operator
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

import orjson

from ._errors import ConfigError
from ._loading import printable
from ._records import CALL_EVENT, LENS_EVENT
from ._table import markdown_table, text_table

__all__ = ["FORMATS", "GROUPS", "Report", "Row", "register", "render", "summarise"]

GROUPS: Final = ("lens", "model", "source_id", "service", "day")
FORMATS: Final = ("text", "json", "markdown")
CHUNK_BYTES: Final = 128 << 10  # small enough for a chunk and its slices to stay in the CPU cache
# calls whose numbers are converted together: enough for every group of a many-valued key (source_id)
# to have several calls in a batch, few enough for their tails (~250 bytes each) to stay small
FLUSH_LINES: Final = 8192
PARALLEL_MIN_BYTES: Final = 256 << 20  # below this, starting processes costs more than it saves
PROGRESS_INTERVAL_S: Final = 0.5
_MAX_MALFORMED_SHOWN: Final = 5
_COST_DIGITS: Final = 9  # decimals of a cost in JSON output
_CONTEXT_KEY: Final = {"lens": "lens_key", "source_id": "source_id", "service": "service"}


_loads: Callable[[bytes], Any] = orjson.loads

# -- the fast path ------------------------------------------------------------------------------
# Anchors in the fixed key order of _records.call_record / lens_record, as the JSONL writer spells
# them (orjson: no space after "," and ":"; lines in another spelling take the slow path). A
# successful call ends with `"error":null}` (no captured content follows it), so everything after
# its usage anchor is scalars and timestamps: the last usage anchor of the line is the record's own,
# and the rest of the line up to its error member splits on "," into exactly _TAIL_PARTS parts.
_TAIL_END: Final = b',"error":null}'
_NULL_ERROR: Final = _TAIL_END[1:]
_LENS_EVENT: Final = b'"event":"lens_summary",'
_CONTEXT_OPEN: Final = b'"context":{'
_CONTEXT: Final = _CONTEXT_OPEN + b'"lens_key":'
_LENS_CONTEXT: Final = _LENS_EVENT + _CONTEXT
_SOURCE_ID: Final = b',"source_id":'
_SERVICE: Final = b',"service":'
_NEXT_KEY: Final = b',"'
_REQUEST: Final = b'},"request":{"model":'
_TEMPERATURE: Final = b',"temperature":'
_SUMMARY: Final = b'},"summary":{'
_USAGE: Final = b'"usage":{"prompt_tokens":'
_ERROR_OBJECT: Final = b',"error":{"type":'
_FAILED: Final = b'"status":"error","operation":"'
_CONTENT: Final = b'"content":'
_MODELS_USED: Final = b'"models_used":['
_TIMESTAMP: Final = b'{"timestamp":"'
_SEP: Final = b","
_L_CONTEXT: Final = len(_CONTEXT)
_L_USAGE: Final = len(_USAGE)
_L_LENS_EVENT: Final = len(_LENS_EVENT)
_L_TAIL_END: Final = len(_TAIL_END)
_L_CONTEXT_OPEN: Final = len(_CONTEXT_OPEN)
_L_SOURCE_ID: Final = len(_SOURCE_ID)
_L_SERVICE: Final = len(_SERVICE)
_L_REQUEST: Final = len(_REQUEST)
_L_TIMESTAMP: Final = len(_TIMESTAMP)
_L_DAY: Final = _L_TIMESTAMP + len("2025-01-01")
# calls converted together, ~10 kB a column: bytes.replace searches afresh after each match, and in
# a text of 30,000 bytes or more CPython 3.11 searches with the two-way algorithm, which analyses the
# label again each time (much slower than the simple search on a short text)
_TAILS_PER_TEXT: Final = 512
_MODELS_CACHED: Final = 1024  # distinct models_used lists remembered (their group keys)
_SCALAR_START: Final = b'"n-0123456789tf'  # first byte of a JSON string, null, number or boolean
_TAIL_PARTS: Final = 16  # cost holds source, matched_by and computed_usd after its total
# part of the tail -> the key text before its number (prompt_tokens' is cut off with the anchor)
_TAIL_COLUMNS: Final = (
    (0, b""),
    (1, b'"completion_tokens":'),
    (2, b'"total_tokens":'),
    (5, b'"timing":{"duration_ms":'),
    (11, b'"total_cost_usd":'),
)
_BY_CODE: Final = {"lens": 0, "source_id": 1, "service": 2, "model": 3, "day": 4}
_not_none = partial(operator.is_not, None)


@dataclass(slots=True)
class Row:
    """The totals of one group key."""

    key: Any
    lens_runs: int = 0
    calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # successful calls recorded without a cost (model missing from the price table)
    duration_ms_total: float = 0.0

    @property
    def avg_duration_ms(self) -> float | None:
        return self.duration_ms_total / self.calls if self.calls else None

    def add(self, other: Row) -> None:
        self.lens_runs += other.lens_runs
        self.calls += other.calls
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cost_usd += other.cost_usd
        self.unpriced_calls += other.unpriced_calls
        self.duration_ms_total += other.duration_ms_total

    def to_json(self) -> dict[str, Any]:
        avg = self.avg_duration_ms
        return {
            "key": self.key,
            "lens_runs": self.lens_runs,
            "calls": self.calls,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, _COST_DIGITS),
            "cost_complete": self.unpriced_calls == 0,
            "avg_duration_ms": None if avg is None else round(avg, 3),
        }


@dataclass(slots=True)
class Report:
    """What one pass over a log file found."""

    path: str
    group_by: str
    lines: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)  # the first few, 1-based
    skipped: int = 0  # JSON objects that are neither calls nor lens summaries
    seconds: float = 0.0
    rows: dict[bytes, Row] = field(default_factory=dict)

    def sorted_rows(self) -> list[Row]:
        rows = list(self.rows.values())
        if self.group_by == "day":
            return sorted(rows, key=lambda r: _sort_text(r.key))
        # costs as shown (rounded): equal ones tie whatever order their calls were added in
        return sorted(
            rows, key=lambda r: (-round(r.cost_usd, _COST_DIGITS), -r.calls, -r.lens_runs, _sort_text(r.key))
        )

    def total(self) -> Row:
        total = Row("total")
        for row in self.rows.values():
            total.add(row)
        return total

    def to_json(self) -> dict[str, Any]:
        total = self.total()
        return {
            "file": self.path,
            "group_by": self.group_by,
            "lines": self.lines,
            "calls": total.calls,
            "lens_runs": total.lens_runs,
            "malformed_lines": self.malformed,
            "first_malformed_lines": self.malformed_lines,
            "skipped_lines": self.skipped,
            "rows": [row.to_json() for row in self.sorted_rows()],
            "total": {k: v for k, v in total.to_json().items() if k != "key"},
        }


def _sort_text(key: Any) -> str:
    return key if isinstance(key, str) else json.dumps(key, sort_keys=True)


def _key_value(by: str, raw: bytes) -> Any:
    """The display value of a group key kept as raw bytes (a JSON token, or a plain day)."""
    if by == "day":
        return raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _encode(value: Any) -> bytes:
    """A key value as a JSON token (spellings may differ from the file's: keys are merged at the end)."""
    if isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value:
        return b'"' + value.encode("utf-8", "replace") + b'"'  # the common case, without json.dumps
    if value is None:
        return b"null"
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: kept as its JSON escape, as the fast path keeps it
        return json.dumps(value).encode("ascii")


def _loads_escaped(line: bytes) -> Any:
    """A line orjson refused, read again if it holds an escape orjson refuses and JSON allows.

    A lone surrogate escape (``"\\ud800"``) is valid JSON and the ledger writes one for a context value
    holding a lone surrogate; NaN and Infinity stay refused.
    """
    if b"\\u" not in line:
        return None
    try:
        return json.loads(line, parse_constant=_refuse)
    except (ValueError, RecursionError):
        return None


def _refuse(text: str) -> Any:
    raise ValueError(text)


class _Summariser:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.by = report.group_by
        self.code = _BY_CODE[self.by]
        # group key -> [line offset, tail, line offset, tail, ...] of the chunk's successful calls
        self.buckets: dict[bytes, list[bytes]] = {}
        self.failed: dict[bytes, list[bytes]] = {}  # the same for calls with status "error"
        self.lens_runs: dict[bytes, int] = {}
        self.flushed = 0  # the line number of the last flush
        self.models_used: dict[bytes, list[bytes]] = {}  # a models_used list as written -> its keys

    def row(self, key: bytes) -> Row:
        row = self.report.rows.get(key)
        if row is None:
            row = self.report.rows[key] = Row(_key_value(self.by, key))
        return row

    # -- per chunk ----------------------------------------------------------------------------------

    def chunk(self, buf: bytes, number: int) -> int:
        """Count the lines of ``buf`` that end with a newline; they follow line ``number`` of the file.

        Returns the number of the last line counted. Deliberately one flat loop of ``find`` calls
        on the chunk itself: no per-line objects but the tail of a call (lines of a few hundred bytes
        are allocated outside Python's small-object allocator, which costs more than reading them),
        no function calls on the common paths (a call's key is read inline), lines counted by the
        loop (``bytes.count`` reads a chunk slower than the loop's ``find``), and the numbers of calls
        kept as text until :meth:`flush` converts them a column at a time, every
        :data:`FLUSH_LINES` lines.
        """
        find = buf.find
        rfind = buf.rfind
        endswith = buf.endswith
        startswith = buf.startswith
        code = self.code
        buckets = self.buckets
        lens_runs = self.lens_runs
        scalar = _SCALAR_START
        pos = 0
        lines = 0
        while (nl := find(b"\n", pos)) >= 0:
            start = pos
            pos = nl + 1
            lines += 1
            if endswith(_NULL_ERROR, start, nl):  # a successful call without captured content
                c = find(_CONTEXT, start + 100, nl)
                if c > 0 and buf[c + _L_CONTEXT] in scalar:
                    if code == 0:  # lens_key: the first context value
                        e = find(_SOURCE_ID, c, nl)
                        key = buf[c + _L_CONTEXT : e] if e > 0 else b""
                    elif code == 3:  # request.model, as _key_at reads it
                        r = find(_REQUEST, c, nl)
                        e = find(_TEMPERATURE, r, nl)
                        m = r + _L_REQUEST
                        key = (
                            buf[m:e]
                            if r > 0 and e > 0 and buf[m] == 0x22 and find(b"{", c + _L_CONTEXT_OPEN, r) < 0
                            else b""
                        )
                    elif code == 4:  # the day of the timestamp
                        key = (
                            buf[start + _L_TIMESTAMP : start + _L_DAY]
                            if startswith(_TIMESTAMP, start)
                            else b""
                        )
                    elif code == 1:  # source_id: the second context value, after a scalar lens_key
                        s = find(_SOURCE_ID, c, nl) + _L_SOURCE_ID
                        e = find(_SERVICE, s, nl)
                        key = buf[s:e] if s > _L_SOURCE_ID and e > 0 and buf[s] in scalar else b""
                    else:  # service: the third context value, after scalar lens_key and source_id
                        s = find(_SOURCE_ID, c, nl) + _L_SOURCE_ID
                        v = find(_SERVICE, s, nl) + _L_SERVICE
                        e = find(_NEXT_KEY, v, nl)  # the next key, or the `,"request"` after the context
                        scalars = buf[s] in scalar and buf[v] in scalar
                        found = s > _L_SOURCE_ID and v > _L_SERVICE and e > 0 and scalars
                        key = buf[v : e - 1 if buf[e - 1] == 0x7D else e] if found else b""  # 0x7D: "}"
                    u = rfind(_USAGE, c, nl)
                    if key and u > 0:
                        try:
                            buckets[key].append(buf[u + _L_USAGE : nl - _L_TAIL_END])  # without the error
                        except KeyError:
                            buckets[key] = [buf[u + _L_USAGE : nl - _L_TAIL_END]]
                        continue
            else:
                c = find(_LENS_CONTEXT, start + 40, start + 140) + _L_LENS_EVENT
                if c > _L_LENS_EVENT and buf[c + _L_CONTEXT] in scalar:
                    if code == 0:
                        e = find(_SOURCE_ID, c, nl)
                        if e > 0:
                            key = buf[c + _L_CONTEXT : e]
                            lens_runs[key] = lens_runs.get(key, 0) + 1
                            continue
                    elif code == 3:
                        if self._models_used(buf, c, nl):
                            continue
                    else:
                        key = self._key_at(buf, start, c, nl, _SUMMARY)
                        if key:
                            lens_runs[key] = lens_runs.get(key, 0) + 1
                            continue
            if endswith(b"}}", start, nl) and self._failed_call(buf, start, nl):
                continue
            self._slow(buf[start:nl], number + lines)
        number += lines
        if number - self.flushed >= FLUSH_LINES:
            self.flush(number)
        return number

    def _failed_call(self, buf: bytes, start: int, end: int) -> bool:
        """A call with status error and no captured content: its tail goes to ``self.failed``."""
        find = buf.find
        s = find(_FAILED, start + 60, start + 260)
        c = find(_CONTEXT, s, end) if s > 0 else -1
        e = buf.rfind(_ERROR_OBJECT, c, end) if c > 0 else -1
        # the error message is a string (quotes escaped), so an unescaped content key is the member
        if e < 0 or buf[c + _L_CONTEXT] not in _SCALAR_START or find(_CONTENT, e, end) >= 0:
            return False
        if self.code == 0:
            s = find(_SOURCE_ID, c, end)
            key = buf[c + _L_CONTEXT : s] if s > 0 else b""
        else:
            key = self._key_at(buf, start, c, end, _REQUEST)
        u = buf.rfind(_USAGE, c, e)
        if not key or u < 0:
            return False
        self.failed.setdefault(key, []).append(buf[u + _L_USAGE : e])
        return True

    def _key_at(self, buf: bytes, start: int, context: int, end: int, after: bytes) -> bytes:
        """The group key other than lens_key, as raw bytes; b"" when the fast path cannot tell."""
        code = self.code
        if code == 4:
            day = start + len(_TIMESTAMP)
            return buf[day : day + 10] if buf.startswith(_TIMESTAMP, start) else b""
        if code == 3:
            r = buf.find(after, context, end)
            # only with no "{" in the context can no nested object fake the anchor
            if r < 0 or buf.find(b"{", context + len(_CONTEXT_OPEN), r) >= 0:
                return b""
            e = buf.find(_TEMPERATURE, r, end)
            # a call without request.model is grouped by its served model, on the slow path
            m = r + len(after)
            return buf[m:e] if e > 0 and buf[m] == 0x22 else b""  # 0x22: '"'
        return self._context_value(buf, context, end)

    def _context_value(self, buf: bytes, context: int, end: int) -> bytes:
        """source_id or service as its raw JSON token; b"" unless every value before it is a scalar."""
        s = buf.find(_SOURCE_ID, context, end)
        if s < 0 or buf[s + len(_SOURCE_ID)] not in _SCALAR_START:
            return b""
        v = buf.find(_SERVICE, s, end)
        if v < 0:
            return b""
        if self.code == 1:
            return buf[s + len(_SOURCE_ID) : v]
        value = v + len(_SERVICE)
        if buf[value] not in _SCALAR_START:
            return b""
        n = buf.find(_NEXT_KEY, value, end)  # the next key, or the `,"request"` after the context
        if n < 0:
            return b""
        return buf[value : n - 1 if buf[n - 1] == 0x7D else n]  # 0x7D: the "}" closing the context

    def _models_used(self, buf: bytes, start: int, end: int) -> bool:
        """Count a lens run once under each model it used; False if the fast path cannot tell them."""
        begin = buf.find(_MODELS_USED, start, end)
        close = buf.find(b"]", begin, end)
        if begin < 0 or close < 0:
            return False
        raw = buf[begin + len(_MODELS_USED) - 1 : close + 1]
        keys = self.models_used.get(raw)  # a log repeats a few lists: each is parsed once
        if keys is None:
            try:
                models = json.loads(raw)
            except ValueError:
                return False
            if not isinstance(models, list):
                return False
            keys = [_encode(model) for model in models or [None]]
            if len(self.models_used) >= _MODELS_CACHED:
                self.models_used.clear()
            self.models_used[raw] = keys
        lens_runs = self.lens_runs
        for key in keys:
            lens_runs[key] = lens_runs.get(key, 0) + 1
        return True

    def flush(self, number: int) -> None:
        """Fold the calls and lens runs read up to line ``number`` into the rows."""
        for status, buckets in (("ok", self.buckets), ("error", self.failed)):
            if buckets:
                self._fold(list(buckets.items()), status)
                buckets.clear()
        for key, runs in self.lens_runs.items():
            self.row(key).lens_runs += runs
        self.lens_runs.clear()
        self.flushed = number

    def _fold(self, groups: list[tuple[bytes, list[bytes]]], status: str) -> None:
        """Add the calls of ``groups`` (key, tails from the usage on), each column of numbers of all
        of them converted at once; if a tail is odd, group by group, then its group tail by tail."""
        sums = []  # per group: key, calls, tokens, duration, cost, priced calls
        try:
            prompt, completion, total, duration, cost = _columns([tails for _, tails in groups])
            unpriced = None in cost
            start = 0
            for key, tails in groups:  # the tails of a group are consecutive in the columns
                end = start + len(tails)
                priced = list(filter(_not_none, cost[start:end])) if unpriced else cost[start:end]
                tokens = (sum(prompt[start:end]), sum(completion[start:end]), sum(total[start:end]))
                sums.append(
                    (key, end - start, tokens, math.fsum(duration[start:end]), math.fsum(priced), len(priced))
                )
                start = end
        except (ValueError, TypeError, OverflowError):
            if len(groups) > 1:
                for group in groups:
                    self._fold([group], status)
            else:
                key, tails = groups[0]
                for tail in tails:
                    self._tail(key, tail, status)
            return
        for key, calls, tokens, duration_ms, cost_usd, priced_calls in sums:
            row = self.row(key)
            row.calls += calls
            row.prompt_tokens += tokens[0]
            row.completion_tokens += tokens[1]
            row.total_tokens += tokens[2]
            row.duration_ms_total += duration_ms
            row.cost_usd += cost_usd
            if status == "ok":
                row.unpriced_calls += calls - priced_calls
            else:
                row.errors += calls

    def _tail(self, key: bytes, tail: bytes, status: str) -> None:
        """One call whose tail the bulk conversion could not read."""
        try:
            record = _loads(b"{" + _USAGE + tail + b"}")
        except ValueError:
            record = None
        if isinstance(record, dict):
            self._add_call(self.row(key), {**record, "status": status})
        else:  # the line ended like a record but is not JSON; its number is no longer known
            self.report.malformed += 1

    # -- the slow path ------------------------------------------------------------------------------

    def _slow(self, line: bytes, number: int) -> None:
        """Read ``line`` (line ``number`` of the file, counted from 1) as JSON."""
        if not line.strip():
            return
        try:
            record = _loads(line)
        except ValueError:
            record = _loads_escaped(line)
        if not isinstance(record, dict):
            self._malformed(number)
            return
        event = record.get("event")
        if event not in (CALL_EVENT, LENS_EVENT):
            self.report.skipped += 1
            return
        context = _dict(record.get("context"))
        if event == LENS_EVENT:
            if self.by == "model":
                models = _dict(record.get("summary")).get("models_used")
                keys = [_encode(m) for m in models] if isinstance(models, list) and models else [b"null"]
            else:
                keys = [self._key(record, context)]
            for key in keys:
                self.lens_runs[key] = self.lens_runs.get(key, 0) + 1
            return
        self._add_call(self.row(self._key(record, context)), record)

    @staticmethod
    def _add_call(row: Row, record: dict[str, Any]) -> None:
        usage = _dict(record.get("usage"))
        cost = _float(_dict(record.get("cost")).get("total_cost_usd"))
        row.calls += 1
        row.prompt_tokens += _int(usage.get("prompt_tokens"))
        row.completion_tokens += _int(usage.get("completion_tokens"))
        row.total_tokens += _int(usage.get("total_tokens"))
        row.duration_ms_total += _float(_dict(record.get("timing")).get("duration_ms")) or 0.0
        status = record.get("status")
        if status == "error":
            row.errors += 1
        if cost is not None:
            row.cost_usd += cost
        elif status == "ok":
            row.unpriced_calls += 1

    def _key(self, record: dict[str, Any], context: dict[str, Any]) -> bytes:
        by = self.by
        if by == "day":
            stamp = record.get("timestamp")
            return stamp[:10].encode("utf-8", "replace") if isinstance(stamp, str) else b"null"
        if by == "model":
            model = _dict(record.get("request")).get("model")
            if model is None:
                model = _dict(record.get("response")).get("model")
            return _encode(model)
        return _encode(context.get(_CONTEXT_KEY[by]))

    def _malformed(self, number: int) -> None:
        self.report.malformed += 1
        if len(self.report.malformed_lines) < _MAX_MALFORMED_SHOWN:
            self.report.malformed_lines.append(number)


def _columns(groups: list[list[bytes]]) -> list[list[Any]]:
    """The prompt, completion and total tokens (int; unknown: 0), duration (ms) and cost (USD, None
    when unpriced) of the calls whose tails are ``groups``, in order, read a column at a time.

    Raises ValueError or TypeError when a tail is not a call's as the ledger writes it.
    """
    tails = list(itertools.chain.from_iterable(groups))
    columns: list[list[Any]] = [[] for _ in _TAIL_COLUMNS]
    for first in range(0, len(tails), _TAILS_PER_TEXT):
        some = tails[first : first + _TAILS_PER_TEXT]
        parts = _SEP.join(some).split(_SEP)
        if len(parts) != _TAIL_PARTS * len(some):
            raise ValueError("unexpected tail")
        for column, (index, label) in zip(columns, _TAIL_COLUMNS, strict=True):
            text = b",".join(parts[index::_TAIL_PARTS])
            if label:
                text = text.replace(label, b"")
            if index == 11:
                text = text.replace(b"}", b"")
            values = _loads(b"[" + text + b"]")
            if len(values) != len(some):
                raise ValueError("unexpected numbers")
            column += values
    for index in range(3):  # tokens
        if None in columns[index]:
            columns[index] = [0 if tokens is None else tokens for tokens in columns[index]]
        if type(sum(columns[index])) is not int:
            raise ValueError("unexpected tokens")
    return columns


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _merge_equal_keys(report: Report) -> None:
    """One row per key value: the fast path keeps raw JSON tokens, which can spell a value two ways."""
    merged: dict[bytes, Row] = {}
    for row in report.rows.values():
        canonical = json.dumps(row.key, sort_keys=True).encode()  # JSON objects are unordered
        if canonical in merged:
            merged[canonical].add(row)
        else:
            merged[canonical] = row
    report.rows = merged


def _scan(path: Path, by: str, start: int, end: int, progress: Callable[[int], None] | None = None) -> Report:
    """Summarise the lines in bytes ``[start, end)`` of ``path`` (both on line boundaries)."""
    report = Report(str(path), by)
    summariser = _Summariser(report)
    with path.open("rb") as file:
        file.seek(start)
        left = end - start
        number = 0
        carry = b""
        while left > 0 and (chunk := file.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            buf = carry + chunk if carry else chunk
            number = summariser.chunk(buf, number)  # every line that ends in this chunk
            carry = buf[buf.rfind(b"\n") + 1 :]
            if progress is not None:
                progress(end - start - left)
        if carry:  # a last line without a newline
            number = summariser.chunk(carry + b"\n", number)
    summariser.flush(number)
    report.lines = number
    return report


def _line_start(file: BinaryIO, offset: int) -> int:
    """The offset of the first line starting at or after ``offset``."""
    if offset == 0:
        return 0
    file.seek(offset - 1)
    while block := file.read(1 << 16):
        newline = block.find(b"\n")
        if newline >= 0:
            return file.tell() - len(block) + newline + 1
    return file.tell()


def _worker(path: str, by: str, start: int, end: int, done: Any, slot: int, conn: Any) -> None:
    """Summarise one byte range in a child process; send the report (or the error) back."""

    def progress(read: int) -> None:
        done[slot] = read

    try:
        conn.send(_scan(Path(path), by, start, end, progress))
    except BaseException as exc:  # the parent turns it into a ConfigError
        conn.send(exc if isinstance(exc, OSError) else OSError(f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _parallel(
    path: Path, by: str, size: int, jobs: int, progress: Callable[[int, int], None] | None
) -> Report:
    """Split the file at line boundaries, summarise the parts in ``jobs`` processes, add them up."""
    with path.open("rb") as file:
        cuts = sorted({_line_start(file, size * i // jobs) for i in range(jobs)} | {size})
    ctx = multiprocessing.get_context("spawn")  # no fork: safe whatever threads the caller runs
    done = ctx.Array("q", len(cuts) - 1, lock=False)
    workers = []
    for slot, (start, end) in enumerate(itertools.pairwise(cuts)):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_worker,
            args=(str(path), by, start, end, done, slot, send),
            name=f"llm-ledger-report-{slot}",
        )
        process.start()
        send.close()
        workers.append((process, receive))
    parts: list[Report | BaseException] = []
    try:
        for process, receive in workers:
            while not receive.poll(PROGRESS_INTERVAL_S / 2):
                if progress is not None:
                    progress(sum(done), size)
                if not process.is_alive() and not receive.poll():
                    raise OSError(f"a report worker exited with status {process.exitcode}")
            try:
                parts.append(receive.recv())
            except EOFError:  # the worker died without a word (killed, or failed to start)
                process.join()
                raise OSError(f"a report worker exited with status {process.exitcode}") from None
            process.join()
    finally:
        for process, _ in workers:
            if process.is_alive():
                process.terminate()
                process.join()
    report = Report(str(path), by)
    for part in parts:
        if isinstance(part, BaseException):
            raise part
        for number in part.malformed_lines:  # worker line numbers count from its own first line
            if len(report.malformed_lines) < _MAX_MALFORMED_SHOWN:
                report.malformed_lines.append(report.lines + number)
        report.lines += part.lines
        report.malformed += part.malformed
        report.skipped += part.skipped
        for key, row in part.rows.items():
            if key in report.rows:
                report.rows[key].add(row)
            else:
                report.rows[key] = row
    return report


def summarise(
    path: str | os.PathLike[str],
    by: str = "lens",
    *,
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
) -> Report:
    """Summarise a JSONL log in one pass; ``progress(bytes_read, total_bytes)`` is called as it goes.

    With ``jobs`` > 1 a file of at least :data:`PARALLEL_MIN_BYTES` is cut at line boundaries and
    its parts are read by that many processes, started with ``spawn`` (so, as with any
    multiprocessing code, call it from an ``if __name__ == "__main__":`` block). Raises
    :class:`ConfigError` when the file cannot be read.
    """
    if by not in GROUPS:
        raise ConfigError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs!r}")
    path = Path(path)
    started = time.perf_counter()
    try:
        info = path.stat()
        size = info.st_size
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device has no size to cut or to read up to
            raise ConfigError(
                f"{str(path)!r} is not a regular file; save the log to a file first (the report reads it "
                "by its size, in parallel)"
            )
        if jobs > 1 and size >= PARALLEL_MIN_BYTES:
            report = _parallel(path, by, size, jobs, progress)
        else:
            report = _scan(path, by, 0, size, None if progress is None else lambda read: progress(read, size))
    except FileNotFoundError:
        raise ConfigError(
            f"{str(path)!r}: no such file; the ledger writes <log_dir>/llm_calls.jsonl "
            "(log_dir is 'logs' unless configure(log_dir=...) or LLM_LEDGER_LOG_DIR says otherwise)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{str(path)!r} is a directory; pass the llm_calls.jsonl file inside it") from None
    except OSError as exc:
        raise ConfigError(f"{str(path)!r}: cannot read: {exc.strerror or exc}") from None
    _merge_equal_keys(report)
    report.seconds = time.perf_counter() - started
    return report


# -- output -------------------------------------------------------------------------------------

_HEADERS: Final = (
    "lens runs",
    "calls",
    "errors",
    "prompt tokens",
    "completion tokens",
    "total tokens",
    "cost (USD)",
    "avg ms",
)


def _label(key: Any) -> str:
    if key is None:
        return "(none)"
    return printable(key if isinstance(key, str) else json.dumps(key, ensure_ascii=False))


def _cells(row: Row) -> list[str]:
    avg = row.avg_duration_ms
    cost = f"${row.cost_usd:,.6f}" + ("" if row.unpriced_calls == 0 else "+")
    return [
        f"{row.lens_runs:,}",
        f"{row.calls:,}",
        f"{row.errors:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        f"{row.total_tokens:,}",
        cost,
        "-" if avg is None else f"{avg:,.0f}",
    ]


def _footer(report: Report) -> list[str]:
    total = report.total()
    lines = [
        f"{report.path}: {report.lines:,} lines, {total.calls:,} calls, {total.lens_runs:,} lens runs, "
        f"{report.malformed:,} malformed, {report.skipped:,} skipped, read in {report.seconds:.2f} s"
    ]
    if total.unpriced_calls:
        lines.append(
            f"+ {total.unpriced_calls:,} successful calls have no price (model unknown to the price table): "
            "their cost is not included"
        )
    return lines


def _tables(report: Report) -> tuple[list[str], list[list[str]], list[list[str]]]:
    rows = [[_label(row.key), *_cells(row)] for row in report.sorted_rows()]
    return [report.group_by, *_HEADERS], rows, [["total", *_cells(report.total())]]


def _text(report: Report) -> str:
    headers, rows, total = _tables(report)
    return "\n".join([*text_table(headers, rows, total=total), "", *_footer(report)]) + "\n"


def _markdown(report: Report) -> str:
    headers, rows, total = _tables(report)
    return "\n".join([*markdown_table(headers, rows, total=total), "", *_footer(report)]) + "\n"


def render(report: Report, fmt: str = "text") -> str:
    """The report as a text table, a Markdown table or JSON (strict: no NaN or Infinity)."""
    if fmt == "json":
        return printable(json.dumps(report.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    if fmt == "markdown":
        return printable(_markdown(report))
    if fmt == "text":
        return printable(_text(report))
    raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# -- command line -------------------------------------------------------------------------------


class _Progress:
    """Percent of bytes read, rewritten in place on stderr at most every half second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        percent = 100.0 * done / total if total else 100.0
        self.stream.write(f"\rllm-ledger report: {percent:5.1f}% of {total / 1e6:,.0f} MB")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def register(subparsers: Any, summary: str) -> None:
    """Add the ``report`` subcommand to the ``llm-ledger`` parser."""
    parser = subparsers.add_parser(
        "report",
        help=summary,
        description=(
            "Summarise an llm-ledger JSONL log in one streaming pass: per group, the lens runs, calls, "
            "errors, prompt/completion/total tokens, cost and average call duration."
        ),
    )
    parser.add_argument("path", help="the log file, e.g. logs/llm_calls.jsonl")
    parser.add_argument(
        "--by", choices=GROUPS, default="lens", help="group rows by this field (default: %(default)s)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="text", dest="fmt", help="output format (default: %(default)s)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="processes reading a file of 256 MiB or more in parallel (default: the CPUs, at most 8)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``llm-ledger report``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    show = args.progress if args.progress is not None else err.isatty()
    progress = _Progress(err) if show else None
    try:
        jobs = args.jobs if args.jobs is not None else min(os.cpu_count() or 1, 8)
        report = summarise(args.path, args.by, progress=progress, jobs=jobs)
    finally:
        if progress is not None:
            progress.clear()
    out.write(render(report, args.fmt))
    if report.malformed:
        where = ", ".join(map(str, report.malformed_lines))
        more = ", ..." if report.malformed > len(report.malformed_lines) else ""
        err.write(
            f"llm-ledger report: skipped {report.malformed:,} malformed line(s) (line {where}{more}); "
            "the other lines are counted\n"
        )
    return 0
