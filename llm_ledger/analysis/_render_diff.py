"""The output of ``llm-ledger diff``: Markdown sized for a PR comment, plain text, or JSON, and the
message saying why ``--fail-on-increase`` failed. :mod:`._diff` reads the reports and computes the diff.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from .._table import NO_FIGURE, code, markdown_table, notes, percent, text_table, usd
from ..loading import listed, printable
from ._render import check_format, strict_json
from ._usage import NO_ANSWER, failed_calls

__all__ = [
    "COSTS", "DIFF_METRICS", "FORMATS", "NO_LENS_ROW", "Flag", "exit_message", "plain", "render"
]  # fmt: skip

# metric in the report -> label in the tables; cost_per_run is computed (cost_usd / runs)
DIFF_METRICS: Final = {
    "runs": "runs",
    "api_calls": "calls",
    "total_tokens": "tokens",
    "cost_usd": "cost (USD)",
    "cost_per_run": "cost per run",
}
COSTS: Final = frozenset({"cost_usd", "cost_per_run"})
FORMATS: Final = ("markdown", "text", "json")
NO_LENS_ROW: Final = "(no lens)"  # how the calls made outside any lens are shown
_NO_LENS_TITLE: Final = f"{NO_LENS_ROW}: calls outside any lens"


# a name shown bare in plain text: nothing that would blur where it ends in a sentence or a list
_BARE: Final = re.compile(r"[^\s'\"`,;]+")


def plain(name: str) -> str:
    """``name`` as the text output and stderr show it: bare, or quoted (``repr``) when a space, a quote,
    a comma or an unprintable character would blur where it ends."""
    return name if _BARE.fullmatch(name) and name.isprintable() else repr(name)


Names = Callable[[str], str]  # how an output shows a lens key or test id: code (Markdown) or plain
# how much of a lens key or test id a warning shows: the warnings are always kept, whole, in a comment
_NAME_CHARS: Final = 200


class Flag(NamedTuple):
    """A warning as data: its text, the lens keys or test ids it lists, and the text after them."""

    text: str
    names: Sequence[str] = ()
    after: str = ""

    def say(self, names: Names) -> str:
        """The warning, naming as ``names`` does, each name cut with an ellipsis when long (the JSON's
        lenses have it whole)."""
        cut = [names(n if len(n) <= _NAME_CHARS else n[: _NAME_CHARS - 1] + "…") for n in self.names]
        return self.text + listed(cut) + self.after


# what --fail-on-increase fails on, in the order the output lists it: (scope, reason) -> heading
_GROUPS: Final = {
    ("lens", "grew"): "cost per run grew by more than {pct}%",
    ("lens", "new"): "new lens(es) that cost money (an increase from nothing)",
    ("any", "unchecked"): "cost cannot be checked",
    ("no_lens", "grew"): "the cost of calls outside any lens grew by more than {pct}%",
    ("total", "grew"): "the total cost grew by more than {pct}%",
}


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


def exit_message(diff: dict[str, Any]) -> str:
    """Why --fail-on-increase fails: each reason with every lens (or the total) it holds, and figures."""
    parts = []
    for heading, items in _grouped(diff):
        named = ", ".join(_increase(item, plain, short=True) for item in items)
        if items[0]["scope"] != "lens" and items[0]["reason"] == "grew":
            parts.append(f"{heading} ({named})")
        else:
            parts.append(f"{heading}{': ' if items[0]['reason'] == 'new' else ' in '}{named}")
    return "; ".join(parts)


_MAX_BUDGET_ITEMS: Final = 20  # the test run's log lists them all


def _budgets(diff: dict[str, Any], names: Names) -> tuple[str, list[str]]:
    """What --llm-budget found in the head run: a heading, and a line per limit exceeded and per lens
    with no budget; ("", []) when the head run did not enforce budgets."""
    if not (budgets := diff.get("budgets")):
        return "", []
    exceeded, lenses = budgets["exceeded"], budgets["no_budget"]
    said = [f"{len(exceeded)} limit(s) exceeded"] * bool(exceeded)
    said += [f"{len(lenses)} lens(es) with no budget"] * bool(lenses)
    heading = f"Budgets ({budgets['file']}) in the head run: {', '.join(said) or 'every limit met'}"
    items = []
    for e in exceeded:
        value = usd if e["limit"] == "max_cost_usd" else lambda v: f"{int(v):,}"
        where = "total" if e["scope"] == "total" else f"{e['scope']} {names(e['name'])}"
        actual = (
            "unknown" if e["actual"] is None else "at least " * bool(e.get("at_least")) + value(e["actual"])
        )
        why = f": {e['unknown']}" if e.get("unknown") else ""
        worst = f" (worst run {names(e['worst_test'])})" if e["worst_test"] else ""
        items.append(f"{where}: {e['limit']} {value(e['max'])}, actual {actual}{worst}{why}")
    items += [f"lens {names(key)}: no budget (no entry under lenses, no default)" for key in lenses]
    if len(items) > _MAX_BUDGET_ITEMS:
        more = len(items) - _MAX_BUDGET_ITEMS + 1
        items[_MAX_BUDGET_ITEMS - 1 :] = [f"and {more} more (the head run's log lists them)"]
    return heading, items


def _fmt(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return NO_FIGURE
    if metric in COSTS:
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
            if metric in COSTS:  # a lower bound: * on each side that leaves calls out, and on its change
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
    for side, count in row["cut_short_runs"].items():
        runs = row["metrics"]["runs"][side]
        notes.append(
            f"{side}: {count:,} of {runs:,} runs cut short: their lens_summary never came (still open when "
            "the tests ended), so they count only their calls that had ended"
        )
    return notes


_HEADERS: Final = ("metric", "base", "head", "delta", "%")


def _mark(row: dict[str, Any], names: Names) -> str:
    """What follows a lens's name: its status, its models when it is new or they changed (a swap explains
    a change in cost), for a new lens the removed one it may be renamed from, and whether runs of it
    were cut short."""
    said = [] if row["status"] == "changed" else [row["status"]]
    models = {side: ", ".join(map(names, used)) for side, used in row.get("models", {}).items()}
    if row["status"] == "new" and models.get("head"):  # "" from a report written before it had usage rows
        said.append(models["head"])
    elif len(models) == 2 and all(models.values()) and models["base"] != models["head"]:
        said.append(f"{models['base']} -> {models['head']}")
    if row.get("renamed_from") is not None:
        said.append(f"renamed from {names(row['renamed_from'])}?")
    said += ["cut short"] * bool(row["cut_short_runs"])
    failed = [side for side in ("base", "head") if side in row["failed_calls"]]
    if failed and "runs" in row["metrics"]:  # a lens: its cost per run reads low (_FAILED_NOTE)
        said.append(f"{_FAILED} in {' and '.join(failed)}")
    return f" ({'; '.join(said)})" if said else ""


_FAILED: Final = "failed calls"  # the mark of a lens whose calls failed, on a side: _FAILED_NOTE says why
_FAILED_NOTE: Final = (
    f"{_FAILED} in base / head: calls of the lens failed in that report's run (cassette misses or API "
    "errors); one that got no answer counts no tokens or cost while its lens run still counts, so the "
    "cost per run there reads low"
)


def _failed_note(diff: dict[str, Any]) -> list[str]:
    """The line saying what the mark of a lens with failed calls means, when a lens has it."""
    return [_FAILED_NOTE] if any(row["failed_calls"] for row in diff["lenses"].values()) else []


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
    if shown and len(diff["lenses"]) > changed:  # unchanged ones --fail-on-increase could not check
        shown = " (only those are shown, and those whose cost could not be checked)"
    head.append(f"{diff.get('lens_count', len(diff['lenses']))} lens(es), {changed} with changes{shown}.")
    sections = _cells(diff)
    # first what a reviewer looks for: each lens's cost per run, and what --fail-on-increase failed on
    table = ["", *markdown_table(("lens", "cost per run: base", "head", "delta", "%"), [])]
    blocks: list[tuple[str, str]] = []
    for kind, name, row, rows in sections[:-1]:
        # calls outside any lens have no runs: their row shows what they cost in all
        metric = DIFF_METRICS["cost_usd" if kind == "no_lens" else "cost_per_run"]
        label = f"{NO_LENS_ROW}, its whole cost" if kind == "no_lens" else code(name)
        cells = [f"{label}{_mark(row, code)}", *next(r[1:] for r in rows if r[0] == metric)]
        line = markdown_table(("",) * 5, [cells])[-1]
        blocks.append(("table", "\n".join([*table, line]) if not blocks else line))
    blocks += [("kept note", f"\n_{note}_") for note in _failed_note(diff)]  # under the table
    order = {name: i for i, name in enumerate(_by_change(diff))}
    for number, (heading, items) in enumerate(_grouped(diff)):
        items = sorted(items, key=lambda i: order.get(i["lens"], len(order)))
        for n, item in enumerate(items):
            lines = ["", f"**{heading[0].upper()}{heading[1:]}:**", ""] if n == 0 else []
            # the total's and the calls' outside any lens are always kept, as their details are
            part = f"increases {number}" if item["scope"] == "lens" else "kept increases"
            blocks.append((part, "\n".join([*lines, f"- {_increase(item, code)}"])))
    budgets, found = _budgets(diff, code)
    if budgets:
        lines = ["", f"**{budgets}{':' if found else '.'}**", *[""] * bool(found), *(f"- {i}" for i in found)]
        blocks.append(("kept budgets", "\n".join(lines)))
    for kind, name, row, rows in sections:
        title = code(name) if kind == "lens" else "Total" if kind == "total" else _NO_LENS_TITLE
        lines = ["", f"### {title}{_mark(row, code)}", "", *markdown_table(_HEADERS, rows)]
        lines += [line for note in notes(_notes(row, code), "markdown") for line in ("", note)]
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
    logs = "--logs " * bool(diff.get("logs"))
    paths = " ".join(shlex.quote(reports[side]) for side in ("base", "head"))  # a glob of shards: quoted
    command = code(f"llm-ledger diff {logs}--format json {paths}")
    return (
        f"_To fit in a GitHub comment, this leaves out {', '.join(what[:-1])}{' and ' * (len(what) > 1)}"
        f"{what[-1]} (the smallest changes). The whole diff: {command}._"
    )


def _text(diff: dict[str, Any]) -> str:
    lines = [f"warning: {flag}" for flag in diff["flags_text"]]
    for kind, name, row, rows in _cells(diff):
        title = f"lens {plain(name)}" if kind == "lens" else "total" if kind == "total" else _NO_LENS_TITLE
        lines.append(title + _mark(row, plain))
        lines += text_table(_HEADERS, rows, indent="  ")
        lines += [f"  {note}" for note in _notes(row, plain)]
    lines += _failed_note(diff)
    for heading, items in _grouped(diff):
        lines.append(f"{heading}:")
        lines += [f"  {_increase(item, plain)}" for item in items]
    heading, said = _budgets(diff, plain)
    if heading:
        lines += [f"{heading}{':' if said else ''}", *(f"  {item}" for item in said)]
    return "\n".join(lines) + "\n"


def render(diff: dict[str, Any], fmt: str = "markdown") -> str:
    """The diff as ``markdown``, ``text`` or ``json``."""
    check_format(fmt, FORMATS)
    if fmt == "json":
        return strict_json(diff) + "\n"
    return printable(_text(diff) if fmt == "text" else _markdown(diff))
