"""``llm-ledger diff BASE.json HEAD.json``: what changed in calls, tokens and cost, lens by lens.

Reads two ``--llm-report`` files (schema ``llm-ledger-report``, version 1) written by the pytest
plugin, typically one from the base branch and one from the pull request, and prints a table per
lens with base, head, delta and percent change. Lenses only in HEAD are marked new, lenses only in
BASE removed; each lens also shows its runs and its cost per run. ``--format markdown`` (the
default) is fit for a PR comment or ``$GITHUB_STEP_SUMMARY``; ``text`` is for terminals; ``json`` for
other tools.

What makes its numbers untrustworthy (flagged at the top and on stderr), a missing BASE,
``--only-changed`` and ``--fail-on-increase`` are described for users in docs/CI.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from .._cli import add_command
from .._errors import ConfigError
from .._table import markdown_table, text_table
from ..loading import join, printable, read_file, shown
from ._read import strict_loads
from ._render import usd as _usd

__all__ = ["DIFF_METRICS", "diff_reports", "increases", "load_report", "register", "render"]

REPORT_SCHEMA: Final = "llm-ledger-report"
SUPPORTED_VERSIONS: Final = (1,)
# metric in the report -> label in the tables; cost_per_run is computed (cost_usd / runs)
DIFF_METRICS: Final = {
    "runs": "runs",
    "api_calls": "calls",
    "total_tokens": "tokens",
    "cost_usd": "cost (USD)",
    "cost_per_run": "cost per run",
}
LENS_METRICS: Final = tuple(DIFF_METRICS)
TOTAL_METRICS: Final = ("api_calls", "total_tokens", "cost_usd")
_COSTS: Final = frozenset({"cost_usd", "cost_per_run"})
FORMATS: Final = ("markdown", "text", "json")
_READ_METRICS: Final = ("runs", "api_calls", "total_tokens", "cost_usd", "errors")
_MAX_METRIC: Final = 1e15  # larger counts or costs are not real, and would overflow a percentage
MAX_REPORT_BYTES: Final = 64 << 20


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check an llm-ledger report; :class:`ConfigError` says what is wrong with it."""
    name = str(path)
    hint = f"; write one with `pytest --llm-report {name}`"
    raw = read_file(name, ConfigError, "report", hint=hint, max_bytes=MAX_REPORT_BYTES, streams=True)
    try:
        data = strict_loads(raw)
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be an llm-ledger report") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ConfigError(
            f"{name}: not JSON ({exc}); expected a file written by pytest --llm-report"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise ConfigError(f'{name}: not an llm-ledger report (no "schema": {REPORT_SCHEMA!r})')
    if data.get("version") not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"{name}: report version {shown(data.get('version'))} is not supported; this llm-ledger reads "
            f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    for section, kind in (("lenses", dict), ("total", dict), ("tests", dict), ("usage", list)):
        if not isinstance(data.get(section, kind()), kind):
            raise ConfigError(f"{name}: {section!r} must be {'an object' if kind is dict else 'a list'}")
    if data.get("exit_status") is not None and type(data["exit_status"]) is not int:
        raise ConfigError(
            f"{name}: exit_status: expected pytest's exit status, got {shown(data['exit_status'])}"
        )
    failed = data.get("failed_tests", [])
    if not isinstance(failed, list) or not all(isinstance(test, str) for test in failed):
        raise ConfigError(f"{name}: failed_tests: expected a list of test ids, got {shown(failed)}")
    entries = [(join("lenses", lens), entry) for lens, entry in data["lenses"].items()]
    for where, entry in [*entries, ("total", data["total"])]:
        if not isinstance(entry, dict):
            raise ConfigError(f"{name}: {where} must be an object")
        for metric in _READ_METRICS:
            value = entry.get(metric, 0)
            # counts are whole numbers, costs any number; neither is negative
            whole = metric != "cost_usd"
            number = type(value) is int or (not whole and type(value) is float)
            if not number or not 0 <= value <= _MAX_METRIC:
                expected = "a whole number >= 0" if whole else "a number >= 0"
                raise ConfigError(f"{name}: {where}.{metric}: expected {expected}, got {shown(value)}")
    return data


def _number(entry: dict[str, Any] | None, metric: str) -> float | None:
    if entry is None:
        return None
    if metric == "cost_per_run":
        runs, cost = _number(entry, "runs"), _number(entry, "cost_usd")
        return cost / runs if runs and cost is not None else None
    value: float = entry.get(metric, 0)  # a number: load_report checked it
    return value


