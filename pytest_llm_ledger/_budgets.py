"""budgets.yaml: the limits a test session must stay within.

.. code-block:: yaml

    lenses:                 # each run of the lens (each lens_summary record) must stay within
      default_summary: {max_cost_usd: 0.002, max_api_calls: 3}
    default:                # limits for every lens not listed under lenses
      max_total_tokens: 4000
    tests:                  # the calls made during one test (by node id)
      "tests/test_app.py::test_digest": {max_api_calls: 5}
    total:                  # the whole session
      max_cost_usd: 0.05

Limits: ``max_cost_usd`` (a number), ``max_total_tokens``, ``max_prompt_tokens``,
``max_completion_tokens`` and ``max_api_calls`` (whole numbers); none may be negative.

:func:`parse_budgets` works without pytest and turns any input into a :class:`Budgets` or a
:class:`BudgetError` naming the file, the line, the key path and the valid keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import yaml

from llm_ledger import BudgetError
from llm_ledger._loading import Document, join, read_file

__all__ = ["LIMIT_KEYS", "METRIC_OF", "BudgetError", "Budgets", "Limits", "load_budgets", "parse_budgets"]

# limit key -> the aggregate metric it caps
METRIC_OF: Final = {
    "max_cost_usd": "cost_usd",
    "max_total_tokens": "total_tokens",
    "max_prompt_tokens": "prompt_tokens",
    "max_completion_tokens": "completion_tokens",
    "max_api_calls": "api_calls",
}
LIMIT_KEYS: Final = tuple(sorted(METRIC_OF))
_SECTIONS: Final = ("default", "lenses", "tests", "total")


@dataclass(frozen=True)
class Limits:
    """The caps one lens run, test or session must stay within; ``None`` means no cap."""

    max_cost_usd: float | None = None
    max_total_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_api_calls: int | None = None

    def items(self) -> list[tuple[str, float]]:
        """``(limit key, value)`` for each cap that is set, in :data:`LIMIT_KEYS` order."""
        return [(key, value) for key in LIMIT_KEYS if (value := getattr(self, key)) is not None]


@dataclass(frozen=True)
class Budgets:
    """A parsed budgets file."""

    source: str = "budgets.yaml"
    lenses: Mapping[str, Limits] = field(default_factory=dict)
    default: Limits | None = None
    tests: Mapping[str, Limits] = field(default_factory=dict)
    total: Limits | None = None

    def for_lens(self, lens_key: str) -> Limits | None:
        """The limits for each run of ``lens_key``: its own entry, else ``default``."""
        return self.lenses.get(lens_key, self.default)


# caps past these are typos, and would overflow a float
_MAX_COST: Final = Decimal(10) ** 9
_MAX_COUNT: Final = Decimal(10) ** 15


def _limits(doc: Document, node: yaml.Node, path: str) -> Limits:
    values: dict[str, float | int] = {}
    for key, value_node in doc.fields(node, path, "a mapping of limits", LIMIT_KEYS).items():
        if key == "max_cost_usd":
            cost = doc.number(value_node, f"{path}.{key}", "a non-negative number of USD", maximum=_MAX_COST)
            values[key] = float(cost)
        else:
            count = doc.number(
                value_node, f"{path}.{key}", "a non-negative whole number", maximum=_MAX_COUNT, whole=True
            )
            values[key] = int(count)
    return Limits(**values)  # type: ignore[arg-type]


def parse_budgets(text: str | bytes, source: str = "budgets.yaml") -> Budgets:
    """Parse budgets YAML; raises :class:`BudgetError` (never anything else) for bad input."""
    doc = Document(source, BudgetError, "a budgets file")
    root = doc.compose(text)
    if root is None or doc.is_null(root):
        return Budgets(source=source)
    sections: dict[str, Any] = {}
    for key, node in doc.fields(root, "", "a mapping of sections", _SECTIONS).items():
        if key in ("default", "total"):
            sections[key] = _limits(doc, node, key)
        else:
            what = "lens keys" if key == "lenses" else "test node ids"
            sections[key] = {
                name: _limits(doc, limits_node, join(key, name))
                for name, _, limits_node in doc.mapping(node, key, f"a mapping of {what} to limits")
            }
    return Budgets(source=source, **sections)


def load_budgets(path: Path, name: str | None = None) -> Budgets:
    """Read and parse ``path`` (called ``name`` in messages); a missing file is a :class:`BudgetError` too."""
    name = name or str(path)
    hint = (
        f"; create it (sections: {', '.join(_SECTIONS)}), "
        "point --llm-budget-file / ini llm_budget_file at it, or drop --llm-budget"
    )
    return parse_budgets(read_file(str(path), BudgetError, "budgets file", name=name, hint=hint), name)
