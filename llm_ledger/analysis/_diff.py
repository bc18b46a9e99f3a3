"""``llm-ledger diff BASE.json HEAD.json``: what changed in calls, tokens and cost, lens by lens.

Reads two ``--llm-report`` files (schema ``llm-ledger-report``, version 1) written by the pytest
plugin, typically one from the base branch and one from the pull request (either may be a directory or
a glob of a sharded run's reports, summed as one run's), or with ``--logs`` two sets
of production logs (last week's and this week's, before and after a change), and prints a table per
lens with base, head, delta and percent change. Lenses only in HEAD are marked new, lenses only in
BASE removed; each lens also shows its runs and its cost per run, and calls made outside any lens
have a row of their own, "(no lens)". ``--format markdown`` (the default) is fit for a PR comment or
``$GITHUB_STEP_SUMMARY`` and stays under GitHub's size limit for a comment; ``text`` is for terminals;
``json`` for other tools.

What makes its numbers untrustworthy (flagged at the top and on stderr), a missing BASE,
``--only-changed`` and ``--fail-on-increase`` are described for users in docs/CI.md. This module reads
the reports and computes the diff; :mod:`._render_diff` writes it.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from .._cli import add_command
from .._errors import ConfigError
from .._records import CALL_EVENT, LENS_EVENT
from .._table import code
from ..loading import join, read_file, shown, strict_loads
from ._aggregate import EVENTS, CostRow, aggregate, as_text, make_query
from ._read import COSTS_JSON, GLOB_CHARS, PERIODS, REPORT_SCHEMA, STDIN, LogReader, missing, warn_unread
from ._render_diff import COSTS, DIFF_METRICS, FORMATS, Flag, exit_message, plain, render
from ._shards import merge_reports
from ._usage import COUNTS, NO_ANSWER, NO_LENS, _epoch, cost_gaps, failed_calls, model_name

__all__ = ["DIFF_METRICS", "diff_reports", "increases", "load_logs", "load_report", "register", "render"]

SUPPORTED_VERSIONS: Final = (1,)
TOTAL_METRICS: Final = ("api_calls", "total_tokens", "cost_usd")
_LENS_FIGURES: Final = ("runs", "api_calls", "total_tokens", "cost_usd", "errors")
# kind of entry -> the figures read from it: whole numbers >= 0, costs any number >= 0
_FIGURES: Final = {
    "lens": (*_LENS_FIGURES, "cut_short_runs"),
    "total": _LENS_FIGURES,
    "usage": (*COUNTS, "cost_usd"),
}
# the figures every report of a version has had since that version was first written (a hand-edited one
# may lack one, which would read as 0); fields added to a version later stay optional, 0 when absent
_REQUIRED: Final = {
    "lens": _LENS_FIGURES,
    "total": _LENS_FIGURES[1:],
    "usage": ("calls", "prompt_tokens", "completion_tokens", "cost_usd", "uncosted_calls"),
}
_MAX_METRIC: Final = 1e15  # larger counts or costs are not real, and would overflow a percentage
MAX_REPORT_BYTES: Final = 64 << 20
# a usage row's counts of calls whose cost is left out: a lens's cost is then incomplete
_INCOMPLETE: Final = ("uncosted_calls", "tool_fee_calls", "pending_calls", "lost_answer_calls")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check an llm-ledger report (``-``: from stdin); :class:`ConfigError` says what is wrong
    with it."""
    name = str(path)
    hint = f"; write one with `pytest --llm-report={'FILE' if name == STDIN else name}`"
    if name == STDIN:
        raw = sys.stdin.buffer.read(MAX_REPORT_BYTES + 1)
        if len(raw) > MAX_REPORT_BYTES:
            raise ConfigError(f"{name}: is over {MAX_REPORT_BYTES:,} bytes, too big for a report")
    else:
        raw = read_file(name, ConfigError, "report", hint=hint, max_bytes=MAX_REPORT_BYTES, streams=True)
    try:
        data = strict_loads(raw)
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be an llm-ledger report") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        _refuse_log(name, raw)
        raise ConfigError(
            f"{name}: not JSON ({exc}); expected a file written by pytest --llm-report"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        _refuse_log(name, raw)
        if isinstance(data, dict) and {"by", "rows", "total"} <= data.keys():
            raise ConfigError(
                f"{name}: {COSTS_JSON}, not a pytest --llm-report file, which this reads; {PERIODS}"
            )
        raise ConfigError(f'{name}: not an llm-ledger report (no "schema": {REPORT_SCHEMA!r}){hint}')
    if data.get("version") not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"{name}: report version {shown(data.get('version'))} is not supported; this llm-ledger reads "
            f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    for section in ("lenses", "total"):
        if section not in data:
            raise ConfigError(f"{name}: no {section!r}: not a whole report{hint}")
    for section, shape in (("lenses", dict), ("total", dict), ("tests", dict), ("usage", list)):
        if not isinstance(data.get(section, shape()), shape):
            raise ConfigError(f"{name}: {section!r} must be {'an object' if shape is dict else 'a list'}")
    if data.get("exit_status") is not None and type(data["exit_status"]) is not int:
        raise ConfigError(
            f"{name}: exit_status: expected pytest's exit status, got {shown(data['exit_status'])}"
        )
    _test_ids(name, "failed_tests", data.get("failed_tests", []))
    if data.get("budgets") is not None and not _budgets_ok(data["budgets"]):
        raise ConfigError(
            f"{name}: budgets: expected what --llm-budget found, as pytest --llm-report writes it ('file', "
            f"'exceeded', 'no_budget'), got {shown(data['budgets'])}"
        )
    entries = [(join("lenses", lens), entry, "lens") for lens, entry in data["lenses"].items()]
    entries += [(f"usage[{i}]", row, "usage") for i, row in enumerate(data.get("usage", ()))]
    for where, entry, kind in [*entries, ("total", data["total"], "total")]:
        if not isinstance(entry, dict):
            raise ConfigError(f"{name}: {where} must be an object")
        _test_ids(name, f"{where}.tests_with_failed_calls", entry.get("tests_with_failed_calls", []))
        _test_ids(name, f"{where}.tests", entry.get("tests", []) if kind != "total" else [])
        if problem := _problem(kind, entry):
            field = problem.partition(":")[0]
            raise ConfigError(f"{name}: {where}.{problem}, got {shown(entry.get(field, 0))}")
        if missing := [metric for metric in _REQUIRED[kind] if metric not in entry]:
            raise ConfigError(
                f"{name}: {where}.{missing[0]}: missing, which every version-{data['version']} report has "
                "(it would read as 0); write the report again with `pytest --llm-report`"
            )
    return data


def load_reports(name: str) -> dict[str, Any]:
    """The report ``name`` is, or the one report of a sharded run (:func:`merge_reports`) when it is a
    directory or a glob of the shards' reports (:func:`_reports_in`), each checked by :func:`load_report`."""
    files = _reports_in(name)
    if not files and (os.path.isdir(name) or GLOB_CHARS & set(name)):
        where = "holds no report (no *.json file)" if os.path.isdir(name) else "matches no file"
        raise ConfigError(
            f"{name!r} {where}; give a report, or the reports of a sharded run's shards as a directory or a "
            "quoted glob, written by `pytest --llm-report=FILE.json`"
        )
    if len(files) <= 1:
        return load_report(files[0] if files else name)  # no file: its error says so
    return merge_reports([(file, load_report(file)) for file in files])


def _reports_in(name: str) -> list[str]:
    """The report files ``name`` names: itself, a directory's ``*.json`` files (its subdirectories' too:
    shards' artifacts downloaded each into its own), or a glob's matches; none when nothing has the name."""
    if os.path.isdir(name):
        return sorted(str(path) for path in Path(name).rglob("*.json") if path.is_file())
    if GLOB_CHARS & set(name) and not os.path.exists(name):
        return sorted(match for match in glob.glob(name, recursive=True) if os.path.isfile(match))
    return [] if name != STDIN and missing(name) else [name]


def load_logs(path: str) -> dict[str, Any]:
    """Logs (a file, a directory of logs or a glob) as the report :func:`diff_reports` compares: the rows
    of ``llm-ledger report --by lens``, the calls outside any lens as ``no_lens``."""
    report = aggregate(LogReader([path], events=EVENTS), make_query("lens"))
    warn_unread("diff", report.inputs)

    def entry(row: CostRow) -> dict[str, Any]:
        return {"runs": row.lens_runs, "cut_short_runs": row.cut_short_runs, "api_calls": row.calls,
                "total_tokens": row.total_tokens, "cost_usd": float(row.cost_usd), "errors": row.errors,
                "cost_complete": row.cost_complete}  # fmt: skip

    lenses = {as_text(r.key["lens"]): entry(r) for r in report.rows if r.key["lens"] is not None}
    outside = [entry(r) for r in report.rows if r.key["lens"] is None]
    # no_lens (None when none) sets logs apart from a report, whose usage rows hold those calls
    return {"lenses": lenses, "total": entry(report.total), "no_lens": outside[0] if outside else None}


def _problem(kind: str, entry: dict[str, Any]) -> str:
    """What is wrong with a figure of a report's entry ("calls: expected a whole number >= 0"), or ""."""
    for metric in _FIGURES[kind]:
        value, cost = entry.get(metric, 0), metric == "cost_usd"
        if type(value) not in ((int, float) if cost else (int,)) or not 0 <= value <= _MAX_METRIC:
            return f"{metric}: expected {'a number' if cost else 'a whole number'} >= 0"
    # a usage row written before the plugin kept a tier or a time has none
    if kind == "usage" and not isinstance(entry.get("service_tier"), str | None):
        return "service_tier: expected a tier name or null"
    if kind == "usage" and entry.get("at") is not None and _epoch(entry["at"]) is None:
        return "at: expected an ISO date-time or null"
    uses = entry.get("tool_uses", {}) if kind == "usage" else {}
    if not isinstance(uses, dict) or any(
        type(n) is not int or not 0 <= n <= _MAX_METRIC for n in uses.values()
    ):
        return "tool_uses: expected an object of built-in tool kind to whole number of uses >= 0"
    return ""


def _budgets_ok(budgets: Any) -> bool:
    """Whether a report's ``budgets`` (a run with --llm-budget) has the shape the diff reads."""
    if not isinstance(budgets, dict) or not isinstance(budgets.get("file"), str):
        return False
    lenses, exceeded = budgets.get("no_budget"), budgets.get("exceeded")
    return (
        isinstance(lenses, list)
        and all(isinstance(key, str) for key in lenses)
        and isinstance(exceeded, list)
        and all(
            isinstance(e, dict)
            and all(isinstance(e.get(k), str) for k in ("scope", "name", "limit", "worst_test"))
            and all(
                type(e.get(k)) in (int, float) or (k == "actual" and k in e and e[k] is None)
                for k in ("max", "actual")
            )
            for e in exceeded
        )
    )


def _refuse_log(name: str, raw: str | bytes) -> None:
    """:class:`ConfigError` naming `llm-ledger report` when ``raw`` starts with a ledger record: a log
    of calls given where a report was expected."""
    try:
        first = strict_loads(raw.splitlines()[0]) if raw.strip() else None
    except (ValueError, RecursionError):
        return
    if isinstance(first, dict) and first.get("event") in (CALL_EVENT, LENS_EVENT):
        raise ConfigError(
            f"{name}: a log of calls, not a pytest --llm-report file; compare logs with `llm-ledger diff "
            f"--logs BASE HEAD`, summarise it with `llm-ledger report {name}`; write a report with "
            "`pytest --llm-report=PATH`"
        )


def _test_ids(name: str, where: str, tests: Any) -> None:
    if not isinstance(tests, list) or not all(isinstance(test, str) for test in tests):
        raise ConfigError(f"{name}: {where}: expected a list of test ids, got {shown(tests)}")


def _number(entry: dict[str, Any] | None, metric: str) -> float | None:
    if entry is None:
        return None
    if metric == "cost_per_run":
        runs: int = entry.get("runs", 0)
        return entry.get("cost_usd", 0) / runs if runs else None
    value: float = entry.get(metric, 0)  # a number: load_report checked it
    return value


def _row(
    lens: str | None,
    reports: tuple[dict[str, Any], dict[str, Any]],
    entries: list[Any],
    metrics: Iterable[str],
) -> dict[str, Any]:
    """The diff of one lens (NO_LENS: the calls outside any lens; None: the total) from its entries
    in the base and head ``reports`` (None where it has none)."""
    base, head = entries
    status = "new" if base is None else "removed" if head is None else "unchanged"
    out: dict[str, dict[str, float | None]] = {}
    for metric in metrics:
        b, h = _number(base, metric), _number(head, metric)
        delta = None if b is None or h is None else h - b
        if metric in COSTS and delta is not None:
            delta = round(delta, 12)  # no float noise in a diff of equal costs
        # rounded past any figure shown, so "more than PCT%" never turns on float noise (0.7 -> 0.77)
        pct = None if delta is None or not b else round(delta / b * 100, 9)
        out[metric] = {"base": b, "head": h, "delta": delta, "pct": pct}
        if status == "unchanged" and delta:
            status = "changed"
    row: dict[str, Any] = {"status": status, "metrics": out}
    row |= {"cost_gaps": {}, "failed_calls": {}, "failed_call_tests": {}, "cut_short_runs": {}}
    for side, report, entry in zip(("base", "head"), reports, entries, strict=True):
        if entry and entry.get("cut_short_runs"):  # runs never summarised: counted from their calls
            row["cut_short_runs"][side] = entry["cut_short_runs"]
        # a side whose cost leaves out calls with no known cost: why (its costs are lower bounds, marked *)
        if entry and entry.get("cost_complete") is False:
            row["cost_gaps"][side] = _cost_gaps(report, lens)
        if entry and entry.get("errors", 0) != 0:  # failed calls (cassette misses) count no tokens
            errors = entry["errors"]  # None: unknown (an older report)
            row["failed_calls"][side] = None if errors is None else int(errors)
            if entry.get("tests_with_failed_calls"):
                row["failed_call_tests"][side] = entry["tests_with_failed_calls"]
    if lens not in (None, NO_LENS):  # the models its calls asked for: a swap explains a change in cost
        row["models"] = {
            side: _models(report, lens)
            for side, report, entry in zip(("base", "head"), reports, entries, strict=True)
            if entry
        }
    # the same figures, but what they leave out, or the models, changed: --only-changed keeps it
    models = row.get("models", {})
    if status == "unchanged" and (
        row["cost_gaps"].get("base") != row["cost_gaps"].get("head")
        or (all(models.values()) and models.get("base") != models.get("head"))
    ):
        row["status"] = "changed"
    return row


def _models(report: dict[str, Any], lens: str) -> list[str]:
    """The models the calls of a lens asked for, from a report's usage rows (none in a report written
    before it had them)."""
    rows = [r for r in report.get("usage", ()) if (r.get("lens") or NO_LENS) == lens]
    return sorted({model_name(r.get("model"), r.get("served_model")) for r in rows})


def _no_lens(report: dict[str, Any]) -> dict[str, Any] | None:
    """The calls of a report made outside any lens, summed from its usage rows (lens "<no lens>"),
    as a lens entry; None when it has none. Its ``errors`` is None when unknown: usage rows written
    before they counted failed calls, in a run that had some."""
    rows = [row for row in report.get("usage", ()) if (row.get("lens") or NO_LENS) == NO_LENS]
    if not rows:
        return report.get("no_lens")  # from logs
    counted = all("failed_calls" in row for row in rows) or not report["total"].get("errors")
    return {
        "api_calls": sum(row.get("calls", 0) for row in rows),
        "total_tokens": sum(
            row.get("total_tokens", row.get("prompt_tokens", 0) + row.get("completion_tokens", 0))
            for row in rows
        ),
        "cost_usd": sum(row.get("cost_usd", 0) for row in rows),
        "cost_complete": not any(row.get(count) for row in rows for count in _INCOMPLETE),
        "errors": sum(row.get("failed_calls", 0) for row in rows) if counted else None,
        "tests_with_failed_calls": sorted(
            {t for row in rows for t in row.get("tests_with_failed_calls", ())}
        ),
    }


def _cost_gaps(report: dict[str, Any], lens: str | None) -> str:
    """Why a lens's cost (every lens's for None) is incomplete, from the report's usage rows."""
    reasons = ("unpriced", "no_usage", "units", "tool_fees", "pending", "total_only", "lost")
    calls: dict[str, Counter[str]] = {reason: Counter() for reason in reasons}
    for row in report.get("usage", ()):  # load_report checked their counts
        if lens in (None, row.get("lens")):
            model = model_name(row.get("model"), row.get("served_model"))
            n = {count: row.get(count, 0) for count in COUNTS}
            # no_usage_calls holds unpriced_unit_calls and total_only_calls; uncosted_calls holds it
            calls["no_usage"][model] += max(
                n["no_usage_calls"] - n["unpriced_unit_calls"] - n["total_only_calls"], 0
            )
            calls["unpriced"][model] += max(n["uncosted_calls"] - n["no_usage_calls"], 0)
            calls["units"][model] += n["unpriced_unit_calls"]
            calls["total_only"][model] += n["total_only_calls"]
            calls["tool_fees"][model] += n["tool_fee_calls"]
            calls["pending"][model] += n["pending_calls"]
            calls["lost"][model] += n["lost_answer_calls"]
    return cost_gaps(**calls)


def _calling(report: dict[str, Any]) -> set[str]:
    """The node ids of a report's tests that made calls (it lists every test that ran)."""
    return {
        t
        for t, entry in report.get("tests", {}).items()
        if isinstance(entry, dict) and entry.get("api_calls")
    }


def _price_data(report: dict[str, Any]) -> str:
    """The price data a report's costs come from ("'genai-prices X.Y.Z', 'price-file'"), "" if none."""
    sources = {repr(str(row["cost_source"])) for row in report.get("usage", ()) if row.get("cost_source")}
    return ", ".join(sorted(sources))


# pytest's exit statuses of a run that stopped before running every test it was asked to
_STOPPED: Final = {
    2: "interrupted: a collection error, or Ctrl-C",
    3: "an internal error",
    4: "a usage error",
    5: "no tests collected",
}


def _flags(name: str, path: str, report: dict[str, Any]) -> Iterator[Flag]:
    """What makes a report's numbers untrustworthy: a run stopped early, failed tests, failed calls,
    unpriced calls."""
    source = "log set" if "no_lens" in report else "report"
    if (status := report.get("exit_status")) in _STOPPED:
        yield Flag(
            f"the {name} run ({path}) stopped early: pytest exit status {status} ({_STOPPED[status]}); "
            "its report leaves out every test that did not run"
        )
    if failed := report.get("failed_tests", []):
        yield Flag(
            f"the {name} report ({path}) has {len(failed)} failed test(s): ",
            failed,
            "; its numbers leave out what those tests did not get to do",
        )
    if errors := _number(report["total"], "errors"):
        yield Flag(f"the {name} {source} ({path}) counts {failed_calls(int(errors))}: {NO_ANSWER}")
    if cut := [n for n, e in report["lenses"].items() if e.get("cut_short_runs")]:
        yield Flag(
            f"the {name} {source} ({path}) has lens runs cut short (their lens_summary never came) in "
            f"{len(cut)} lens(es): ",
            cut,
            "; their figures count only the calls that had ended",
        )
    unpriced = [n for n, e in report["lenses"].items() if e.get("cost_complete") is False]
    if unpriced or report["total"].get("cost_complete") is False:
        yield Flag(
            f"the {name} {source} ({path}) has calls with no known cost"
            + (f" in {len(unpriced)} lens(es): " if unpriced else ""),
            unpriced,
            "; their cost (marked *) leaves them out",
        )


def diff_reports(
    base: dict[str, Any] | None, head: dict[str, Any], *, base_path: str = "base", head_path: str = "head"
) -> dict[str, Any]:
    """The JSON form of the diff: per lens (and total) base, head, delta and percent per metric.

    ``base`` None stands for a missing base report: every lens is new, and a flag says why. The flags
    come twice: ``flags`` names lenses and tests as Markdown code spans, ``flags_text`` in plain text.
    """
    has_base = base is not None
    base = base if base is not None else {"lenses": {}, "total": {}, "usage": []}
    flags = list(_report_flags(base, head, (base_path, head_path), has_base))
    reports = base, head
    names = sorted(set(base["lenses"]) | set(head["lenses"]))
    lenses = {
        n: _row(n, reports, [base["lenses"].get(n), head["lenses"].get(n)], DIFF_METRICS) for n in names
    }
    for new, old in _renames(base, head, lenses).items():
        lenses[new]["renamed_from"] = old
    # a report without usage rows (written before they were) cannot say what ran outside any lens
    outside = [_no_lens(base), _no_lens(head)]
    known = all("usage" in report or "no_lens" in report for report in reports)
    no_lens = _row(NO_LENS, reports, outside, TOTAL_METRICS) if known and outside != [None, None] else None
    total = _row(None, reports, [base["total"] or None, head["total"]], TOTAL_METRICS)
    return {
        "schema": "llm-ledger-diff",
        "version": 1,
        "reports": {"base": base_path, "head": head_path},
        "has_base": has_base,
        "flags": [flag.say(code) for flag in flags],
        "flags_text": [flag.say(plain) for flag in flags],
        "lenses": lenses,
        "no_lens": no_lens,
        "total": total,
        "budgets": head.get("budgets"),  # what --llm-budget found in the head run; None without it
    }


def _report_flags(
    base: dict[str, Any], head: dict[str, Any], paths: tuple[str, str], has_base: bool
) -> Iterator[Flag]:
    """What makes the diff of two reports untrustworthy (``base`` empty when ``has_base`` is false)."""
    base_path, head_path = paths
    if not has_base:
        yield Flag(
            f"no base report at {base_path}: every lens is shown as new (the base branch may not run "
            "llm-ledger yet, or its test run wrote no report)"
        )
    else:
        yield from _flags("base", base_path, base)
    yield from _flags("head", head_path, head)
    base_from, head_from = _price_data(base), _price_data(head)
    if base_from and head_from and base_from != head_from:
        yield Flag(
            f"the reports were priced with different price data (base: {base_from}; head: {head_from}): a "
            "cost may change with no change in tokens; run both with the same llm-ledger, genai-prices "
            "and price file"
        )
    ran = _calling(head) | set(head.get("failed_tests", ()))
    if idle := sorted(_calling(base) - ran):
        yield Flag(
            f"{len(idle)} test(s) of the base report made no call in the head report ({head_path}): ",
            idle,
            " (not run: deselected, skipped, renamed or deleted; or no call left); a lens shown as removed "
            "may only not have run",
        )


def _renames(base: dict[str, Any], head: dict[str, Any], lenses: dict[str, Any]) -> dict[str, str]:
    """New lens -> the removed lens it may be renamed from: the one removed lens run by exactly the
    same tests (the reports' lens ``tests``; none in a report written before they were)."""
    groups: dict[tuple[str, ...], dict[str, list[str]]] = {}
    for name, row in lenses.items():
        report = {"removed": base, "new": head}.get(row["status"])
        if report is not None and (tests := tuple(report["lenses"][name].get("tests", ()))):
            groups.setdefault(tests, {"removed": [], "new": []})[row["status"]].append(name)
    return {g["new"][0]: g["removed"][0] for g in groups.values() if len(g["new"]) == len(g["removed"]) == 1}


def increases(diff: dict[str, Any], pct: float) -> list[dict[str, Any]]:
    """What fails ``--fail-on-increase PCT``, each as ``{"scope": "lens" | "no_lens" | "total", "lens":
    name or None, "reason": "grew" | "new" | "unchecked", "metric", "base", "head", "pct", "cost_gaps"}``
    (docs/CI.md says when each fails). Nothing is compared without a base report.
    """
    if diff.get("has_base") is False:
        return []
    rows = [("lens", name, row, "cost_per_run") for name, row in diff["lenses"].items()]
    if diff.get("no_lens"):
        rows.append(("no_lens", None, diff["no_lens"], "cost_usd"))
    rows.append(("total", None, diff["total"], "cost_usd"))
    # a side with lens runs cut short: their calls still open count in no total either
    runs_cut: Counter[str] = Counter()
    for row in diff["lenses"].values():
        runs_cut.update(row["cut_short_runs"])
    out = []
    for scope, name, row, metric in rows:
        m, gaps, failed = row["metrics"][metric], row["cost_gaps"], row["failed_calls"]
        if m["head"] is None:  # removed: a decrease
            continue
        cut = {}  # side -> why its cost is a lower bound: lens runs cut short
        if scope == "lens":
            runs = row["metrics"]["runs"]
            cut = {
                side: f"{side}: {n} of {runs[side]:g} runs cut short (their lens_summary never came), which "
                "count only their ended calls"
                for side, n in row["cut_short_runs"].items()
            }
        elif scope == "total":
            cut = {
                side: f"{side}: {n} lens run(s) cut short, whose calls still open count nowhere"
                for side, n in runs_cut.items()
            }
        why = None  # why it cannot be checked: a side's cost leaves out calls the other's does not
        if "head" in gaps and gaps["head"] != gaps.get("base"):
            reason, why = "unchecked", f"head: {gaps['head']}"
        elif "head" in cut:  # its cost per run is a lower bound: it can hide an increase
            reason, why = "unchecked", cut["head"]
        elif m["base"] is None:
            if not m["head"]:
                continue
            reason = "new" if scope == "lens" else "grew"
        elif not m["delta"] or m["delta"] < 0 or (m["pct"] is not None and m["pct"] <= pct):
            continue  # a head below even the known part of the base's cost is a decrease
        elif "base" in gaps and "head" not in gaps:  # grown from a base cost that was only a lower bound
            reason, why = "unchecked", f"base: {gaps['base']}"
        elif "base" in failed and "head" not in failed:  # the same: its failed calls counted no cost
            count = "some" if failed["base"] is None else failed["base"]
            reason = "unchecked"
            why = f"base: {failed_calls(count)}, which count no cost"
        elif "base" in cut:  # the same: its cut-short runs counted only their ended calls
            reason, why = "unchecked", cut["base"]
        else:
            reason = "grew"
        renamed = {"renamed_from": row["renamed_from"]} if row.get("renamed_from") is not None else {}
        out.append(_increase(scope, name, reason, metric, m, why) | renamed)
    return out


def _increase(
    scope: str, lens: str | None, reason: str, metric: str, m: dict[str, Any], why: str | None
) -> dict[str, Any]:
    """One entry of :func:`increases`, from the metric's figures ``m`` in the diff."""
    return {"scope": scope, "lens": lens, "reason": reason, "metric": metric, "base": m["base"],
            "head": m["head"], "pct": m["pct"], "cost_gaps": why}  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    # logs: a base that is not there is an error; a report not readable is one too, not no base
    if args.base == args.head == STDIN:
        raise ConfigError(
            "BASE and HEAD are both - (stdin), which can be read once; give one of them as a file"
        )
    load = load_logs if args.logs else load_reports
    base = load(args.base) if args.logs or _reports_in(args.base) else None
    if base is None and args.require_base:
        raise ConfigError(
            f"{args.base}: report not found (--require-base); the base branch's test run wrote none: see "
            "that step's log"
        )
    # a base run that stopped early never reached some lenses: they would read as new, and fail
    stopped = None if base is None else base.get("exit_status")
    if stopped in _STOPPED and args.require_base:
        raise ConfigError(
            f"{args.base}: its run stopped early: pytest exit status {stopped} ({_STOPPED[stopped]}) "
            "(--require-base); the base branch's test run measured only what it reached: see that step's log"
        )
    head = load(args.head)
    diff = diff_reports(base, head, base_path=args.base, head_path=args.head)
    if args.logs:
        diff["logs"] = True
    diff["lens_count"] = len(diff["lenses"])
    if args.fail_on_increase is not None:
        diff["fail_on_increase"] = args.fail_on_increase
        diff["increases"] = [] if stopped in _STOPPED else increases(diff, args.fail_on_increase)
        if (cut := head.get("exit_status")) in _STOPPED:  # every lens reads as removed: fail closed
            m = diff["total"]["metrics"]["cost_usd"]
            why = f"head: its run stopped early: pytest exit status {cut} ({_STOPPED[cut]})"
            diff["increases"] = [i for i in diff["increases"] if i["scope"] != "total"]
            diff["increases"].append(_increase("total", None, "unchecked", "cost_usd", m, why))
        if stopped in _STOPPED:  # a warning that names no lens or test: the same in both
            flag = (
                f"the base run ({args.base}) stopped early, so --fail-on-increase compared nothing: a "
                "lens it never reached would read as new (--require-base fails the job on such a base)"
            )
            diff["flags"].append(flag)
            diff["flags_text"].append(flag)
    if args.only_changed:  # after --fail-on-increase: a lens that reads unchanged may not be checked
        failing = {i["lens"] for i in diff.get("increases", ())}
        diff["only_changed"] = True
        diff["lenses"] = {
            n: r for n, r in diff["lenses"].items() if r["status"] != "unchanged" or n in failing
        }
    print(render(diff, args.fmt), end="")
    for flag in diff["flags_text"]:
        print(f"llm-ledger diff: warning: {flag}", file=sys.stderr)
    if diff.get("increases"):
        print(f"llm-ledger diff: {exit_message(diff)}", file=sys.stderr)
        return 1
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text.removesuffix("%"))  # 25% is 25: what users write
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number (a percentage, e.g. 20)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a percentage of 0 or more, e.g. 20")
    return value


