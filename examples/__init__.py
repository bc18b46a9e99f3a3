"""Runnable examples of llm-ledger (not part of the installed package)."""
