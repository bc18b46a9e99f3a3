"""The log-analysis engine: reading llm-ledger logs, aggregating them, rendering the result.

* :mod:`._read`: the one reader of JSONL logs (files, globs, directories, ``.gz``, stdin), a line
  at a time with a length cap; :func:`iter_records` is what every other reader of logs builds on;
* :mod:`._aggregate`: the query (``by``, ``where``, ``since``, ``until``) and the grouped sums;
* :mod:`._render`: text and Markdown tables, strict JSON;
* :mod:`._http`: the read-only cost API, one request handler for ``llm-ledger serve`` and ASGI;
* :mod:`._diff`: two pytest ``--llm-report`` files compared lens by lens;
* :mod:`._usage`: one call's usage as a row (lens, server, model, tokens, recorded cost);
* the subcommands ``llm-ledger report``, ``serve``, ``diff``, ``reprice`` and ``anomalies``
  (``_report_cli``, ``_http``, ``_diff``, ``_reprice``, ``_anomalies_cli``).

The public face is :mod:`llm_ledger.report`.
"""

from __future__ import annotations

from ._read import InputStats, LogReader, iter_records

__all__ = ["InputStats", "LogReader", "iter_records"]
