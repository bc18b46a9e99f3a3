"""The output of ``llm-ledger report``, ``reprice`` and ``anomalies``: text and Markdown tables
(:mod:`llm_ledger._table`) or strict JSON. The diff's, sized for a PR comment, is :mod:`._render_diff`."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Final

from .._errors import ConfigError
from .._records import AnomalyRecord
from .._table import NO_FIGURE, code, notes, percent, table, text_table, usd
from ..loading import as_typed, printable
from ._aggregate import CostReport, CostRow, as_text
from ._usage import NO_LENS, TOTAL_ONLY

if TYPE_CHECKING:
    from ._reprice import Reprice, Row

__all__ = [
    "ANOMALY_FORMATS", "FORMATS", "REPRICE_FORMATS", "check_format", "render", "render_anomalies",
    "render_reprice", "strict_json",
]  # fmt: skip

FORMATS: Final = ("text", "json", "markdown")
REPRICE_FORMATS: Final = ("text", "markdown", "json")
ANOMALY_FORMATS: Final = ("text", "json")
_HEADERS: Final = ("lens runs", "calls", "errors", "prompt tokens")
_CACHED_HEADER: Final = "cached tokens"  # of the prompt tokens: the provider's prompt cache served them
_LATER_HEADERS: Final = ("completion tokens", "total tokens", "cost (USD)", "avg ms")
_ALERT_HEADERS: Final = ("over budget", "anomalies")  # budget_exceeded and lens_anomaly records


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


def _label(value: Any, fmt: str) -> str:
    """A value a row is named by; in Markdown a code span: the application's text (a user id, a lens
    key) is shown in a PR comment, never read as Markdown, HTML or an @mention."""
    if value is None:
        return "(none)"
    text = printable(as_text(value))
    return code(text) if fmt == "markdown" else text


def _shown(value: Any, clash: set[str]) -> Any:
    return json.dumps(value, ensure_ascii=False) if type(value) is str and value in clash else value


def _cells(row: CostRow, cached: bool, alerts: bool) -> list[str]:
    avg = row.avg_duration_ms
    counts = [f"{row.over_budget:,}", f"{row.anomalies:,}"] if alerts else []
    return [
        f"{row.lens_runs:,}" + f" ({row.cut_short_runs:,} cut short)" * bool(row.cut_short_runs),
        f"{row.calls:,}",
        f"{row.errors:,}",
        f"{row.prompt_tokens:,}",
        *[f"{row.cached_tokens:,}"] * cached,
        f"{row.completion_tokens:,}",
        f"{row.total_tokens:,}",
        usd(row.cost_usd, complete=row.cost_complete),
        NO_FIGURE if avg is None else f"{avg:,.0f}",
        *counts,
    ]


def _count(number: int, what: str) -> str:
    return f"{number:,} {what}{'s' * (number != 1)}"


def _footer(report: CostReport, fmt: str) -> list[str]:
    total = report.total
    names = [stats.name for stats in report.inputs]
    source = names[0] if len(names) == 1 else f"{len(names)} inputs"
    filtered = f", {report.filtered_out:,} left out by the filters" if report.filtered_out else ""
    counts = f"{_count(total.calls, 'call')}, {_count(total.lens_runs, 'lens run')}"
    if not names:  # records handed over, not read from logs
        rejected = f", {report.rejected:,} with unusable numbers left out" if report.rejected else ""
        lines = [f"{counts}{filtered}{rejected}"]
    else:
        lines = [
            f"{printable(source)}: {report.lines:,} lines, {counts}, {report.malformed:,} malformed, "
            f"{report.skipped:,} skipped{filtered}, read in {report.seconds:.2f} s"
        ]
    for key, value, close in report.unmatched:
        hint = "" if close is None else f" (did you mean {_label(close, fmt)}?)"
        where = _label(as_typed(f"{key}={value}"), fmt)  # as typed, unless a key or a terminal escape
        lines.append(f"--where {where}: no call or lens run has this value{hint}")
    if cut := total.cut_short_runs:
        lines.append(
            f"cut short: {_count(cut, 'lens run')} whose lens_summary never came (the process was killed, "
            "or the log ends before it): counted from the calls the logs hold"
        )
    if total.unpriced_calls:
        calls = "call has" if total.unpriced_calls == 1 else "calls have"
        which = "" if "model" in report.query.by else "; --by model shows which models"
        lines.append(
            f"* {total.unpriced_calls:,} billed {calls} no known cost (no usage reported, as by a stream "
            f"stopped early; {TOTAL_ONLY}; an image or audio call billed in other units than tokens; a "
            "model the price table does not know; the fee of a built-in tool such as web search; or a "
            f"background response whose end is in no log read): their cost is not included{which}; costs "
            "are those recorded when each call was made, so `llm-ledger reprice LOG --price-file F` prices "
            "those with tokens, and tools' fees F's tool_fees gives"
        )
    return lines


def check_format(fmt: str, formats: tuple[str, ...]) -> None:
    """Refuse a format a renderer does not write, in one wording for every renderer."""
    if fmt not in formats:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(formats)}")


def render(report: CostReport, fmt: str = "text") -> str:
    """The report as ``text``, ``markdown`` or ``json``."""
    check_format(fmt, FORMATS)
    if fmt == "json":
        return strict_json(report.to_json()) + "\n"
    by = report.query.by
    # columns only when there are some
    cached, alerts = (
        bool(report.total.cached_tokens),
        bool(report.total.over_budget or report.total.anomalies),
    )
    headers = [*by, *_HEADERS, *[_CACHED_HEADER] * cached, *_LATER_HEADERS, *_ALERT_HEADERS * alerts]
    # 42 and "42" are two rows (the application gave both); a string a number's row would share a label
    # with is shown as JSON ("42"), so the two read apart
    clash = {name: {as_text(v) for row in report.rows if type(v := row.key[name]) is not str} for name in by}
    rows = [
        [*(_label(_shown(row.key[name], clash[name]), fmt) for name in by), *_cells(row, cached, alerts)]
        for row in report.rows
    ]
    total = [["total", *[""] * (len(by) - 1), *_cells(report.total, cached, alerts)]]
    lines = table(fmt, headers, rows, total=total, right=range(len(by), len(headers)))
    return printable("\n".join([*lines, "", *notes(_footer(report, fmt), fmt)]) + "\n")


def _reprice_cells(row: Row, name: str) -> list[str]:
    cells = [
        name,
        f"{row.calls:,}",
        usd(row.before_usd, complete=row.before_complete),
        usd(row.after_usd, complete=row.after_complete),
    ]
    delta = row.change_usd
    if delta is None:
        return [*cells, NO_FIGURE, NO_FIGURE]
    base = row.compared_before_usd
    mark = "" if row.before_complete and row.after_complete else "*"
    return [*cells, usd(delta, signed=True) + mark, percent(delta / base * 100) + mark if base else NO_FIGURE]


def render_reprice(result: Reprice, fmt: str = "text") -> str:
    """The before/after table (``text`` or ``markdown``) or the JSON document."""
    check_format(fmt, REPRICE_FORMATS)
    if fmt == "json":
        return strict_json(result.to_json()) + "\n"
    changes = [f"{old} -> {new}" for old, new in result.models.items()]
    if result.provider:
        changes.append(f"every call at provider {result.provider}")
    if result.price_file:
        changes.append(f"prices from {result.price_file}")
    headers = ["lens", "calls", "before", "after", "change", "%"]
    # in Markdown a lens key is a code span, as in the report's table
    rows = [
        _reprice_cells(row, code(row.lens) if fmt == "markdown" and row.lens != NO_LENS else row.lens)
        for _, row in sorted(result.rows.items())
    ]
    total = result.total()
    lines = [
        f"Repriced {result.source}: {'; '.join(changes) or 'the same models at the current prices'}",
        "",
        *table(fmt, headers, rows, total=[_reprice_cells(total, total.lens)]),
    ]
    said = []
    if result.unpriced_after:
        name = code if fmt == "markdown" else repr
        missing = ", ".join(
            f"{name(m)} ({_count(n, 'call')}{'; ' + result.hints[m] if m in result.hints else ''})"
            for m, n in sorted(result.unpriced_after.items())
        )
        said.append(f"* after leaves out calls with no known price: {missing}")
    if calls := result.no_usage_calls:
        said.append(
            f"* after leaves out {_count(calls, 'call')} that reported no prompt and completion tokens to "
            "price (no usage, or only a total of tokens)"
        )
    if calls := result.tool_fee_calls:
        said.append(
            "* before leaves out the fees of the built-in tools (web search...) "
            f"{_count(calls, 'call')} used: recorded with no fee for them"
        )
    if unpriced := result.unpriced_tools_after:
        uses = ", ".join(f"{_count(n, kind + ' use')}" for kind, n in sorted(unpriced.items()))
        said.append(
            f"* after leaves out the fees of {uses}: give them in the price file's tool_fees "
            "(USD per use, docs/PRICING.md) and pass it (--price-file)"
        )
    if calls := result.price_file_calls:
        said.append(
            f"* after prices {_count(calls, 'call')} from genai-prices that a price file priced when made "
            '(cost.source "price-file"): pass that file (--price-file) to keep their rates'
        )
    if calls := result.pending_calls:
        said.append(
            f"* before and after leave out {_count(calls, 'background response')} begun whose end no "
            "record read shows (the cost is in the record of the end)"
        )
    if not total.before_complete:
        said.append("* before leaves out calls, or built-in tools' fees, recorded without a cost")
    if not (total.before_complete and total.after_complete):
        said.append(f"* change compares only the calls priced before and after ({NO_FIGURE}: none is)")
    lines += [line for note in notes(said, fmt) for line in ("", note)]
    return printable("\n".join(lines) + "\n")  # a file or model name may hold a lone surrogate


def _figure(metric: str, value: float, extra: int) -> str:
    """One figure of the anomalies' table, with ``extra`` digits more than it needs by default."""
    if metric == "total_cost_usd":
        return usd(value, significant=3 + extra)
    if metric == "ratio":  # a MAD on the log scale: x1.10, runs usually within 10% of the median
        return f"x{value:.{2 + extra}f}"
    text = f"{value:,.{extra}f}".rstrip("0").rstrip(".") if extra else f"{value:,.0f}"
    return f"{text} ms" if metric == "duration_ms" else text  # a whole number of tokens stays one


