"""Cost by any dimension, from llm-ledger logs: the engine behind ``llm-ledger report`` and ``serve``.

>>> from llm_ledger.report import summarise
>>> report = summarise(["logs/"], by=["user_id"], since="2025-11-01", until="2025-12-01")
>>> for row in report.rows:
...     print(row.key["user_id"], row.calls, row.cost_usd)

Dimensions, filters, the rows and the rest of this API (records in memory, ``GET /costs``, report diffs,
usage rows): docs/REPORTING.md. Bad arguments raise :class:`llm_ledger.ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from ._records import cost_decimal
from ._table import text_table, usd
from .analysis._aggregate import EVENTS, CostReport, CostRow, Query, QueryError, aggregate, make_query
from .analysis._diff import diff_reports, load_report
from .analysis._diff import render as render_diff
from .analysis._http import asgi_app
from .analysis._read import REPORT_SCHEMA, InputStats, LogReader
from .analysis._render import FORMATS, render
from .analysis._usage import COUNTS, NO_ANSWER, NO_LENS, UsageRow, cost_gaps, failed_calls, usage_row

__all__ = [
    "COUNTS", "FORMATS", "NO_ANSWER", "NO_LENS", "REPORT_SCHEMA", "CostReport", "CostRow", "InputStats",
    "Query", "QueryError", "UsageRow", "asgi_app", "cost_decimal", "cost_gaps", "diff_reports",
    "failed_calls", "load_report", "render", "render_diff", "summarise", "summarise_records", "text_table",
    "usage_row", "usd",
]  # fmt: skip

Paths = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
When = str | date | datetime | None


def summarise(
    paths: Paths,
    by: str | Sequence[str] = ("lens",),
    where: Mapping[str, str | Sequence[str]] | None = None,
    since: When = None,
    until: When = None,
    tz: str | None = None,
) -> CostReport:
    """Read the logs at ``paths`` and sum their calls per value of the ``by`` dimensions.

    ``by``: a dimension name, ``"lens,model"``, or a list of names. ``where``: dimension -> the
    value (or values) to keep, compared as text. ``since`` (inclusive) and ``until`` (exclusive):
    ISO dates or date-times, dates or datetimes; without a time zone, on ``tz``'s clock. ``tz``: an IANA
    time zone name (``"America/New_York"``) whose clock the day, hour, week and month read; UTC by
    default. A pytest ``--llm-report`` file among the files ``paths`` name is refused, as by
    ``llm-ledger report`` (read it with :func:`load_report`) (docs/REPORTING.md)."""
    query = make_query(by, where, since, until, tz)
    return aggregate(
        LogReader([paths] if isinstance(paths, str | os.PathLike) else paths, events=EVENTS), query
    )


def summarise_records(
    records: Iterable[Mapping[str, Any]],
    by: str | Sequence[str] = ("lens",),
    where: Mapping[str, str | Sequence[str]] | None = None,
    since: When = None,
    until: When = None,
    tz: str | None = None,
    *,
    from_summaries: bool = False,
) -> CostReport:
    """Sum call records and lens summaries held in memory, as :func:`summarise` sums a log's; with
    ``from_summaries`` the figures come from the lens summaries alone (docs/REPORTING.md). A record with
    unusable numbers is left out."""
    query = make_query(by, where, since, until, tz)
    return aggregate((dict(r) for r in records), query, from_summaries=from_summaries)
