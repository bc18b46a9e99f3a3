"""``python -m bench``: run the benchmarks and print markdown tables (``--json`` also writes the figures).

Sections: ``calls`` (non-streamed, in-process and loopback), ``instructions`` (the same call, and a
stream chunk, counted under callgrind: repeatable on a busy machine), ``streams`` (per chunk), ``peers``
(each in its own subprocess), ``replay`` (cassettes of several sizes, plain vcrpy beside),
``report`` (``llm-ledger report`` over a generated JSONL file), ``exporters`` (the Prometheus and
OTel sinks beside the OTel openai-v2 instrumentation, each worker in its own subprocess). ``--quick``
shrinks every size so the whole run takes seconds (what ``tests/test_bench_smoke.py`` runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import _timing, calls, exporters, instructions, peers, replay, report
from ._table import Table

SECTIONS = ("calls", "instructions", "streams", "exporters", "peers", "replay", "report")
_PACKAGES = (
    *("llm-ledger", "openai", "httpx2", "pydantic", "python-json-logger", "genai-prices", "vcrpy"),
    *("orjson", "duckdb", *(dist for dist, _ in peers.PEERS.values()), "opentelemetry-sdk"),
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "packages": packages,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: proves the scripts work, measures nothing"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per measurement (default 21; quick 2)"
    )
    parser.add_argument(
        "--report-lines", type=int, default=None, help="lines of the generated JSONL (1,000,000)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the peers section")
    parser.add_argument(
        "--exporter-calls", type=int, default=None, help="calls per variant in an exporters worker (3000)"
    )
    parser.add_argument(
        "--exporter-runs", type=int, default=None, help="runs of each exporters worker, alternately (3)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(","))
    if args.no_peers:
        only.discard("peers")
    rounds = args.rounds or (2 if args.quick else 21)
    if args.quick:
        # the imports' objects (the SDK's types) are never scanned again: each of the timing loops'
        # full collections would walk them all, taking most of a quick run's time
        gc.freeze()
        _timing.freeze_after_warmup = True
        sizes = calls.Sizes(calls=3, loopback_calls=3, streams=2, rounds=rounds, chunks=(2, 6))
        replay_sizes, vcr_sample, report_lines = [3, 12], 3, args.report_lines or 1_000
    else:
        sizes = calls.Sizes(rounds=rounds)
        replay_sizes, vcr_sample, report_lines = [10, 100, 1000], 50, args.report_lines or 1_000_000
    info = machine()
    started = time.time()
    print(f"# llm-ledger benchmarks: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, load {info['load_average']}"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v) + "\n", flush=True)
    tables: list[Table] = []
    headline: dict[str, float] = {}

    def show(table: Table, figures: dict[str, float]) -> None:
        tables.append(table)
        headline.update(figures)
        print(table.markdown(), flush=True)

    if "calls" in only:
        show(*calls.non_streamed(sizes))
        show(*calls.per_call(sizes))
        show(*calls.file_lines(sizes))
    if "instructions" in only:
        if args.quick:
            for table in instructions.quick():
                show(table, {})
        else:
            show(*instructions.measure())
            show(*instructions.per_chunk())
    if "streams" in only:
        show(*calls.streamed(sizes))
    if "exporters" in only:
        exporter_calls = args.exporter_calls or (4 if args.quick else 3000)
        show(*exporters.measure(exporter_calls, args.exporter_runs or (1 if args.quick else 3), args.quick))
    if "peers" in only:
        ledger = headline if "ledger_added_us" in headline else None
        show(peers.run_peers(sizes.calls, sizes.streams, rounds, sizes.chunks, ledger, args.quick), {})
    if "replay" in only:
        show(*replay.measure(replay_sizes, max(rounds // 3, 2) if not args.quick else 1, vcr_sample))
    if "report" in only:
        show(*report.measure(report_lines, references=True))
    print(f"done in {time.time() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"machine": info, "headline": headline, "tables": [t.as_dict() for t in tables]}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
