"""``llm-ledger anomalies``: the lens runs of logs replayed in time order through the anomaly detector."""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import orjson

from .._anomalies import METRICS, SCALES, AnomalyConfig, AnomalyDetector
from .._cli import add_command, add_query_options
from .._errors import ConfigError
from .._records import LENS_EVENT, AnomalyRecord
from ..loading import loads
from ._aggregate import Query, make_query, parse_where, select
from ._read import LogReader, warn_unread
from ._render import ANOMALY_FORMATS, render_anomalies

__all__ = ["register", "replay", "run"]


def replay(records: Iterable[Mapping[str, Any]], config: AnomalyConfig, query: Query) -> list[AnomalyRecord]:
    """The anomalies of the runs in ``records`` (lens summaries) that ``query``'s ``where``, ``since`` and
    ``until`` keep, judged in time order as they would have been live (each against every run before
    it, kept or not)."""
    detector = AnomalyDetector(config)
    # each run waits for its turn as its JSON text, a quarter of the memory of the parsed record; copied
    # to its size (orjson's own bytes keep an allocation of several KB each)
    runs = [(str(r.get("timestamp", "")), _dumps(r)) for r in records]
    runs.sort(key=operator.itemgetter(0))  # stable: file order within a millisecond
    judged: list[AnomalyRecord] = []  # the anomalies of the run last judged

    def in_turn() -> Iterator[dict[str, Any]]:
        nonlocal judged
        for _, text in runs:
            record = loads(text)
            judged = detector.observe(record)  # every run joins the baselines, listed or not
            yield record

    # select() takes one run at a time: judged holds the anomalies of the run it lists
    listed = select(in_turn(), query) if query.where or query.since or query.until else in_turn()
    return [anomaly for _ in listed for anomaly in judged]


def _dumps(record: Mapping[str, Any]) -> bytes:
    """``record`` as JSON, with json for what orjson refuses: a lone surrogate (the ledger logs one as
    its escape), an integer past 64 bits (a corrupt line); :func:`loads` reads both back."""
    try:
        return memoryview(orjson.dumps(record)).tobytes()
    except TypeError:
        return json.dumps(record).encode()


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
        ("--min-mad-ratio", float, "the least spread, as a fraction of the median"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{what} (default: %(default)s)")
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default=defaults.scale,
        help="log judges ratios, linear differences (default: %(default)s)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        choices=METRICS,
        dest="metrics",
        help="judge only this metric (repeatable)",
    )
    add_query_options(parser, "runs listed")


# a setting as its flag names it, where an AnomalyConfig error names the setting
_FLAG: Final = re.compile(r"\b(min_runs|min_mad_ratio|window|k)\b(?= \(| must)")


def run(args: argparse.Namespace) -> int:
    try:
        config = AnomalyConfig(
            window=args.window,
            k=args.k,
            min_runs=args.min_runs,
            min_mad_ratio=args.min_mad_ratio,
            metrics=tuple(args.metrics or METRICS),
            scale=args.scale,
        )
    except ConfigError as exc:  # named by the flags the user typed: --min-runs, not min_runs
        text = str(exc).removeprefix("anomalies: ")
        raise ConfigError(_FLAG.sub(lambda name: "--" + name[1].replace("_", "-"), text)) from None
    query = make_query(("lens",), parse_where(args.where), args.since, args.until)
    reader = LogReader(args.inputs, events=(LENS_EVENT,))
    text = render_anomalies(replay(reader, config, query), args.fmt)
    warn_unread("anomalies", reader.stats)
    sys.stdout.write(text)
    return 0
