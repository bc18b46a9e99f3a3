"""pytest plugin for llm-ledger: replay OpenAI calls from cassettes, enforce budgets, report cost.

Loaded through the ``pytest11`` entry point (``pytest_llm_ledger.plugin``). Everything lives in
private modules: ``plugin`` (options, hooks, fixtures), ``_cassette`` (matching and replay on
vcrpy's transport patches), ``_network`` (the replay-only guard for unmarked tests), ``_format``
(the cassette file), ``_naming`` (cassette paths), ``_report`` (session totals, budgets.yaml
checks, notices, report JSON, terminal tables), and the cassette tools behind
``llm-ledger scrub`` and ``llm-ledger cassettes`` (``_scrub``, ``_secrets``, ``_cassettes_cli``).
The plugin uses the core's public API only.
"""

from __future__ import annotations

__all__: list[str] = []
