"""A cost report as a text table, a Markdown table (:mod:`llm_ledger._table`) or strict JSON."""

from __future__ import annotations

import json
import math
from typing import Any, Final

from .._errors import ConfigError
from .._table import NO_FIGURE, notes, table, usd
from ..loading import printable
from ._aggregate import CostReport, CostRow, as_text

__all__ = ["FORMATS", "render", "strict_json"]

FORMATS: Final = ("text", "json", "markdown")
_HEADERS: Final = (
    "lens runs", "calls", "errors", "prompt tokens", "completion tokens", "total tokens", "cost (USD)",
    "avg ms",
)  # fmt: skip


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinity in ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    if isinstance(value, list | tuple):
        value = dict(enumerate(value))
    for key, item in value.items() if isinstance(value, dict) else ():
        if (found := _non_finite(item, f"{where}.{key}" if where else str(key))) is not None:
            return found
    return None


def strict_json(value: Any, *, indent: int | None = 2) -> str:
    """``value`` as standard JSON; :class:`ConfigError` names a NaN or infinite number instead. Lone
    surrogates (valid in a JSON escape, which the ledger writes for a context value holding one) are
    written as escapes."""
    try:
        separators = (",", ":") if indent is None else None
        text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=False, allow_nan=False)
    except ValueError:
        where = _non_finite(value)
        raise ConfigError(
            f"cannot write {where} as JSON: it is {'NaN' if where is None else 'not a finite number'} "
            "(standard JSON has no NaN or Infinity); the input holds a figure no record of the ledger has"
        ) from None
    return printable(text)


def _label(value: Any) -> str:
    return "(none)" if value is None else printable(as_text(value))


def _cells(row: CostRow) -> list[str]:
    avg = row.avg_duration_ms
    return [
        f"{row.lens_runs:,}",
        f"{row.calls:,}",
        f"{row.errors:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        f"{row.total_tokens:,}",
        usd(row.cost_usd, complete=row.cost_complete),
        NO_FIGURE if avg is None else f"{avg:,.0f}",
    ]


def _footer(report: CostReport) -> list[str]:
    total = report.total
    names = [stats.name for stats in report.inputs]
    source = names[0] if len(names) == 1 else f"{len(names)} inputs"
    filtered = f", {report.filtered_out:,} left out by the filters" if report.filtered_out else ""
    counts = f"{total.calls:,} calls, {total.lens_runs:,} lens runs"
    if not names:  # records handed over, not read from logs
        rejected = f", {report.rejected:,} with unusable numbers left out" if report.rejected else ""
        lines = [f"{counts}{filtered}{rejected}"]
    else:
        lines = [
            f"{printable(source)}: {report.lines:,} lines, {counts}, {report.malformed:,} malformed, "
            f"{report.skipped:,} skipped{filtered}, read in {report.seconds:.2f} s"
        ]
    if total.unpriced_calls:
        calls = "call has" if total.unpriced_calls == 1 else "calls have"
        which = "" if "model" in report.query.by else "; --by model shows which models"
        lines.append(
            f"* {total.unpriced_calls:,} billed {calls} no known cost (no usage reported, as by a stream "
            f"stopped early, or a model the price table does not know): their cost is not "
            f"included{which}; costs are those recorded "
            "when each call was made, so `llm-ledger reprice LOG --price-file F` prices them"
        )
    return lines


def render(report: CostReport, fmt: str = "text") -> str:
    """The report as ``text``, ``markdown`` or ``json``."""
    if fmt == "json":
        return strict_json(report.to_json()) + "\n"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    by = report.query.by
    headers = [*by, *_HEADERS]
    rows = [[*(_label(row.key[name]) for name in by), *_cells(row)] for row in report.rows]
    total = [["total", *[""] * (len(by) - 1), *_cells(report.total)]]
    lines = table(fmt, headers, rows, total=total, right=range(len(by), len(headers)))
    return printable("\n".join([*lines, "", *notes(_footer(report), fmt)]) + "\n")