def _row(
    base: dict[str, Any] | None, head: dict[str, Any] | None, metrics: tuple[str, ...]
) -> dict[str, Any]:
    status = "new" if base is None else "removed" if head is None else "unchanged"
    out: dict[str, dict[str, float | None]] = {}
    for metric in metrics:
        b, h = _number(base, metric), _number(head, metric)
        delta = None if b is None or h is None else h - b
        if metric in _COSTS and delta is not None:
            delta = round(delta, 12)  # no float noise in a diff of equal costs
        pct = None if delta is None or not b else delta / b * 100
        out[metric] = {"base": b, "head": h, "delta": delta, "pct": pct}
        if status == "unchanged" and delta:
            status = "changed"
    return {"status": status, "metrics": out, "cost_gaps": {}, "failed_calls": {}}


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _cost_gaps(report: dict[str, Any], lens: str | None) -> str:
    """Why a lens's cost (every lens's for None) is incomplete, from the report's usage rows."""
    unpriced: Counter[str] = Counter()
    no_usage: Counter[str] = Counter()
    for row in report.get("usage", ()):
        if isinstance(row, dict) and lens in (None, row.get("lens")):
            model = str(row.get("model") or "<no model>")
            no_usage[model] += _count(row.get("no_usage_calls"))
            unpriced[model] += max(_count(row.get("uncosted_calls")) - _count(row.get("no_usage_calls")), 0)
    parts = []
    for what, counts in (
        ("no known price for model", +unpriced),
        ("no usage reported by calls to", +no_usage),
    ):
        if counts:
            calls = (f"{m!r} ({n} call{'s' if n != 1 else ''})" for m, n in sorted(counts.items()))
            parts.append(f"{what} {', '.join(calls)}")
    return "; ".join(parts) or "calls with no known cost"


def _price_data(report: dict[str, Any]) -> str:
    """The price data a report's costs come from ("'genai-prices 0.2.3', 'price-file'"), "" if none."""
    rows = [row for row in report.get("usage", ()) if isinstance(row, dict)]
    return ", ".join(sorted({repr(str(row["cost_source"])) for row in rows if row.get("cost_source")}))


def _code(text: str) -> str:
    """``text`` as a Markdown code span that a backtick inside cannot end early (CommonMark: a fence
    longer than any run of backticks inside, padded with a space)."""
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


