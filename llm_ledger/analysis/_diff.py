"""``llm-ledger diff BASE.json HEAD.json``: what changed in calls, tokens and cost, lens by lens.

Reads two ``--llm-report`` files (schema ``llm-ledger-report``, version 1) written by the pytest
plugin, typically one from the base branch and one from the pull request, and prints a table per
lens with base, head, delta and percent change. Lenses only in HEAD are marked new, lenses only in
BASE removed; each lens also shows its runs and its cost per run, and calls made outside any lens
have a row of their own, "(no lens)". ``--format markdown`` (the default) is fit for a PR comment or
``$GITHUB_STEP_SUMMARY`` and stays under GitHub's 65,536 characters; ``text`` is for terminals;
``json`` for other tools.

What makes its numbers untrustworthy (flagged at the top and on stderr), a missing BASE,
``--only-changed`` and ``--fail-on-increase`` are described for users in docs/CI.md.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from .._cli import add_command
from .._errors import ConfigError
from .._records import CALL_EVENT, LENS_EVENT
from .._table import NO_FIGURE, markdown_table, notes, one_line, percent, text_table, usd
from ..loading import join, listed, printable, read_file, shown
from ._read import REPORT_SCHEMA, strict_loads
from ._render import strict_json
from ._usage import COUNTS, NO_ANSWER, NO_LENS, _epoch, cost_gaps, failed_calls, model_name

__all__ = ["DIFF_METRICS", "diff_reports", "increases", "load_report", "register", "render"]

SUPPORTED_VERSIONS: Final = (1,)
# metric in the report -> label in the tables; cost_per_run is computed (cost_usd / runs)
DIFF_METRICS: Final = {
    "runs": "runs",
    "api_calls": "calls",
    "total_tokens": "tokens",
    "cost_usd": "cost (USD)",
    "cost_per_run": "cost per run",
}
TOTAL_METRICS: Final = ("api_calls", "total_tokens", "cost_usd")
_COSTS: Final = frozenset({"cost_usd", "cost_per_run"})
FORMATS: Final = ("markdown", "text", "json")
_LENS_FIGURES: Final = ("runs", "api_calls", "total_tokens", "cost_usd", "errors")
# kind of entry -> the figures read from it: whole numbers >= 0, costs any number >= 0
_FIGURES: Final = {"lens": _LENS_FIGURES, "total": _LENS_FIGURES, "usage": (*COUNTS, "cost_usd")}
# the figures every report of a version has had since that version was first written (a hand-edited one
# may lack one, which would read as 0); fields added to a version later stay optional, 0 when absent
_REQUIRED: Final = {
    "lens": _LENS_FIGURES,
    "total": _LENS_FIGURES[1:],
    "usage": ("calls", "prompt_tokens", "completion_tokens", "cost_usd", "uncosted_calls"),
}
NO_LENS_ROW: Final = "(no lens)"  # how the calls made outside any lens are shown
_NO_LENS_TITLE: Final = f"{NO_LENS_ROW}: calls outside any lens"
_MAX_METRIC: Final = 1e15  # larger counts or costs are not real, and would overflow a percentage
MAX_REPORT_BYTES: Final = 64 << 20


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check an llm-ledger report; :class:`ConfigError` says what is wrong with it."""
    name = str(path)
    hint = f"; write one with `pytest --llm-report={name}`"
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
    return ""


