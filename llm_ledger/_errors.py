"""The exceptions llm-ledger raises, all under one root.

    LedgerError
    ├── ConfigError          bad arguments to configure() / LLMCallMonitor, or bad environment variables
    │   ├── PriceFileError   a user price file that cannot be used (names file, line and key)
    │   └── BudgetError      a budgets.yaml that cannot be used (names file, line and key)
    ├── CassetteError        a cassette file that cannot be loaded safely (the pytest plugin)
    ├── CassetteMissError    a request with no unplayed match in its cassette, (replay-only mode)
    └── BlockedRequestError  an OpenAI API request of a test not marked llm, refused unsent (replay-only mode)

Errors inside the monitor while it watches a call are never raised to the caller: they are
reported on the ``llm_ledger.internal`` logger instead.
"""

from __future__ import annotations

__all__ = [
    "BlockedRequestError",
    "BudgetError",
    "CassetteError",
    "CassetteMissError",
    "ConfigError",
    "LedgerError",
    "PriceFileError",
]


class LedgerError(Exception):
    """Root of every exception raised by llm-ledger."""


class ConfigError(LedgerError, ValueError):
    """An option or environment variable has a value llm-ledger cannot use."""


class PriceFileError(ConfigError):
    """A price file is missing, is not valid YAML, or has an unknown key or a bad value."""


class CassetteError(LedgerError):
    """A cassette file is malformed or unsafe to load."""


class BudgetError(ConfigError):
    """A budgets file that cannot be used: not YAML, an unknown key, a wrong type or a negative limit."""


class CassetteMissError(LedgerError):
    """A request reached a cassette that holds no unplayed match and may not record it."""


class BlockedRequestError(LedgerError):
    """An OpenAI API request of a test not marked ``llm``, refused before it was sent (replay-only mode)."""
