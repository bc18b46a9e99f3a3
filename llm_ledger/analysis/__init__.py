"""The log-analysis engine behind ``llm-ledger report``, ``serve``, ``diff``, ``reprice`` and ``anomalies``.

:mod:`._read` is the one reader of logs, which every other reader of logs builds on
(:func:`iter_records`); :mod:`._aggregate` holds the query and the grouped sums, :mod:`._usage` one
call's usage as a row; :mod:`._render` and :mod:`._render_diff` write the text, Markdown and JSON
output (tables through :mod:`llm_ledger._table`); each subcommand has its own module (``_report_cli``,
``_http``, ``_diff``, ``_reprice``, ``_anomalies_cli``). The public face is :mod:`llm_ledger.report`.
"""

from __future__ import annotations

from ._read import InputStats, LogReader, iter_records

__all__ = ["InputStats", "LogReader", "iter_records"]
