"""The log-analysis engine behind ``llm-ledger report``, ``serve``, ``diff``, ``reprice`` and ``anomalies``.

:mod:`._read` is the one reader of logs, which every other reader of logs builds on
(:func:`iter_records`); :mod:`._aggregate` holds the query and the grouped sums, :mod:`._usage` one
call's usage as a row; :mod:`._render` and :mod:`._render_diff` write the text, Markdown and JSON
output (tables through :mod:`llm_ledger._table`); each subcommand has its own module (``_report_cli``,
``_http``, ``_diff``, ``_reprice``, ``_anomalies_cli``). The public face is :mod:`llm_ledger.report`; the
names here, the reader and one call's usage row, are public too and load without the query, rendering
and diff engines (the pytest plugin builds its report from them, in every run).
"""

from __future__ import annotations

from .._records import cost_decimal
from .._table import text_table, usd
from ._read import REPORT_SCHEMA, InputStats, LogReader, iter_records
from ._usage import COUNTS, NO_ANSWER, NO_LENS, UsageRow, cost_gaps, failed_calls, usage_row

__all__ = [
    "COUNTS", "NO_ANSWER", "NO_LENS", "REPORT_SCHEMA", "InputStats", "LogReader", "UsageRow", "cost_decimal",
    "cost_gaps", "failed_calls", "iter_records", "text_table", "usage_row", "usd",
]  # fmt: skip
