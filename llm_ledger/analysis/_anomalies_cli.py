"""``llm-ledger anomalies``: the lens runs of logs replayed in time order through the anomaly detector."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .._anomalies import METRICS, AnomalyConfig, AnomalyDetector
from .._cli import add_command
from .._records import LENS_EVENT, AnomalyRecord
from .._table import text_table, usd
from ._read import LogReader, warn_unread
from ._render import strict_json

__all__ = ["register", "render", "replay", "run"]


def replay(records: Iterable[Mapping[str, Any]], config: AnomalyConfig) -> list[AnomalyRecord]:
    """Every anomaly in ``records`` (lens summaries), judged in time order as they would have been live."""
    detector = AnomalyDetector(config)
    ordered = sorted(records, key=lambda r: str(r.get("timestamp", "")))  # stable: file order within a ms
    return [anomaly for record in ordered for anomaly in detector.observe(record)]


def _figure(metric: str, value: float) -> str:
    if metric == "total_cost_usd":
        return usd(value)
    if metric == "duration_ms":
        return f"{value:,.0f} ms"
    return f"{value:,.0f}"


def render(anomalies: list[AnomalyRecord], fmt: str = "text") -> str:
    if fmt == "json":
        return strict_json({"anomalies": anomalies}) + "\n"
    if not anomalies:
        return "no anomalous lens run\n"
    headers = ("time", "lens", "model", "metric", "value", "median", "MAD", "threshold", "lens run")
    rows = []
    for record in anomalies:
        a = record["anomaly"]
        m = a["metric"]
        rows.append([
            record["timestamp"], str(record["context"].get("lens_key")), a["model"] or "(none)", m,
            _figure(m, a["value"]), _figure(m, a["median"]),
            f"x{math.exp(a['mad']):.2f}" if a["scale"] == "log" else _figure(m, a["mad"]),
            _figure(m, a["threshold"]),
            str(record["context"].get("lens_run_id") or ""),
        ])  # fmt: skip
    # on the log scale the MAD is a ratio: x1.10 means runs usually within 10% of the median
    return "\n".join(text_table(headers, rows, right=range(4, 8))) + f"\n{len(anomalies)} anomaly(ies)\n"


def register(subparsers: Any, summary: str) -> None:
    defaults = AnomalyConfig()
    parser = add_command(
        subparsers,
        "anomalies",
        summary,
        run,
        formats=("text", "json"),
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
    sys.stdout.write(render(replay(reader, config), args.fmt))
    warn_unread("anomalies", reader.stats)
    return 0
