"""``llm-ledger report LOG…``: calls, errors, tokens, cost and latency per value of any dimension."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._cli import add_command, add_query_options
from . import _read
from ._aggregate import EVENTS, TIME_DIMENSIONS, aggregate, make_query, parse_where
from ._render import FORMATS, render

__all__ = ["register", "run"]

_EPILOG = f"""\
dimensions (--by, --where): a context key (user_id, source_id, service, ...), a record field
(status, operation), a dotted path (server.address), or one of lens, model, {", ".join(TIME_DIMENSIONS)};
records without the value group under (none); a lens run's status is error when one of its calls
failed, else ok. Costs are summed exactly, in USD.

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
    add_query_options(parser, "records", tz=True)


def run(args: argparse.Namespace) -> int:
    reader = _read.LogReader(args.inputs, events=EVENTS)
    query = make_query(args.by or ["lens"], parse_where(args.where), args.since, args.until, args.tz)
    report = aggregate(reader, query)
    _read.warn_unread("report", report.inputs)
    sys.stdout.write(render(report, args.fmt))
    return 0