def _refuse_log(name: str, raw: str | bytes) -> None:
    """:class:`ConfigError` naming `llm-ledger report` when ``raw`` starts with a ledger record: a log
    of calls given where a report was expected."""
    try:
        first = strict_loads(raw.splitlines()[0]) if raw.strip() else None
    except (ValueError, RecursionError):
        return
    if isinstance(first, dict) and first.get("event") in (CALL_EVENT, LENS_EVENT):
        raise ConfigError(
            f"{name}: a log of calls, not a pytest --llm-report file; summarise it with "
            f"`llm-ledger report {name}`; write a report with `pytest --llm-report=PATH`"
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
        if metric in _COSTS and delta is not None:
            delta = round(delta, 12)  # no float noise in a diff of equal costs
        # rounded past any figure shown, so "more than PCT%" never turns on float noise (0.7 -> 0.77)
        pct = None if delta is None or not b else round(delta / b * 100, 9)
        out[metric] = {"base": b, "head": h, "delta": delta, "pct": pct}
        if status == "unchanged" and delta:
            status = "changed"
    row: dict[str, Any] = {"status": status, "metrics": out}
    row |= {"cost_gaps": {}, "failed_calls": {}, "failed_call_tests": {}}
    for side, report, entry in zip(("base", "head"), reports, entries, strict=True):
        # a side whose cost leaves out calls with no known cost: why (its costs are lower bounds, marked *)
        if entry and entry.get("cost_complete") is False:
            row["cost_gaps"][side] = _cost_gaps(report, lens)
        if entry and entry.get("errors", 0) != 0:  # failed calls (cassette misses) count no tokens
            errors = entry["errors"]  # None: unknown (an older report)
            row["failed_calls"][side] = None if errors is None else int(errors)
            if entry.get("tests_with_failed_calls"):
                row["failed_call_tests"][side] = entry["tests_with_failed_calls"]
    # the same figures, but what they leave out changed: --only-changed keeps it
    if status == "unchanged" and row["cost_gaps"].get("base") != row["cost_gaps"].get("head"):
        row["status"] = "changed"
    return row


def _no_lens(report: dict[str, Any]) -> dict[str, Any] | None:
    """The calls of a report made outside any lens, summed from its usage rows (lens "<no lens>"),
    as a lens entry; None when it has none. Its ``errors`` is None when unknown: usage rows written
    before they counted failed calls, in a run that had some."""
    rows = [row for row in report.get("usage", ()) if (row.get("lens") or NO_LENS) == NO_LENS]
    if not rows:
        return None
    if all("failed_calls" in row for row in rows) or not report["total"].get("errors"):
        errors = sum(row.get("failed_calls", 0) for row in rows)
    else:
        errors = None
    return {
        "api_calls": sum(row.get("calls", 0) for row in rows),
        "total_tokens": sum(
            row.get("total_tokens", row.get("prompt_tokens", 0) + row.get("completion_tokens", 0))
            for row in rows
        ),
        "cost_usd": sum(row.get("cost_usd", 0) for row in rows),
        "cost_complete": not any(row.get("uncosted_calls") for row in rows),
        "errors": errors,
        "tests_with_failed_calls": sorted(
            {t for row in rows for t in row.get("tests_with_failed_calls", ())}
        ),
    }


def _cost_gaps(report: dict[str, Any], lens: str | None) -> str:
    """Why a lens's cost (every lens's for None) is incomplete, from the report's usage rows."""
    unpriced: Counter[str] = Counter()
    no_usage: Counter[str] = Counter()
    for row in report.get("usage", ()):  # load_report checked their counts
        if lens in (None, row.get("lens")):
            model = model_name(row.get("model"), row.get("served_model"))
            no_usage[model] += row.get("no_usage_calls", 0)
            unpriced[model] += max(row.get("uncosted_calls", 0) - row.get("no_usage_calls", 0), 0)
    return cost_gaps(unpriced, no_usage)


def _calling(report: dict[str, Any]) -> set[str]:
    """The node ids of a report's tests that made calls (it lists every test that ran)."""
    return {
        t
        for t, entry in report.get("tests", {}).items()
        if isinstance(entry, dict) and entry.get("api_calls")
    }


def _price_data(report: dict[str, Any]) -> str:
    """The price data a report's costs come from ("'genai-prices 0.2.3', 'price-file'"), "" if none."""
    sources = {repr(str(row["cost_source"])) for row in report.get("usage", ()) if row.get("cost_source")}
    return ", ".join(sorted(sources))


def _code(text: str) -> str:
    """``text`` as a Markdown code span that a backtick inside cannot end early (CommonMark: a fence
    longer than any run of backticks inside, padded with a space), on one line: a line break would end
    a table row or a heading."""
    text = one_line(text)
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


# a name shown bare in plain text: nothing that would blur where it ends in a sentence or a list
_BARE: Final = re.compile(r"[^\s'\"`,;]+")


def _plain(name: str) -> str:
    """``name`` as the text output and stderr show it: bare, or quoted (``repr``) when a space, a quote,
    a comma or an unprintable character would blur where it ends."""
    return name if _BARE.fullmatch(name) and name.isprintable() else repr(name)


Names = Callable[[str], str]  # how an output shows a lens key or test id: _code (Markdown) or _plain
# how much of a lens key or test id a warning shows: the warnings are always kept, whole, in a comment
_NAME_CHARS: Final = 200


class _Flag(NamedTuple):
    """A warning as data: its text, the lens keys or test ids it lists, and the text after them."""

    text: str
    names: Sequence[str] = ()
    after: str = ""

    def say(self, names: Names) -> str:
        """The warning, naming as ``names`` does, each name cut with an ellipsis when long (the JSON's
        lenses have it whole)."""
        cut = [names(n if len(n) <= _NAME_CHARS else n[: _NAME_CHARS - 1] + "…") for n in self.names]
        return self.text + listed(cut) + self.after


# pytest's exit statuses of a run that stopped before running every test it was asked to
_STOPPED: Final = {
    2: "interrupted: a collection error, or Ctrl-C",
    3: "an internal error",
    4: "a usage error",
    5: "no tests collected",
}


def _flags(name: str, path: str, report: dict[str, Any]) -> Iterator[_Flag]:
    """What makes a report's numbers untrustworthy: a run stopped early, failed tests, failed calls,
    unpriced calls."""
    if (status := report.get("exit_status")) in _STOPPED:
        yield _Flag(
            f"the {name} run ({path}) stopped early: pytest exit status {status} ({_STOPPED[status]}); "
            "its report leaves out every test that did not run"
        )
    if failed := report.get("failed_tests", []):
        yield _Flag(
            f"the {name} report ({path}) has {len(failed)} failed test(s): ",
            failed,
            "; its numbers leave out what those tests did not get to do",
        )
    if errors := _number(report["total"], "errors"):
        yield _Flag(f"the {name} report ({path}) counts {failed_calls(int(errors))}: {NO_ANSWER}")
    unpriced = [n for n, e in report["lenses"].items() if e.get("cost_complete") is False]
    if unpriced or report["total"].get("cost_complete") is False:
        yield _Flag(
            f"the {name} report ({path}) has calls with no known cost"
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
    flags = list(_report_flags(base, head, (base_path, head_path)))
    has_base = base is not None
    base = base if base is not None else {"lenses": {}, "total": {}, "usage": []}
    reports = base, head
    names = sorted(set(base["lenses"]) | set(head["lenses"]))
    lenses = {
        n: _row(n, reports, [base["lenses"].get(n), head["lenses"].get(n)], DIFF_METRICS) for n in names
    }
    for new, old in _renames(base, head, lenses).items():
        lenses[new]["renamed_from"] = old
    # a report without usage rows (written before they were) cannot say what ran outside any lens
    outside = [_no_lens(base), _no_lens(head)]
    known = "usage" in base and "usage" in head
    no_lens = _row(NO_LENS, reports, outside, TOTAL_METRICS) if known and outside != [None, None] else None
    total = _row(None, reports, [base["total"] or None, head["total"]], TOTAL_METRICS)
    return {
        "schema": "llm-ledger-diff",
        "version": 1,
        "reports": {"base": base_path, "head": head_path},
        "has_base": has_base,
        "flags": [flag.say(_code) for flag in flags],
        "flags_text": [flag.say(_plain) for flag in flags],
        "lenses": lenses,
        "no_lens": no_lens,
        "total": total,
    }


def _report_flags(
    base: dict[str, Any] | None, head: dict[str, Any], paths: tuple[str, str]
) -> Iterator[_Flag]:
    """What makes the diff of two reports (``base`` None: missing) untrustworthy."""
    base_path, head_path = paths
    if base is None:
        yield _Flag(
            f"no base report at {base_path}: every lens is shown as new (the base branch may not run "
            "llm-ledger yet, or its test run wrote no report)"
        )
        base = {"lenses": {}, "total": {}, "usage": []}
    else:
        yield from _flags("base", base_path, base)
    yield from _flags("head", head_path, head)
    base_from, head_from = _price_data(base), _price_data(head)
    if base_from and head_from and base_from != head_from:
        yield _Flag(
            f"the reports were priced with different price data (base: {base_from}; head: {head_from}): a "
            "cost may change with no change in tokens; run both with the same llm-ledger, genai-prices "
            "and price file"
        )
    ran = _calling(head) | set(head.get("failed_tests", ()))
    if idle := sorted(_calling(base) - ran):
        yield _Flag(
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


# what --fail-on-increase fails on, in the order the output lists it: (scope, reason) -> heading
_GROUPS: Final = {
    ("lens", "grew"): "cost per run grew by more than {pct}%",
    ("lens", "new"): "new lens(es) that cost money (an increase from nothing)",
    ("any", "unchecked"): "cost cannot be checked",
    ("no_lens", "grew"): "the cost of calls outside any lens grew by more than {pct}%",
    ("total", "grew"): "the total cost grew by more than {pct}%",
}


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
    out = []
    for scope, name, row, metric in rows:
        m, gaps = row["metrics"][metric], row["cost_gaps"]
        if m["head"] is None:  # removed: a decrease
            continue
        failed = row["failed_calls"]
        why = None  # why it cannot be checked: a side's cost leaves out calls the other's does not
        if "head" in gaps and gaps["head"] != gaps.get("base"):
            reason, why = "unchecked", f"head: {gaps['head']}"
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
        else:
            reason = "grew"
        out.append(
            {"scope": scope, "lens": name, "reason": reason, "metric": metric, "base": m["base"],
             "head": m["head"], "pct": m["pct"], "cost_gaps": why}
            | ({"renamed_from": row["renamed_from"]} if row.get("renamed_from") is not None else {})
        )  # fmt: skip
    return out


def _increase(increase: dict[str, Any], names: Names, *, short: bool = False) -> str:
    """One increase, for the lists of the text and the Markdown: what grew, from what to what, or why
    it cannot be checked; ``short`` for the exit message, whose heading already says what grew."""
    scope, reason, base, head = increase["scope"], increase["reason"], increase["base"], increase["head"]
    grown = "from nothing" if increase["pct"] is None else percent(increase["pct"])
    old = increase.get("renamed_from")
    renamed = "" if old is None else f"; renamed from {names(old)}?"
    figures = f"{usd(head)}, absent in the base" if base is None else f"{usd(base)} -> {usd(head)}"
    if short:
        if scope != "lens" and reason == "grew":
            return figures if base is None else f"{figures}, {grown}"
        name = {"no_lens": "calls outside any lens", "total": "the total"}.get(scope)
        if reason == "unchecked":
            figure = increase["cost_gaps"]
        else:
            figure = f"{usd(head)} per run{renamed}" if base is None else grown
        return f"{name or names(increase['lens'])} ({figure})"
    name = {"no_lens": NO_LENS_ROW, "total": "Total"}.get(scope) or names(increase["lens"])
    what = "cost per run " if scope == "lens" else ""
    if reason == "unchecked":
        return f"{name}: {what or 'cost '}cannot be checked: {increase['cost_gaps']}"
    if base is None:
        return f"{name} (new{renamed}): {what}{figures}"
    return f"{name}: {what}{figures} ({grown})"


def _grouped(diff: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The increases under their headings, in the order of :data:`_GROUPS`."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for increase in diff.get("increases", ()):
        unchecked = increase["reason"] == "unchecked"
        key = ("any", "unchecked") if unchecked else (increase["scope"], increase["reason"])
        groups.setdefault(key, []).append(increase)
    pct = f"{diff.get('fail_on_increase', 0):g}"
    return [(_GROUPS[key].format(pct=pct), groups[key]) for key in _GROUPS if key in groups]


def _exit_message(diff: dict[str, Any]) -> str:
    """Why --fail-on-increase fails: each reason with every lens (or the total) it holds, and figures."""
    parts = []
    for heading, items in _grouped(diff):
        named = ", ".join(_increase(item, _plain, short=True) for item in items)
        if items[0]["scope"] != "lens" and items[0]["reason"] == "grew":
            parts.append(f"{heading} ({named})")
        else:
            parts.append(f"{heading}{': ' if items[0]['reason'] == 'new' else ' in '}{named}")
    return "; ".join(parts)


def _fmt(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return NO_FIGURE
    if metric in _COSTS:
        return usd(value, signed)
    sign = "+" if signed and value > 0 else ""
    return f"{sign}{int(value):,}"


def _by_change(diff: dict[str, Any]) -> list[str]:
    """The lens names, the largest change in cost first (then in cost per run, in tokens; then by name)."""

    def size(name: str) -> tuple[float, ...]:
        metrics = diff["lenses"][name]["metrics"]
        return tuple(-abs((metrics[m]["head"] or 0) - (metrics[m]["base"] or 0)) for m in _ORDER_BY)

    return sorted(diff["lenses"], key=lambda name: (size(name), name))


_ORDER_BY: Final = ("cost_usd", "cost_per_run", "total_tokens", "api_calls")


Section = tuple[str, str, dict[str, Any], list[list[str]]]


def _cells(diff: dict[str, Any]) -> list[Section]:
    """(kind: lens, no_lens or total; lens name; its diff row; [metric, base, head, delta, pct] cells)
    for every lens (the largest change first), the calls outside any lens and the total."""
    sections = [("lens", name, diff["lenses"][name]) for name in _by_change(diff)]
    if diff.get("no_lens"):
        sections.append(("no_lens", "", diff["no_lens"]))
    sections.append(("total", "", diff["total"]))
    out = []
    for kind, name, row in sections:
        rows = []
        for metric, m in row["metrics"].items():
            cells = [_fmt(metric, m["base"]), _fmt(metric, m["head"]), _fmt(metric, m["delta"], signed=True)]
            cells.append(NO_FIGURE if m["pct"] is None else percent(m["pct"]))
            if metric in _COSTS:  # a lower bound: * on each side that leaves calls out, and on its change
                marked = [side in row["cost_gaps"] for side in ("base", "head")]
                marked += [any(marked)] * 2
                cells = [c + "*" * (m and c != NO_FIGURE) for c, m in zip(cells, marked, strict=True)]
            rows.append([DIFF_METRICS[metric], *cells])
        out.append((kind, name, row, rows))
    return out


def _notes(row: dict[str, Any], names: Names) -> list[str]:
    """What the figures of one lens (or the total) leave out, side by side."""
    notes = [f"* {side}: {gaps}: counted as $0" for side, gaps in row["cost_gaps"].items()]
    for side, count in row["failed_calls"].items():
        if count is None:
            notes.append(
                f"{side}: failed calls unknown: its report, from an older llm-ledger, does not count them "
                "outside lenses, and its run had some (see the total)"
            )
            continue
        tests = [names(test) for test in row["failed_call_tests"].get(side, ())]
        where = f" in {listed(tests)}" if tests else ""
        notes.append(f"{side}: {failed_calls(count)}{where}; {NO_ANSWER}")
    return notes


_HEADERS: Final = ("metric", "base", "head", "delta", "%")
_MARK: Final = {"new": " (new)", "removed": " (removed)", "changed": "", "unchanged": " (unchanged)"}


def _mark(row: dict[str, Any], names: Names) -> str:
    """What follows a lens's name: its status, and for a new lens the removed one it may be renamed from."""
    old = row.get("renamed_from")
    return _MARK[row["status"]] if old is None else f" (new; renamed from {names(old)}?)"


# GitHub refuses a comment longer than this (in characters); the Markdown keeps some room under it
COMMENT_LIMIT: Final = 65_536
_COMMENT_ROOM: Final = 1_500


def _size(text: str) -> int:
    """Characters as GitHub may count them: UTF-16 code units (an emoji is two), plus a line break."""
    return len(printable(text).encode("utf-16-le")) // 2 + 1


def _markdown(diff: dict[str, Any]) -> str:
    """The PR comment. Blocks are (part, text): the table rows, the increases and the per-lens details
    come in the order a reviewer needs them, and when they do not all fit in one comment, the ones
    about the smallest changes are left out, with a line saying how many and where the whole diff is."""
    head = ["## llm-ledger: cost diff", ""]
    for flag in diff["flags"]:
        head += [f"> **Warning:** {flag}", ">"]
    if diff["flags"]:
        head[-1] = ""
    changed = sum(1 for r in diff["lenses"].values() if r["status"] != "unchanged")
    shown = " (only those are shown)" if diff.get("only_changed") else ""
    head.append(f"{diff.get('lens_count', len(diff['lenses']))} lens(es), {changed} with changes{shown}.")
    sections = _cells(diff)
    # first what a reviewer looks for: each lens's cost per run, and what --fail-on-increase failed on
    table = ["", *markdown_table(("lens", "cost per run: base", "head", "delta", "%"), [])]
    blocks: list[tuple[str, str]] = []
    for kind, name, row, rows in sections[:-1]:
        # calls outside any lens have no runs: their row shows what they cost in all
        metric = DIFF_METRICS["cost_usd" if kind == "no_lens" else "cost_per_run"]
        label = f"{NO_LENS_ROW}, its whole cost" if kind == "no_lens" else _code(name)
        cells = [f"{label}{_mark(row, _code)}", *next(r[1:] for r in rows if r[0] == metric)]
        line = markdown_table(("",) * 5, [cells])[-1]
        blocks.append(("table", "\n".join([*table, line]) if not blocks else line))
    order = {name: i for i, name in enumerate(_by_change(diff))}
    for number, (heading, items) in enumerate(_grouped(diff)):
        items = sorted(items, key=lambda i: order.get(i["lens"], len(order)))
        for n, item in enumerate(items):
            lines = ["", f"**{heading[0].upper()}{heading[1:]}:**", ""] if n == 0 else []
            # the total's and the calls' outside any lens are always kept, as their details are
            part = f"increases {number}" if item["scope"] == "lens" else "kept increases"
            blocks.append((part, "\n".join([*lines, f"- {_increase(item, _code)}"])))
    for kind, name, row, rows in sections:
        title = _code(name) if kind == "lens" else "Total" if kind == "total" else _NO_LENS_TITLE
        lines = ["", f"### {title}{_mark(row, _code)}", "", *markdown_table(_HEADERS, rows)]
        lines += [line for note in notes(_notes(row, _code), "markdown") for line in ("", note)]
        part = "lens details" if kind == "lens" else "kept"
        blocks.append((part, "\n".join(lines)))
    kept = _fit(head, blocks)
    out = [*head, *(["", _left_out(diff, blocks, kept)] if not all(kept) else [])]
    out += [text for (_, text), keep in zip(blocks, kept, strict=True) if keep]
    return "\n".join(out) + "\n"


def _fit(head: list[str], blocks: list[tuple[str, str]]) -> list[bool]:
    """Which blocks fit in one comment: all when they do; else (after what is always kept: the total,
    the calls outside any lens) the increases, group by group, then the table rows, then the lens
    details, each list from its start (the largest changes first) to the first block that does not fit."""
    room = COMMENT_LIMIT - _COMMENT_ROOM - sum(map(_size, head))
    sizes = [_size(text) for _, text in blocks]
    if sum(sizes) <= room:
        return [True] * len(blocks)
    kept = [part.startswith("kept") for part, _ in blocks]
    room -= sum(size for size, keep in zip(sizes, kept, strict=True) if keep)
    parts = [part for part in dict.fromkeys(part for part, _ in blocks) if part.startswith("increases")]
    for part in [*parts, "table", "lens details"]:
        for i in (i for i, (name, _) in enumerate(blocks) if name == part):
            if sizes[i] > room:
                break  # a smaller change after a gap would read as the next largest
            kept[i], room = True, room - sizes[i]
    return kept


def _left_out(diff: dict[str, Any], blocks: list[tuple[str, str]], kept: list[bool]) -> str:
    """The line saying what :func:`_fit` left out, and the command that prints the whole diff."""
    rows = [i for i, (part, _) in enumerate(blocks) if part == "table"]
    no_lens_row = rows[-1] if diff.get("no_lens") and rows else None  # the table's last row: not a lens
    whole: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for i, ((part, _), keep) in enumerate(zip(blocks, kept, strict=True)):
        # "kept increases" are in the list too
        part = "no_lens" if i == no_lens_row else "increases" if "increases" in part else part
        whole[part] += 1
        left[part] += not keep
    what = [
        text.format(left[part], whole[part])
        for part, text in (
            ("increases", "{} of {} items of the list of increases"),
            ("table", "{} of {} lenses from the table"),
            ("no_lens", f"the {NO_LENS_ROW} row of the table"),
            ("lens details", "the details of {} of {} lenses"),
        )
        if left[part]
    ]
    reports = diff.get("reports", {"base": "BASE.json", "head": "HEAD.json"})
    command = _code(f"llm-ledger diff --format json {reports['base']} {reports['head']}")
    return (
        f"_To fit in a GitHub comment, this leaves out {', '.join(what[:-1])}{' and ' * (len(what) > 1)}"
        f"{what[-1]} (the smallest changes). The whole diff: {command}._"
    )


def _text(diff: dict[str, Any]) -> str:
    lines = [f"warning: {flag}" for flag in diff["flags_text"]]
    for kind, name, row, rows in _cells(diff):
        title = f"lens {_plain(name)}" if kind == "lens" else "total" if kind == "total" else _NO_LENS_TITLE
        lines.append(title + _mark(row, _plain))
        lines += text_table(_HEADERS, rows, indent="  ")
        lines += [f"  {note}" for note in _notes(row, _plain)]
    for heading, items in _grouped(diff):
        lines.append(f"{heading}:")
        lines += [f"  {_increase(item, _plain)}" for item in items]
    return "\n".join(lines) + "\n"


def render(diff: dict[str, Any], fmt: str = "markdown") -> str:
    """The diff as ``markdown``, ``text`` or ``json``."""
    if fmt == "json":
        return strict_json(diff) + "\n"
    if fmt == "text":
        return printable(_text(diff))
    if fmt == "markdown":
        return printable(_markdown(diff))
    raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _run(args: argparse.Namespace) -> int:
    base = load_report(args.base) if Path(args.base).exists() else None
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
    head = load_report(args.head)
    diff = diff_reports(base, head, base_path=args.base, head_path=args.head)
    diff["lens_count"] = len(diff["lenses"])
    if args.only_changed:
        diff["only_changed"] = True
        diff["lenses"] = {n: r for n, r in diff["lenses"].items() if r["status"] != "unchanged"}
    if args.fail_on_increase is not None:
        diff["fail_on_increase"] = args.fail_on_increase
        diff["increases"] = [] if stopped in _STOPPED else increases(diff, args.fail_on_increase)
        if (cut := head.get("exit_status")) in _STOPPED:  # every lens reads as removed: fail closed
            m = diff["total"]["metrics"]["cost_usd"]
            why = f"head: its run stopped early: pytest exit status {cut} ({_STOPPED[cut]})"
            diff["increases"] = [i for i in diff["increases"] if i["scope"] != "total"]
            diff["increases"].append(
                {"scope": "total", "lens": None, "reason": "unchecked", "metric": "cost_usd",
                 "base": m["base"], "head": m["head"], "pct": m["pct"], "cost_gaps": why}
            )  # fmt: skip
        if stopped in _STOPPED:  # a warning that names no lens or test: the same in both
            flag = (
                f"the base run ({args.base}) stopped early, so --fail-on-increase compared nothing: a "
                "lens it never reached would read as new (--require-base fails the job on such a base)"
            )
            diff["flags"].append(flag)
            diff["flags_text"].append(flag)
    print(render(diff, args.fmt), end="")
    for flag in diff["flags_text"]:
        print(f"llm-ledger diff: warning: {flag}", file=sys.stderr)
    if diff.get("increases"):
        print(f"llm-ledger diff: {_exit_message(diff)}", file=sys.stderr)
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
            "a cost that leaves out calls with no known cost in HEAD only fails too (it cannot be "
            "checked); each is named on stderr. Without a BASE report nothing is compared"
        ),
    )
