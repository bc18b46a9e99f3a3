"""budgets.yaml in the plugin: where the file is and what to say when it is missing.

The schema, its parsing and its errors live in the core (``llm_ledger.Budgets``, ``Limits``,
``load_budgets``), which also applies the same file to lens runs in production (docs/BUDGETS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from llm_ledger import Budgets, Limits
from llm_ledger import load_budgets as _load_budgets

__all__ = ["METRIC_OF", "load_budgets"]

METRIC_OF: Final = Limits.METRIC_OF  # limit key -> the aggregate metric it caps


def load_budgets(path: Path, name: str | None = None) -> Budgets:
    """Read and parse ``path`` (called ``name`` in messages); a missing file is a ``BudgetError`` too."""
    hint = ", point --llm-budget-file / ini llm_budget_file at it, or drop --llm-budget"
    return _load_budgets(path, name, hint=hint)