def _distinct(metric: str, values: list[float], reference: float = 0.0) -> list[str]:
    """``values`` with the fewest digits at which two that differ, or one and ``reference``, read apart:
    a value just above its threshold never reads as equal to it, a small figure never as none."""
    for extra in range(7):
        shown = [_figure(metric, v, extra) for v in (*values, reference)]
        if len(set(shown)) == len({*values, reference}):
            break
    return shown[:-1]


def render_anomalies(anomalies: list[AnomalyRecord], fmt: str = "text") -> str:
    """The anomalies as a ``text`` table or the JSON document."""
    check_format(fmt, ANOMALY_FORMATS)
    if fmt == "json":
        return strict_json({"anomalies": anomalies}) + "\n"
    if not anomalies:
        return "no anomalous lens run\n"
    # a service's runs have baselines of their own: the column shows when some run names one
    services = any(record["context"].get("service") is not None for record in anomalies)
    figures = ("metric", "value", "median", "MAD", "threshold")
    headers = ("time", *["service"] * services, "lens", "model", *figures, "lens run")
    rows = []
    for record in anomalies:
        a = record["anomaly"]
        m = a["metric"]
        value, median, threshold = _distinct(m, [a["value"], a["median"], a["threshold"]])
        log = a["scale"] == "log"
        [mad] = _distinct("ratio", [math.exp(a["mad"])], 1.0) if log else _distinct(m, [a["mad"]])
        service = record["context"].get("service")
        rows.append([
            record["timestamp"], *["(none)" if service is None else str(service)] * services,
            str(record["context"].get("lens_key")), a["model"] or "(none)", m,
            value, median, mad, threshold, str(record["context"].get("lens_run_id") or ""),
        ])  # fmt: skip
    # on the log scale the MAD is a ratio: x1.10 means runs usually within 10% of the median
    found = f"{len(anomalies):,} anomal{'y' if len(anomalies) == 1 else 'ies'}"
    table = text_table(headers, rows, right=range(4 + services, 8 + services))
    return "\n".join(table) + f"\n{found}\n"
