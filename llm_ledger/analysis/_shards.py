"""The reports of a test suite split across CI jobs (a matrix, pytest-split, ``--shard``) as the one report
an unsharded run writes, for ``llm-ledger diff``: each shard's ``pytest --llm-report`` file, already
checked by :func:`._diff.load_report`, summed lens by lens, test by test and usage row by usage row.

Costs are summed exactly, as ``Decimal`` dollars read from each JSON number, as the plugin sums them, so
the merged report's costs are those of one run. A test found in two shards (a shard run twice, shards
that overlap) is an error: summed, its calls would count twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .._errors import ConfigError
from .._records import cost_decimal

__all__ = ["merge_reports"]


def merge_reports(reports: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The one report the shards' ``(path, report)`` make together: per lens and in total their figures
    summed, and the lists of tests joined; ``exit_status`` the worst (a shard that stopped early first,
    then one whose tests failed); ``budgets`` what each shard's ``--llm-budget`` found."""
    _refuse_overlap(reports)
    parts = [report for _, report in reports]
    lenses: dict[str, list[dict[str, Any]]] = {}
    usage: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for report in parts:
        for name, entry in report["lenses"].items():
            lenses.setdefault(name, []).append(entry)
        for row in report.get("usage", ()):  # a row is the calls of one lens to one server and model...
            key = tuple((name, value or "") for name, value in row.items() if not _figure(value))
            usage.setdefault(key, []).append(row)
    out: dict[str, Any] = {
        "schema": parts[0]["schema"],
        "version": parts[0]["version"],
        "lenses": {name: _summed(entries) for name, entries in sorted(lenses.items())},
        "tests": dict(sorted(test for report in parts for test in report.get("tests", {}).items())),
        "total": _summed([report["total"] for report in parts]),
        "failed_tests": sorted({test for report in parts for test in report.get("failed_tests", ())}),
        "exit_status": max(
            (r["exit_status"] for r in parts if r.get("exit_status") is not None),
            key=lambda s: (True, -s) if s >= 2 else (False, s),  # pytest's 2 to 5: stopped early
            default=None,
        ),
    }
    if all("usage" in report for report in parts):  # one written before it had usage rows: unknown
        out["usage"] = [_summed(rows) for _, rows in sorted(usage.items())]
    if budgets := [report["budgets"] for report in parts if report.get("budgets")]:
        out["budgets"] = {
            "file": budgets[0]["file"],
            "exceeded": [limit for found in budgets for limit in found["exceeded"]],
            "no_budget": sorted({key for found in budgets for key in found["no_budget"]}),
        }
    return out


def _figure(value: Any) -> bool:
    """Whether a value of a report's entry is summed (a count, a cost, a list, an object of counts), not
    a part of what the entry is the calls of (a usage row's lens, server, model...)."""
    return isinstance(value, int | float | list | dict)


def _summed(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One report entry from the shards' entries of the same lens, total or usage row: counts summed,
    costs summed exactly, a cost complete when it is in every shard, lists of tests joined."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(key for entry in entries for key in entry):
        values = [entry[key] for entry in entries if key in entry]
        if isinstance(values[0], bool):  # cost_complete
            out[key] = all(values)
        elif all(type(v) is int for v in values):
            out[key] = sum(values)
        elif all(type(v) in (int, float) for v in values):  # a cost: as the plugin sums it
            out[key] = float(sum((cost_decimal(v) or Decimal(0) for v in values), Decimal(0)))
        elif isinstance(values[0], list):  # node ids
            out[key] = sorted({item for value in values for item in value})
        elif isinstance(values[0], dict):  # built-in tools' uses, by kind
            uses: Counter[str] = Counter()
            for value in values:
                uses.update(value)
            out[key] = dict(sorted(uses.items()))
        else:
            out[key] = values[0]
    return out


def _refuse_overlap(reports: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """:class:`ConfigError` naming a test two shards' reports both hold, and the two files."""
    seen: dict[str, str] = {}
    for path, report in reports:
        for test in dict.fromkeys([*report.get("tests", {}), *report.get("failed_tests", ())]):
            if test in seen:
                twice = [t for t in report.get("tests", {}) if seen.get(t) == seen[test]]
                others = f" (and {len(twice) - 1} other test(s))" if len(twice) > 1 else ""
                raise ConfigError(
                    f"test {test!r}{others} is in two shard reports, {seen[test]} and {path}: a "
                    "shard run twice, or shards that overlap, whose calls would count twice; give each "
                    "test's shard once (remove the older report)"
                )
            seen[test] = path
