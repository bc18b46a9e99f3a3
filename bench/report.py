"""Section 5: ``llm-ledger report`` over a generated ``llm_calls.jsonl``: lines per second, peak memory.

The file is written in a temporary directory (never in the repository) with exactly the bytes the
ledger's JSONL writer produces: records built by ``llm_ledger._records`` and formatted by
``LedgerJsonFormatter``, over a mix of lenses, services, models, sources and days, ~3% errors and a
lens summary every ten calls. The report runs in a subprocess; its peak RSS comes from ``wait4``.
Reference readers (stdlib json, orjson, DuckDB ``read_json`` when installed) read the same file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from llm_ledger._jsonl import LedgerJsonFormatter
from llm_ledger._records import LensTotals, call_record, lens_record

from ._server import REPO, child_env
from ._table import Table, verdict

TARGET_LINES_PER_S = 500_000
GROUPS = ("lens", "model", "source_id", "service", "day", "user_id")
_DISTINCT = 5_000  # distinct lines, repeated to the requested size
_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "o3-mini")
_LENSES = ("default_summary", "classify", "extract_entities", "translate", "answer")
_SERVICES = ("RunnerService", "GeneratorService", "SearchService")


def _lines(distinct: int) -> list[bytes]:
    formatter = LedgerJsonFormatter()
    lines: list[bytes] = []
    totals = LensTotals()
    for i in range(distinct):
        model = _MODELS[i % len(_MODELS)]
        status = "error" if i % 31 == 0 else "ok"
        context = {"lens_key": _LENSES[i % len(_LENSES)], "source_id": i % 997, "service": _SERVICES[i % 3],
                   "user_id": f"user-{i % 53}", "lens_run_id": f"{i // 10:032x}"}  # fmt: skip
        prompt, completion = 800 + i % 700, 0 if status == "error" else 120 + i % 300
        start = 1_732_000_000 + i * 37.123
        record = call_record(
            status=status, operation="chat", context=context,  # type: ignore[arg-type]
            request={"model": model, "temperature": 0.2, "top_p": None, "frequency_penalty": None,
                     "presence_penalty": None, "max_tokens": 400, "seed": None, "n": None,
                     "reasoning_effort": None, "output_type": None, "messages_count": 2,
                     "system_prompt_length": 1093, "user_prompt_length": 3049 + i % 50, "has_images": False,
                     "image_count": 0, "stream": i % 4 == 0, "tools_count": 0, "service_tier": None,
                     "dimensions": None, "encoding_format": None, "stop_sequences": None, "verbosity": None},
            response={"model": f"{model}-2024-07-18", "id": f"chatcmpl-{i:024x}",
                      "request_id": f"req_{i:032x}", "content_length": 690 + i % 200, "finish_reason": "stop",
                      "tool_calls_count": 0, "service_tier": "default", "tool_uses": None},
            usage={"prompt_tokens": prompt, "completion_tokens": completion,
                   "total_tokens": prompt + completion, "cached_tokens": 0, "reasoning_tokens": 0,
                   "cache_write_tokens": 0, "prompt_audio_tokens": 0, "completion_audio_tokens": 0,
                   "cached_audio_tokens": 0, "prompt_image_tokens": 0, "cached_image_tokens": 0},
            start_epoch=start, duration_s=0.4 + (i % 100) / 50, ttft_s=None if i % 4 else 0.2,
            prompt_cost_units=prompt * 150_000_000_000_000_000,  # $0.15 and $0.60 per 1M tokens
            completion_cost_units=completion * 600_000_000_000_000_000, retries=0,
            error={"type": "RateLimitError", "status_code": 429, "message": "HTTP 429 rate_limit_exceeded"}
            if status == "error" else None,
        )  # fmt: skip
        record["call_id"] = f"{i:032x}"
        totals.add(record, 300 * 10**18)  # $0.0003
        lines.append(_format(formatter, record))
        if i % 10 == 9:
            lines.append(
                _format(formatter, lens_record(context=context, summary=totals.summary(4.2), end_epoch=start))
            )
            totals = LensTotals()
    return lines


def _format(formatter: logging.Formatter, record: Any) -> bytes:
    log = logging.LogRecord("llm_monitor", logging.INFO, "", 0, record, None, None)
    return (formatter.format(log) + "\n").encode()


def generate(path: Path, n_lines: int) -> int:
    """Write ``n_lines`` lines to ``path``; returns its size in bytes."""
    lines = _lines(min(n_lines, _DISTINCT))  # a smaller file (--quick's) needs no more
    block = b"".join(lines)
    with path.open("wb") as f:
        full, rest = divmod(n_lines, len(lines))
        for _ in range(full):
            f.write(block)
        f.write(b"".join(lines[:rest]))
    return path.stat().st_size


# A small interpreter forks the command and reports wait4's peak RSS of exactly that child: measured
# from this (large) process, a forked child's peak would include this process's memory before exec.
_LAUNCHER = (
    "import os,sys,time\n"
    "t=time.perf_counter()\n"
    "pid=os.fork()\n"
    "if pid==0:\n"
    "    os.execv(sys.argv[1],sys.argv[1:])\n"
    "_,status,usage=os.wait4(pid,0)\n"
    "print(time.perf_counter()-t,usage.ru_maxrss*1024,os.waitstatus_to_exitcode(status),file=sys.stderr)\n"
)


def _run_measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (bytes) of one subprocess, and its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command], cwd=REPO, env=child_env(), capture_output=True, text=True
    )
    *_, last = proc.stderr.strip().splitlines() or [""]
    try:
        wall, rss, status = last.split()
    except ValueError:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {proc.stderr[-500:]}") from None
    if int(status) != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {proc.stderr[-500:]}")
    return float(wall), int(rss), proc.stdout


_REFERENCE = {
    "stdlib json": "import json,sys\nfor line in open(sys.argv[1],'rb'):\n    json.loads(line)",
    "orjson": "import orjson,sys\nfor line in open(sys.argv[1],'rb'):\n    orjson.loads(line)",
    "DuckDB read_json": (
        'import duckdb,sys\nprint(duckdb.sql("select count(*), sum(usage.total_tokens) from "\n'
        "    \"read_json(?, format='newline_delimited', maximum_object_size=1048576, union_by_name=true)\","
        " params=[sys.argv[1]]).fetchall())"
    ),
}


def measure(n_lines: int, references: bool = True) -> tuple[Table, dict[str, float]]:
    table = Table(
        f"llm-ledger report over a {n_lines:,}-line llm_calls.jsonl",
        ["reader", "seconds", "lines/s", "MB/s", "peak RSS MB", "note"],
    )
    headline: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="llm-ledger-bench-report-"))
    path = tmp / "llm_calls.jsonl"
    try:
        size = generate(path, n_lines)
        mb = size / 1e6
        results: list[tuple[str, float, int, str]] = []
        for by in GROUPS:
            command = [sys.executable, "-m", "llm_ledger._cli", "report", str(path), "--by", by]
            wall, rss, _ = _run_measured([*command, "--format", "json"])
            results.append((f"llm-ledger report --by {by}", wall, rss, ""))
        if references:
            for name, code in _REFERENCE.items():
                module = name.split()[0].lower()
                if module != "stdlib" and not _importable(module):
                    results.append((name, 0.0, 0, "not installed"))
                    continue
                wall, rss, _ = _run_measured([sys.executable, "-c", code, str(path)])
                results.append((name, wall, rss, ""))
        for name, wall, rss, note in results:
            if note:
                table.add(name, "", "", "", "", note)
            else:
                table.add(name, wall, n_lines / wall, mb / wall, rss / 1e6, "")
        wall, rss = results[0][1], results[0][2]
        headline.update(report_lines_per_s=n_lines / wall, report_peak_rss_mb=rss / 1e6, report_file_mb=mb)
        slowest, slowest_wall, _, _ = max(results[: len(GROUPS)], key=lambda result: result[1])
        rate = n_lines / slowest_wall
        table.notes += [
            f"file: {mb:,.0f} MB, {n_lines:,} lines ({size / n_lines:.0f} bytes a line), in a temporary "
            "directory",
            f"target ≥ {TARGET_LINES_PER_S:,} lines/s for every group-by: the slowest ({slowest}) "
            f"{rate:,.0f} lines/s, {verdict(rate >= TARGET_LINES_PER_S)}; peak RSS {rss / 1e6:.0f} MB "
            "(the interpreter alone is ~10 MB)",
            "seconds are wall time of the whole subprocess, interpreter start-up included; one process",
        ]
    finally:
        path.unlink(missing_ok=True)
        tmp.rmdir()
    return table, headline


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
