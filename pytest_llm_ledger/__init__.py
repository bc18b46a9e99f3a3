"""pytest plugin for llm-ledger: replay OpenAI calls from cassettes, enforce budgets, report cost.

Loaded through the ``pytest11`` entry point (``pytest_llm_ledger.plugin``); every module is private,
and the plugin uses the core's public API (``llm_ledger.testing`` gives it the monitor's rule of what a
credential is, so both redact the same), less ``llm_ledger.report``: the session report takes the few
small modules it needs from behind it, since the entry point loads the plugin in every pytest run.
The one public name is the ``llm_ledger`` fixture's type, to annotate a test with:
``def test_x(llm_ledger: LedgerRecords) -> None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plugin import LedgerRecords

__all__ = ["LedgerRecords"]


def __getattr__(name: str) -> object:
    # the plugin module imports pytest: loaded when its name is asked for, not with every private module
    # (``llm-ledger scrub`` imports one)
    if name == "LedgerRecords":
        from .plugin import LedgerRecords

        return LedgerRecords
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
