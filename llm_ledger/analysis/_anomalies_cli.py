"""``llm-ledger anomalies``: the lens runs of logs replayed in time order through the anomaly detector."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .._anomalies import METRICS, AnomalyConfig, AnomalyDetector
from .._cli import add_command
from .._records import LENS_EVENT, AnomalyRecord
from ._read import LogReader, warn_unread
from ._render import ANOMALY_FORMATS, render_anomalies

__all__ = ["register", "replay", "run"]


def replay(records: Iterable[Mapping[str, Any]], config: AnomalyConfig) -> list[AnomalyRecord]:
    """Every anomaly in ``records`` (lens summaries), judged in time order as they would have been live."""
    detector = AnomalyDetector(config)
    ordered = sorted(records, key=lambda r: str(r.get("timestamp", "")))  # stable: file order within a ms
    return [anomaly for record in ordered for anomaly in detector.observe(record)]


def register(subparsers: Any, summary: str) -> None:
    defaults = AnomalyConfig()
    parser = add_command(
        subparsers,
        "anomalies",
        summary,
        run,
        formats=ANOMALY_FORMATS,
        logs=True,
        description=(
            "Replay the lens runs of llm-ledger logs in time order through the anomaly detector and list "
            "the runs whose tokens, cost or duration went above median + k * MAD of their lens's "
            "(and models') previous runs."
        ),
    )
    for flag, kind, what in (
        ("--window", int, "runs in a baseline"),
        ("--k", float, "MADs above the median"),
        ("--min-runs", int, "runs before judging"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{what} (default: %(default)s)")
    parser.add_argument(
        "--metric",
        action="append",
        choices=METRICS,
        dest="metrics",
        help="judge only this metric (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    config = AnomalyConfig(
        window=args.window, k=args.k, min_runs=args.min_runs, metrics=tuple(args.metrics or METRICS)
    )
    reader = LogReader(args.inputs, events=(LENS_EVENT,))
    sys.stdout.write(render_anomalies(replay(reader, config), args.fmt))
    warn_unread("anomalies", reader.stats)
    return 0
