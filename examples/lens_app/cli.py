"""``python -m examples.lens_app``: run every lens over every sample source and print what each cost."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import openai

import llm_ledger
from llm_ledger.exporters import metrics_ports
from llm_ledger.report import cost_decimal, render, text_table, usd

from .app import Mode, RunResult, make_client, open_cassettes, run_lenses
from .cassettes import CASSETTE_DIR, CassetteMissError, LensCassette, recorded_base_url
from .lenses import LENSES
from .services import RunnerService
from .sources import SOURCES_DIR, load_sources
from .store import Store

__all__ = ["build_parser", "main", "render_table"]

DEFAULT_DB = "lens_app.sqlite3"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.lens_app",
        description=(
            "Run the example lenses over the sample articles, monitored by llm-ledger: per-call records "
            "go to <log-dir>/llm_calls.jsonl, each lens run to the source_logs and artifacts tables. "
            "By default the calls are replayed offline from the committed cassettes."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--live", action="store_true", help="call the OpenAI API for real (needs OPENAI_API_KEY; costs money)"
    )
    mode.add_argument(
        "--record",
        action="store_true",
        help="call the API (or the server at --base-url) and rewrite the cassettes of the lenses run",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible API base URL for --live / --record, e.g. http://127.0.0.1:8123/v1",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra HTTP header on every request with --live / --record (repeatable; never in cassettes)",
    )
    parser.add_argument(
        "--lens",
        action="append",
        choices=sorted(LENSES),
        metavar="KEY",
        help=f"run only these lenses: {', '.join(LENSES)}",
    )
    parser.add_argument("--source", action="append", metavar="SLUG", help="run only over these sources")
    parser.add_argument(
        "--user", default="demo", metavar="USER_ID", help="the user the lens runs are for (default: demo)"
    )
    parser.add_argument(
        "--costs",
        metavar="DIM[,DIM]",
        help="run nothing: print lens runs, calls, tokens and cost per source_id, user_id or lens from "
        "the source_logs table of --db (as `llm-ledger report LOG_DIR --by ...` does from the log)",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="PATH", help=f"SQLite database (default: {DEFAULT_DB})"
    )
    parser.add_argument(
        "--log-dir", default="logs", metavar="DIR", help="where llm_calls.jsonl goes (default: logs)"
    )
    parser.add_argument(
        "--cassette-dir",
        type=Path,
        default=CASSETTE_DIR,
        metavar="DIR",
        help="cassette directory (default: %(default)s)",
    )
    parser.add_argument(
        "--sources-dir", type=Path, default=SOURCES_DIR, metavar="DIR", help=argparse.SUPPRESS
    )
    metrics = parser.add_argument_group(
        "metrics (needs the prometheus extra: pip install 'llm-ledger[prometheus]')"
    )
    metrics.add_argument(
        "--metrics",
        action="store_true",
        help="export Prometheus metrics and keep serving /metrics after the run (Ctrl-C stops)",
    )
    metrics.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        metavar="PORT",
        help="port of /metrics (default: 9464; 0: a free one)",
    )
    metrics.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address /metrics listens on (default: 127.0.0.1; 0.0.0.0 in a container)",
    )
    metrics.add_argument(
        "--repeat",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --metrics: run the lenses again every SECONDS (traffic for a dashboard)",
    )
    return parser


def _headers(parser: argparse.ArgumentParser, raw: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            parser.error(f"--header {item!r} is not 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return headers


def _duration(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:,.1f} s"


def render_table(results: Sequence[RunResult]) -> list[str]:
    """The per-lens-run table: lens, source, calls, tokens, cost (sub-cent digits) and duration."""
    header = ["lens", "source", "calls", "tokens", "cost (USD)", "duration"]
    rows: list[list[str]] = []
    calls = tokens = 0
    cost = Decimal(0)  # summed exactly, as `llm-ledger report` sums the log
    complete = True
    for result in results:
        if result.artifact is None:
            rows.append([result.lens_key, result.source.slug, "-", "-", "-", "FAILED"])
            continue
        usage = result.artifact.usage
        calls += usage["api_calls"]
        tokens += usage["total_tokens"]
        cost += cost_decimal(usage["total_cost_usd"]) or 0
        complete = complete and usage["cost_complete"]
        rows.append(
            [
                result.lens_key,
                result.source.slug,
                str(usage["api_calls"]),
                f"{usage['total_tokens']:,}",
                usd(usage["total_cost_usd"], complete=usage["cost_complete"]),
                _duration(usage["duration_ms"]),
            ]
        )
    total = ["total", f"{len(results)} lens runs", str(calls), f"{tokens:,}", usd(cost, complete=complete)]
    return text_table(header, rows, total=[[*total, ""]], right={2, 3, 4, 5})


def _mode(args: argparse.Namespace) -> Mode:
    return "live" if args.live else "record" if args.record else "replay"


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (1 when a lens run failed, 2 on a usage error)."""
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.costs is not None:
        return _print_costs(parser, args, out)
    mode = _mode(args)
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if mode == "live" and not api_key:
        parser.error(
            "--live calls the OpenAI API and needs OPENAI_API_KEY in the environment; "
            "set it, or drop --live to replay the committed cassettes offline"
        )
    if mode == "record" and not api_key and not args.base_url:
        parser.error(
            "--record calls the OpenAI API and needs OPENAI_API_KEY; or record from a local "
            "OpenAI-compatible server: `llm-ledger fake-server --port 8123` and "
            "--base-url http://127.0.0.1:8123/v1"
        )
    if mode == "replay" and (args.base_url or args.header):
        parser.error(
            "--base-url and --header apply to --live and --record; replay answers from the cassettes"
        )
    headers = _headers(parser, args.header)
    if args.base_url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", args.base_url):
        parser.error(f"--base-url {args.base_url!r} is not an http(s) URL; e.g. http://127.0.0.1:8123/v1")

    sources = load_sources(args.sources_dir)
    if args.source:
        unknown = sorted(set(args.source) - {s.slug for s in sources})
        if unknown:
            parser.error(f"unknown source(s) {unknown}; choose from {[s.slug for s in sources]}")
        sources = [s for s in sources if s.slug in args.source]
    lens_keys = [key for key in LENSES if not args.lens or key in args.lens]

    cassettes = open_cassettes(mode, lens_keys, args.cassette_dir)
    missing = [c for c in cassettes.values() if mode == "replay" and not c.existed]
    if missing:
        names = ", ".join(str(c.path) for c in missing)
        where = "" if args.cassette_dir == CASSETTE_DIR else f" --cassette-dir {_shown(args.cassette_dir)}"
        lenses = "".join(f" --lens {c.lens_key}" for c in missing)
        record = f"{_command()} --record{lenses}{where} [--base-url URL]"
        parser.error(f"no cassette {names}; record with: {record}")
    _open_store(parser, args.db).close()  # a bad --db is a usage error now, not a traceback after the calls

    base_url = args.base_url
    if mode == "replay":
        try:
            base_url = recorded_base_url(cassettes.values())
        except ValueError as exc:
            parser.error(f"{exc}; re-record them together with --record")

    if args.repeat is not None and (not args.metrics or args.repeat <= 0):
        parser.error("--repeat SECONDS needs --metrics and a number of seconds above 0")
    exporters = [f"prometheus:{args.metrics_addr}:{args.metrics_port}"] if args.metrics else []
    try:
        llm_ledger.configure(log_dir=args.log_dir, exporters=exporters)
    except llm_ledger.ConfigError as exc:
        parser.error(str(exc))
    log_file = Path(args.log_dir) / "llm_calls.jsonl"
    where = {
        "replay": f"replaying cassettes from {_shown(args.cassette_dir)} (offline; --live calls the API)",
        "live": f"calling {args.base_url or os.environ.get('OPENAI_BASE_URL') or 'the OpenAI API'} (live)",
        "record": f"recording into {_shown(args.cassette_dir)} from {args.base_url or 'the OpenAI API'}",
    }[mode]
    print(f"lens_app: {len(lens_keys)} lenses over {len(sources)} sources, {where}\n", file=out)

    async def go(cassettes: dict[str, LensCassette]) -> list[RunResult]:
        with Store(args.db) as store:
            client = make_client(mode, base_url=base_url, api_key=api_key, headers=headers)
            async with client:
                runner = RunnerService(client, store)
                return await run_lenses(runner, lens_keys, sources, cassettes, user_id=args.user)

    results = asyncio.run(go(cassettes))
    llm_ledger.flush()

    for row in render_table(results):
        print(row, file=out)
    print(
        f"\nper-call records appended to {log_file}; lens summaries in {args.db} "
        "(source_logs.extra_data, artifacts.usage)",
        file=out,
    )
    print(f"summarise the log with: {_report_command()} {args.log_dir} --by user_id,model", file=out)
    print(
        f"cost per source from the database: {_command()} --db {args.db} --costs source_id",
        file=out,
    )
    failures = [r for r in results if r.error is not None]
    for result in failures:
        print(f"\n{result.lens_key} on {result.source.slug} failed:", file=out)
        if isinstance(result.error, CassetteMissError):
            print(str(result.error), file=out)
        elif isinstance(result.error, openai.APIConnectionError):  # the SDK says "Connection error." only
            cause = f"{type(result.error.__cause__).__name__}: {result.error.__cause__}"
            print(f"  {result.error} ({cause}): is {base_url or 'the API'} up?", file=out)
        else:
            print(f"  {type(result.error).__name__}: {result.error}", file=out)
    if args.metrics:
        _serve_metrics(args, out, lambda: asyncio.run(go(open_cassettes(mode, lens_keys, args.cassette_dir))))
    return 1 if failures else 0


