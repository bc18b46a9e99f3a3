"""llm-ledger: what each OpenAI call and each unit of work (a *lens*) costs.

.. code-block:: python

    import llm_ledger, openai

    llm_ledger.configure(log_dir="logs")                  # JSON lines in logs/llm_calls.jsonl
    client = llm_ledger.instrument(openai.AsyncOpenAI())  # the same client, now monitored
    with llm_ledger.lens("default_summary", source_id=sid, service="RunnerService") as run:
        ...
    run.summary                                           # the per-lens aggregate
"""

from __future__ import annotations

from typing import Any as _Any
from typing import Never as _Never
from typing import TypeVar as _TypeVar

from ._anomalies import AnomalyConfig, AnomalyDetector
from ._budgets import BudgetGuard, Budgets, Limits, load_budgets, parse_budgets
from ._config import Settings, configure, get_monitor
from ._context import LensRun, TrackedContext, propagate
from ._errors import (
    BlockedRequestError,
    BudgetError,
    BudgetExceededError,
    CassetteError,
    CassetteMissError,
    ConfigError,
    LedgerError,
    PriceFileError,
)
from ._jsonl import JsonlFileHandler, LedgerJsonFormatter
from ._jsonl import flush_all as _flush_all
from ._monitor import LLMCallMonitor, Redactor, Sink
from ._pricing import Cost, PriceTable, price
from ._rates import HostPrice, Rates
from ._records import AnomalyRecord, BudgetRecord, CallRecord, LensRecord, LensSummary

__all__ = [
    "AnomalyConfig",
    "AnomalyDetector",
    "AnomalyRecord",
    "BlockedRequestError",
    "BudgetError",
    "BudgetExceededError",
    "BudgetGuard",
    "BudgetRecord",
    "Budgets",
    "CallRecord",
    "CassetteError",
    "CassetteMissError",
    "ConfigError",
    "Cost",
    "HostPrice",
    "JsonlFileHandler",
    "LLMCallMonitor",
    "LedgerError",
    "LedgerJsonFormatter",
    "LensRecord",
    "LensRun",
    "LensSummary",
    "Limits",
    "PriceFileError",
    "PriceTable",
    "Rates",
    "Redactor",
    "Settings",
    "Sink",
    "TrackedContext",
    "configure",
    "flush",
    "get_monitor",
    "instrument",
    "lens",
    "load_budgets",
    "parse_budgets",
    "price",
    "propagate",
    "track_llm_call",
]

_C = _TypeVar("_C")


def instrument(client: _C) -> _C:
    """Instrument an OpenAI / AsyncOpenAI / AzureOpenAI / AsyncAzureOpenAI client in place.

    Returns the same object. Idempotent; clients derived with ``.with_options()`` / ``.copy()``
    stay instrumented.
    """
    return get_monitor().instrument(client)


def lens(lens_key: str, *, source_id: _Any = None, service: str | None = None, **context: _Any) -> LensRun:
    """Open a lens run (``with``, ``async with`` or decorator); ``run.summary`` after it ends."""
    return get_monitor().lens(lens_key, source_id=source_id, service=service, **context)


def track_llm_call(*function: _Never, **context: _Any) -> TrackedContext:
    """Add context (``service=``, ``source_id=``, any other key) to every call inside."""
    return get_monitor().track_llm_call(*function, **context)


def flush() -> None:
    """Return once every record so far is written to the JSONL file."""
    _flush_all()
