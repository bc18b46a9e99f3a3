"""The one table renderer: fixed-width text for terminals, Markdown for PR comments and summaries.
The first column is a name; the others are figures, right-aligned unless ``right`` says otherwise.
Costs are shown by :func:`usd` wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from .loading import one_line

__all__ = [
    "NO_FIGURE", "code", "markdown_table", "notes", "percent", "table", "text_table", "usd",
]  # fmt: skip

NO_FIGURE: Final = "—"  # a cell whose figure cannot be given: an absent side, a change with no price after


def usd(value: Decimal | float, signed: bool = False, *, complete: bool = True, significant: int = 3) -> str:
    """Dollars with at least six decimals and ``significant`` digits: a non-zero cost never reads $0.
    ``*`` marks a cost that leaves out calls with no known cost (a lower bound)."""
    amount = value if isinstance(value, Decimal) else Decimal(repr(value))
    digits = min(9 + significant, max(6, significant - 1 - amount.adjusted())) if amount else 6
    sign = "-" if amount < 0 else "+" if signed and amount > 0 else ""
    shown = abs(amount).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)  # money rounds half up
    return f"{sign}${shown:,.{digits}f}" + ("" if complete else "*")


def percent(value: float | Decimal) -> str:
    """A change in percent, signed to one decimal: "+50.0%", "-84.0%"; "0.0%" for what rounds to none."""
    text = f"{value:+.1f}%"
    return text[1:] if text[1:] == "0.0%" else text


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    total: Sequence[Sequence[str]] = (),
    right: Collection[int] | None = None,
    indent: str = "",
) -> list[str]:
    """Lines of a plain table: header, rule, rows, and (after another rule) the ``total`` rows."""
    right = range(1, len(headers)) if right is None else right
    headers, rows, total = _one_line(headers), list(map(_one_line, rows)), list(map(_one_line, total))
    widths = [max(len(row[i]) for row in [headers, *rows, *total]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        text = "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return indent + text.rstrip()

    rule = line(["-" * w for w in widths])
    return [line(headers), rule, *map(line, rows), *([rule, *map(line, total)] if total else [])]


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    total: Sequence[Sequence[str]] = (),
    right: Collection[int] | None = None,
) -> list[str]:
    """Lines of a Markdown table (``|`` in cells escaped, and ``<`` outside code spans: GitHub drops
    ``<no lens>`` as an HTML tag); ``total`` rows in bold; ``right`` as in text."""
    right = range(1, len(headers)) if right is None else right

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_cell(cell) for cell in _one_line(cells)) + " |"

    # an empty cell stays empty: "****" is not bold nothing, Markdown shows the four stars
    bold = [[f"**{cell}**" if cell else "" for cell in row] for row in total]
    return [
        line(headers),
        "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
        *map(line, [*rows, *bold]),
    ]


def table(
    fmt: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    total: Sequence[Sequence[str]] = (),
    right: Collection[int] | None = None,
) -> list[str]:
    """:func:`markdown_table` for ``fmt`` "markdown", else :func:`text_table`."""
    return (markdown_table if fmt == "markdown" else text_table)(headers, rows, total=total, right=right)


def notes(lines: Iterable[str], fmt: str) -> list[str]:
    """The lines under a table; in Markdown a leading "* " is escaped: it would start a list, hiding the
    mark the table's costs carry."""
    markdown = fmt == "markdown"
    return [line.replace("*", "\\*", 1) if markdown and line.startswith("* ") else line for line in lines]


def code(text: str) -> str:
    """``text`` as a Markdown code span that a backtick inside cannot end early (CommonMark: a fence
    longer than any run of backticks inside, padded with a space), on one line: a line break would end
    a table row or a heading. Inside, Markdown, HTML, links and @mentions are shown as text: how a PR
    comment names what the application named (a lens key, a user id)."""
    text = one_line(text)
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


def _one_line(cells: Sequence[str]) -> list[str]:
    return [one_line(cell) for cell in cells]


# a code span (kept: from a whole run of backticks to the next run of the same length) or a "<"
_LT_OUTSIDE_CODE = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)|<")


def _cell(text: str) -> str:
    # a backslash inside a code span is shown as it is (only a table's "\|" is read there), so "<" is
    # escaped outside code spans alone
    return _LT_OUTSIDE_CODE.sub(lambda m: "\\<" if m[0] == "<" else m[0], text).replace("|", "\\|")