def _print_costs(parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO) -> int:
    """``--costs``: the source_logs table summed by the dimensions asked for, as ``llm-ledger report``."""
    if not Path(args.db).exists():
        parser.error(f"no database at {args.db}; run the demo first ({_command()} --db {args.db})")
    with _open_store(parser, args.db) as store:
        try:
            report = store.costs(args.costs)
        except llm_ledger.ConfigError as exc:
            parser.error(f"--costs: {exc}")
    out.write(render(report, "text"))
    return 0


def _serve_metrics(args: argparse.Namespace, out: TextIO, again: Callable[[], object]) -> None:
    """Keep /metrics up (configure() started it) until Ctrl-C, running the lenses every --repeat seconds."""
    host = "127.0.0.1" if args.metrics_addr in ("0.0.0.0", "") else args.metrics_addr
    every = f"; running the lenses again every {args.repeat:g} s" if args.repeat else ""
    port = next(iter(metrics_ports().values()))  # the one configure() serves (--metrics-port 0: a free one)
    print(
        f"metrics: scrape http://{host}:{port}/metrics{every} (Ctrl-C stops)",
        file=out,
        flush=True,
    )
    try:
        while True:
            time.sleep(args.repeat or 3600)
            if args.repeat:
                again()
                llm_ledger.flush()
    except KeyboardInterrupt:
        print("metrics: stopped", file=out)


def _open_store(parser: argparse.ArgumentParser, path: str) -> Store:
    try:
        return Store(path)
    except (OSError, sqlite3.Error) as exc:
        parser.error(f"--db {path}: {exc}; give the path of a SQLite file (made when missing)")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it; symlinks kept (a venv's python is one)."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _command() -> str:
    """This demo's command as it was started: ``python`` may be absent, or another one than the venv's."""
    return f"{_shown(Path(sys.executable))} -m examples.lens_app"


def _report_command() -> str:
    script = Path(sys.executable).parent / "llm-ledger"  # the venv's console script, if installed
    if script.is_file():
        return f"{_shown(script)} report"
    return f"{_shown(Path(sys.executable))} -m llm_ledger report"