def register(subparsers: Any, summary: str) -> None:
    parser = add_command(
        subparsers,
        "diff",
        summary,
        _run,
        formats=FORMATS,
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="exit status: 0 compared, 1 --fail-on-increase exceeded, 2 a report could not be used\n\n"
        "examples:\n"
        "  llm-ledger diff base.json head.json                      two pytest --llm-report files\n"
        "  llm-ledger diff base/ 'head-*.json'                      a sharded run's reports, each side\n"
        "  llm-ledger diff --logs logs/week45/ logs/week46/         two sets of production logs\n"
        "  llm-ledger diff --logs 'logs/llm_calls.jsonl-202611*' logs/llm_calls.jsonl --format text",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "base",
        help="report of the base (e.g. the main branch; - for stdin; a directory or a quoted glob of a "
        "sharded run's reports), missing: every lens is new; with --logs, its logs",
    )
    parser.add_argument(
        "head",
        help="report of the head (e.g. the pull request; - for stdin; a directory or a quoted glob of a "
        "sharded run's reports); with --logs, its logs",
    )
    parser.add_argument(
        "--logs",
        action="store_true",
        help="BASE and HEAD are llm-ledger logs, each a file (.gz too), a directory of logs or a quoted "
        "glob: compare production spend per lens (runs, calls, tokens, cost, cost per run), as "
        "`llm-ledger report --by lens` sums it",
    )
    parser.add_argument("--only-changed", action="store_true", help="leave out lenses that did not change")
    parser.add_argument(
        "--require-base",
        action="store_true",
        help="a missing base report, or one whose run stopped early, is an error (once the base branch "
        "writes reports), not every lens new",
    )
    parser.add_argument(
        "--fail-on-increase",
        type=_percent,
        metavar="PCT",
        help=(
            "exit 1 when a lens's cost per run, the cost of calls outside any lens or the total cost grows "
            "by more than PCT percent, or a lens absent in BASE costs money (an increase from nothing); "
            "a cost that leaves out calls with no known cost in HEAD only, or a lens with runs cut short "
            "(and the total then), fails too (it cannot be checked); each is named on stderr. Without a "
            "BASE report nothing is compared. PCT is a number, with or without %%: 25 or 25%%"
        ),
    )