def _listed(names: list[str]) -> str:
    """The first five names, then how many more."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# pytest's exit statuses of a run that stopped before running every test it was asked to
_STOPPED: Final = {
    2: "interrupted: a collection error, or Ctrl-C",
    3: "an internal error",
    4: "a usage error",
    5: "no tests collected",
}


def _flags(name: str, path: str, report: dict[str, Any]) -> list[str]:
    """What makes a report's numbers untrustworthy: a run stopped early, failed tests, failed calls,
    unpriced calls."""
    out = []
    if (status := report.get("exit_status")) in _STOPPED:
        out.append(
            f"the {name} run ({path}) stopped early: pytest exit status {status} ({_STOPPED[status]}); "
            "its report leaves out every test that did not run"
        )
    failed = report.get("failed_tests", [])
    if failed:
        names = _listed([_code(t) for t in failed])
        out.append(
            f"the {name} report ({path}) has {len(failed)} failed test(s): {names}; its numbers leave out "
            "what those tests did not get to do"
        )
    errors = _number(report["total"], "errors") or 0
    if errors:
        out.append(
            f"the {name} report ({path}) counts {int(errors)} failed call(s) (cassette misses or API "
            "errors): calls that failed cost nothing and used no tokens"
        )
    unpriced = [_code(n) for n, e in report["lenses"].items() if e.get("cost_complete") is False]
    if unpriced or report["total"].get("cost_complete") is False:
        where = f" in {len(unpriced)} lens(es): {_listed(unpriced)}" if unpriced else ""
        out.append(
            f"the {name} report ({path}) has calls with no known cost{where}; their cost (marked *) "
            "leaves them out"
        )
    return out


def diff_reports(
    base: dict[str, Any] | None, head: dict[str, Any], *, base_path: str = "base", head_path: str = "head"
) -> dict[str, Any]:
    """The JSON form of the diff: per lens (and total) base, head, delta and percent per metric.

    ``base`` None stands for a missing base report: every lens is new, and a flag says why.
    """
    flags = []
    if base is None:
        flags.append(
            f"no base report at {base_path}: every lens is shown as new (the base branch may not run "
            "llm-ledger yet, or its test run wrote no report)"
        )
        base = {"lenses": {}, "total": {}}
    else:
        flags += _flags("base", base_path, base)
    flags += _flags("head", head_path, head)
    base_from, head_from = _price_data(base), _price_data(head)
    if base_from and head_from and base_from != head_from:
        flags.append(
            f"the reports were priced with different price data (base: {base_from}; head: {head_from}): a "
            "cost may change with no change in tokens; run both with the same llm-ledger, genai-prices "
            "and price file"
        )
    ran = set(head.get("tests", ())) | set(head.get("failed_tests", ()))
    if idle := [_code(t) for t in sorted(set(base.get("tests", ())) - ran)]:
        flags.append(
            f"{len(idle)} test(s) of the base report made no call in the head report ({head_path}): "
            f"{_listed(idle)} (not run: deselected, skipped, renamed or deleted; or no call left); a lens "
            "shown as removed may only not have run"
        )
    names = sorted(set(base["lenses"]) | set(head["lenses"]))
    lenses = {n: _row(base["lenses"].get(n), head["lenses"].get(n), LENS_METRICS) for n in names}
    total = _row(base["total"] or None, head["total"], TOTAL_METRICS)
    for name, row in [*lenses.items(), (None, total)]:
        # a side whose cost leaves out calls with no known cost: why (its costs are lower bounds, marked *)
        for side, report in (("base", base), ("head", head)):
            entry = report["total"] if name is None else report["lenses"].get(name)
            if entry and entry.get("cost_complete") is False:
                row["cost_gaps"][side] = _cost_gaps(report, name)
            if entry and entry.get("errors"):  # calls that failed (cassette misses) count no tokens
                row["failed_calls"][side] = int(entry["errors"])
    return {"schema": "llm-ledger-diff", "version": 1, "flags": flags, "lenses": lenses, "total": total}


def increases(diff: dict[str, Any], pct: float) -> list[str]:
    """The lenses whose cost per run grew by more than ``pct`` percent (from zero counts as infinite),
    or cannot be told (it fails closed): the head's cost leaves out calls the base's did not."""
    out = []
    for name, row in diff["lenses"].items():
        m, gaps = row["metrics"]["cost_per_run"], row["cost_gaps"]
        if m["base"] is None or m["head"] is None:
            continue
        if "head" in gaps and gaps["head"] != gaps.get("base"):
            out.append(f"{_code(name)}: cost per run cannot be checked: head: {gaps['head']}")
        elif not m["delta"] or m["delta"] < 0:
            continue
        elif m["pct"] is None or m["pct"] > pct:
            grown = "from nothing" if m["pct"] is None else f"{m['pct']:+.1f}%"
            out.append(f"{_code(name)}: cost per run {_usd(m['base'])} -> {_usd(m['head'])} ({grown})")
    return out


def _grew(diff: dict[str, Any]) -> str:
    unchecked = any("cannot be checked" in line for line in diff["increases"])
    return f"cost per run grew by more than {diff['fail_on_increase']:g}%" + (
        ", or cannot be checked" if unchecked else ""
    )


def _fmt(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if metric in _COSTS:
        return _usd(value, signed)
    sign = "+" if signed and value > 0 else ""
    return f"{sign}{int(value):,}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%"


def _cells(diff: dict[str, Any]) -> list[tuple[str, dict[str, Any], list[list[str]]]]:
    """(section name, its diff row, [metric, base, head, delta, pct] cells) for every lens and the total."""
    out = []
    sections = [*diff["lenses"].items(), ("TOTAL", diff["total"])]
    for name, row in sections:
        rows = []
        for metric, m in row["metrics"].items():
            cells = [_fmt(metric, m["base"]), _fmt(metric, m["head"]), _fmt(metric, m["delta"], signed=True)]
            cells.append(_pct(m["pct"]))
            if metric in _COSTS:  # a lower bound: * on each side that leaves calls out, and on its change
                marked = [side in row["cost_gaps"] for side in ("base", "head")]
                marked += [any(marked)] * 2
                cells = [c + "*" if mark and c != "—" else c for c, mark in zip(cells, marked, strict=True)]
            rows.append([DIFF_METRICS[metric], *cells])
        out.append((name, row, rows))
    return out


def _notes(row: dict[str, Any]) -> list[str]:
    """What the figures of one lens (or the total) leave out, side by side."""
    notes = [f"* {side}: {gaps}: counted as $0" for side, gaps in row["cost_gaps"].items()]
    for side, count in row["failed_calls"].items():
        notes.append(
            f"{side}: {count} failed call(s) (cassette misses or API errors), not in its tokens or cost"
        )
    return notes


_HEADERS: Final = ("metric", "base", "head", "delta", "%")
_MARK: Final = {"new": " (new)", "removed": " (removed)", "changed": "", "unchanged": " (unchanged)"}


def _markdown(diff: dict[str, Any]) -> str:
    lines = ["## llm-ledger: cost diff", ""]
    for flag in diff["flags"]:
        lines += [f"> **Warning:** {flag}", ">"]
    if diff["flags"]:
        lines[-1] = ""
    changed = sum(1 for r in diff["lenses"].values() if r["status"] != "unchanged")
    shown = " (only those are shown)" if diff.get("only_changed") else ""
    lines.append(f"{diff.get('lens_count', len(diff['lenses']))} lens(es), {changed} with changes{shown}.")
    sections = _cells(diff)
    # first what a reviewer looks for: each lens's cost per run, and what --fail-on-increase failed on
    per_run = DIFF_METRICS["cost_per_run"]
    summary = [
        [f"{_code(name)}{_MARK[row['status']]}", *next(r[1:] for r in rows if r[0] == per_run)]
        for name, row, rows in sections[:-1]
    ]
    if summary:
        lines += ["", *markdown_table(("lens", "cost per run: base", "head", "delta", "%"), summary)]
    if diff.get("increases"):
        lines += ["", f"**{_grew(diff).capitalize()}:**", ""]
        lines += [f"- {line}" for line in diff["increases"]]
    for name, row, rows in sections:
        title = "Total" if name == "TOTAL" else _code(name)
        lines += ["", f"### {title}{_MARK[row['status']]}", "", *markdown_table(_HEADERS, rows)]
        for note in _notes(row):
            lines += ["", note.replace("*", "\\*", 1)]  # "* " would start a list
    return "\n".join(lines) + "\n"


def _text(diff: dict[str, Any]) -> str:
    lines = [f"warning: {flag}" for flag in diff["flags"]]
    for name, row, rows in _cells(diff):
        lines.append(("total" if name == "TOTAL" else f"lens {name}") + _MARK[row["status"]])
        lines += text_table(_HEADERS, rows, indent="  ")
        lines += [f"  {note}" for note in _notes(row)]
    if diff.get("increases"):
        lines.append(f"{_grew(diff)}:")
        lines += [f"  {line}" for line in diff["increases"]]
    return "\n".join(lines) + "\n"


def render(diff: dict[str, Any], fmt: str = "markdown") -> str:
    """The diff as ``markdown``, ``text`` or ``json``."""
    if fmt == "json":
        return json.dumps(diff, indent=2, allow_nan=False) + "\n"
    if fmt == "text":
        return printable(_text(diff))
    if fmt == "markdown":
        return printable(_markdown(diff))
    raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _run(args: argparse.Namespace) -> int:
    if args.require_base and not Path(args.base).exists():
        raise ConfigError(
            f"{args.base}: report not found (--require-base); the base branch's test run wrote none: see "
            "that step's log"
        )
    base = None if not Path(args.base).exists() else load_report(args.base)
    diff = diff_reports(base, load_report(args.head), base_path=args.base, head_path=args.head)
    diff["lens_count"] = len(diff["lenses"])
    if args.only_changed:
        diff["only_changed"] = True
        diff["lenses"] = {n: r for n, r in diff["lenses"].items() if r["status"] != "unchanged"}
    if args.fail_on_increase is not None:
        diff["fail_on_increase"] = args.fail_on_increase
        diff["increases"] = increases(diff, args.fail_on_increase)
    print(render(diff, args.fmt), end="")
    for flag in diff["flags"]:
        print(f"llm-ledger diff: warning: {flag}", file=sys.stderr)
    if diff.get("increases"):
        names = ", ".join(line.split(": cost per run")[0] for line in diff["increases"])
        grew = _grew(diff)
        print(f"llm-ledger diff: {grew}{',' if grew.endswith('checked') else ''} in {names}", file=sys.stderr)
        return 1
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a percentage, e.g. 20)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a percentage of 0 or more, e.g. 20")
    return value


def register(subparsers: Any, summary: str) -> None:
    parser = add_command(
        subparsers,
        "diff",
        summary,
        _run,
        formats=FORMATS,
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="exit status: 0 compared, 1 --fail-on-increase exceeded, 2 a report could not be used",
    )
    parser.add_argument(
        "base", help="report of the base (e.g. the main branch); missing means every lens is new"
    )
    parser.add_argument("head", help="report of the head (e.g. the pull request)")
    parser.add_argument("--only-changed", action="store_true", help="leave out lenses that did not change")
    parser.add_argument(
        "--require-base",
        action="store_true",
        help="a missing base report is an error (once the base branch writes one), not every lens new",
    )
    parser.add_argument(
        "--fail-on-increase",
        type=_percent,
        metavar="PCT",
        help="exit 1 when any lens's cost per run grows by more than PCT percent, naming it",
    )
