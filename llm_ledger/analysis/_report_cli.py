"""``llm-ledger report LOG…``: calls, errors, tokens, cost and latency per value of any dimension."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._cli import add_command
from .._errors import ConfigError
from . import _read
from ._aggregate import TIME_DIMENSIONS, aggregate, make_query, parse_where
from ._render import FORMATS, render

__all__ = ["register", "run"]

_EPILOG = f"""\
dimensions (--by, --where): a context key (user_id, source_id, service, ...), a record field
(status, operation), a dotted path (server.address), or one of lens, model, {", ".join(TIME_DIMENSIONS)};
records without the value group under (none). Costs are summed exactly, in USD.

examples:
  llm-ledger report logs/                                  every log in the directory, by lens
  llm-ledger report 'logs/llm_calls.jsonl*' --by user_id   rotated and .gz files too
  llm-ledger report logs/ --by lens,model --where service=RunnerService --since 2025-11-01
  zcat old.jsonl.gz | llm-ledger report - --format json
"""


def register(subparsers: Any, summary: str) -> None:
    parser = add_command(
        subparsers,
        "report",
        summary,
        run,
        formats=FORMATS,
        logs=True,
        description=(
            "Summarise llm-ledger logs in one streaming pass: per group, the lens runs, calls, errors,\n"
            "prompt/completion/total tokens, cost and average call duration."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--by",
        action="append",
        metavar="DIM[,DIM]",
        help="group rows by these dimensions (repeatable; default: lens)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep records whose KEY is VALUE (repeatable: one key several times means any of them)",
    )
    parser.add_argument("--since", metavar="WHEN", help="from this ISO date or date-time, inclusive (UTC)")
    parser.add_argument("--until", metavar="WHEN", help="up to this ISO date or date-time, exclusive (UTC)")


def _refuse_reports(inputs: list[str]) -> None:
    """A pytest --llm-report file (indented JSON) would read as nothing but malformed lines: say
    which commands read it instead."""
    for name in filter(os.path.isfile, inputs):  # not a pipe: what is read here would be lost to the reader
        try:
            report = _read.is_pytest_report(name)
        except OSError:
            continue  # the reader says what is wrong with it
        if report:
            raise ConfigError(
                f"{name}: a pytest --llm-report file, not a log of calls; compare two with "
                f"`llm-ledger diff BASE.json {name}`, or price it again with `llm-ledger reprice {name}`"
            )


def run(args: argparse.Namespace) -> int:
    _refuse_reports(args.inputs)
    query = make_query(args.by or ["lens"], parse_where(args.where), args.since, args.until)
    report = aggregate(_read.LogReader(args.inputs), query)
    sys.stdout.write(render(report, args.fmt))
    for stats in report.inputs:
        if stats.malformed:
            where = ", ".join(map(str, stats.first_malformed))
            more = ", ..." if stats.malformed > len(stats.first_malformed) else ""
            long = f"; {stats.too_long:,} over {_read.MAX_LINE_BYTES:,} bytes" if stats.too_long else ""
            sys.stderr.write(
                f"llm-ledger report: {stats.name}: skipped {stats.malformed:,} malformed line(s) "
                f"(line {where}{more}{long}); the other lines are counted\n"
            )
        if stats.error:
            sys.stderr.write(
                f"llm-ledger report: {stats.name}: {stats.error}; the lines before are counted\n"
            )
    return 0
