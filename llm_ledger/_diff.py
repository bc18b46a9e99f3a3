"""``llm-ledger diff BASE.json HEAD.json``: what changed in calls, tokens and cost, lens by lens.

Reads two ``--llm-report`` files (schema ``llm-ledger-report``, version 1) written by the pytest
plugin, typically one from the base branch and one from the pull request, and prints a table per
lens with base, head, delta and percent change. Lenses only in HEAD are marked new, lenses only in
BASE removed. ``--format markdown`` (the default) is fit for a PR comment or
``$GITHUB_STEP_SUMMARY``; ``text`` is for terminals; ``json`` for other tools.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final

from ._errors import ConfigError

__all__ = ["DIFF_METRICS", "diff_reports", "load_report", "register", "render"]

REPORT_SCHEMA: Final = "llm-ledger-report"
SUPPORTED_VERSIONS: Final = (1,)
# metric in the report -> label in the tables
DIFF_METRICS: Final = {"api_calls": "calls", "total_tokens": "tokens", "cost_usd": "cost (USD)"}
FORMATS: Final = ("markdown", "text", "json")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check an llm-ledger report; :class:`ConfigError` says what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: report not found; write one with `pytest --llm-report {path}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the report: {exc}") from None
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not JSON ({exc}); expected a file written by pytest --llm-report"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise ConfigError(f'{path}: not an llm-ledger report (no "schema": {REPORT_SCHEMA!r})')
    if data.get("version") not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"{path}: report version {data.get('version')!r} is not supported; this llm-ledger reads "
            f"version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    for section in ("lenses", "total"):
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"{path}: {section!r} must be an object")
    for name, entry in data["lenses"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: lenses.{name} must be an object")
    return data


def _number(entry: dict[str, Any] | None, metric: str) -> float | None:
    if entry is None:
        return None
    value = entry.get(metric, 0)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _row(base: dict[str, Any] | None, head: dict[str, Any] | None) -> dict[str, Any]:
    status = "new" if base is None else "removed" if head is None else "unchanged"
    metrics: dict[str, dict[str, float | None]] = {}
    for metric in DIFF_METRICS:
        b, h = _number(base, metric), _number(head, metric)
        delta = None if b is None or h is None else h - b
        if metric == "cost_usd" and delta is not None:
            delta = round(delta, 12)  # no float noise in a diff of equal costs
        pct = None if delta is None or not b else delta / b * 100
        metrics[metric] = {"base": b, "head": h, "delta": delta, "pct": pct}
        if status == "unchanged" and delta:
            status = "changed"
    return {"status": status, "metrics": metrics}


def diff_reports(base: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of the diff: per lens (and total) base, head, delta and percent per metric."""
    names = sorted(set(base["lenses"]) | set(head["lenses"]))
    return {
        "schema": "llm-ledger-diff",
        "version": 1,
        "lenses": {n: _row(base["lenses"].get(n), head["lenses"].get(n)) for n in names},
        "total": _row(base["total"], head["total"]),
    }


def _fmt(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    sign = "+" if signed and value > 0 else ""
    if metric == "cost_usd":
        return f"{sign}${value:.6f}" if value >= 0 or not signed else f"-${-value:.6f}"
    return f"{sign}{int(value):,}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%"


def _cells(diff: dict[str, Any]) -> list[tuple[str, str, list[list[str]]]]:
    """(section name, status, [metric, base, head, delta, pct] rows) for every lens and the total."""
    out = []
    sections = [*diff["lenses"].items(), ("TOTAL", diff["total"])]
    for name, row in sections:
        rows = []
        for metric, label in DIFF_METRICS.items():
            m = row["metrics"][metric]
            rows.append(
                [label, _fmt(metric, m["base"]), _fmt(metric, m["head"]),
                 _fmt(metric, m["delta"], signed=True), _pct(m["pct"])]
            )  # fmt: skip
        out.append((name, row["status"], rows))
    return out


_MARK: Final = {"new": " (new)", "removed": " (removed)", "changed": "", "unchanged": " (unchanged)"}


def _markdown(diff: dict[str, Any]) -> str:
    lines = ["## llm-ledger: cost diff", ""]
    changed = sum(1 for r in diff["lenses"].values() if r["status"] != "unchanged")
    lines.append(f"{len(diff['lenses'])} lens(es), {changed} with changes.")
    for name, status, rows in _cells(diff):
        title = "Total" if name == "TOTAL" else f"`{name}`"
        lines += ["", f"### {title}{_MARK[status]}", "", "| metric | base | head | delta | % |"]
        lines.append("|---|---:|---:|---:|---:|")
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _text(diff: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, status, rows in _cells(diff):
        lines.append(("total" if name == "TOTAL" else f"lens {name}") + _MARK[status])
        table = [["metric", "base", "head", "delta", "%"], *rows]
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            lines.append(
                "  "
                + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
            )
    return "\n".join(lines) + "\n"


def render(diff: dict[str, Any], fmt: str = "markdown") -> str:
    """The diff as ``markdown``, ``text`` or ``json``."""
    if fmt == "json":
        return json.dumps(diff, indent=2) + "\n"
    if fmt == "text":
        return _text(diff)
    if fmt == "markdown":
        return _markdown(diff)
    raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def _run(args: argparse.Namespace) -> int:
    diff = diff_reports(load_report(args.base), load_report(args.head))
    print(render(diff, args.format), end="")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``diff`` subcommand to the ``llm-ledger`` console script."""
    parser = subparsers.add_parser(
        "diff",
        help="compare two pytest --llm-report files lens by lens",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("base", help="report of the base (e.g. the main branch)")
    parser.add_argument("head", help="report of the head (e.g. the pull request)")
    parser.add_argument(
        "--format", choices=FORMATS, default="markdown", help="output format (default: markdown)"
    )
    parser.set_defaults(func=_run)
