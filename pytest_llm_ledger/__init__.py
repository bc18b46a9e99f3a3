"""pytest plugin for llm-ledger: replay OpenAI calls from cassettes, enforce budgets, report cost.

Loaded through the ``pytest11`` entry point (``pytest_llm_ledger.plugin``); every module is private,
and the plugin uses the core's public API only.
"""

from __future__ import annotations

__all__: list[str] = []
