"""Log lines as the ledger writes them, for the report, serve and analysis tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import openai
import pytest

import llm_ledger
from llm_ledger import _context, _monitor
from llm_ledger._extract import EMPTY_REQUEST
from llm_ledger._jsonl import JsonlFileHandler, LedgerJsonFormatter
from llm_ledger._records import USD_UNIT_DIGITS, LensTotals, Usage, call_record, lens_record

if TYPE_CHECKING:
    from tests.conftest import Sdk

FORMATTER = LedgerJsonFormatter()
EPOCH = 1_764_000_000.0  # 2025-11-24T16:00:00Z


def usage(prompt: int | None, completion: int | None, cached: int = 0) -> Usage:
    """A chat call's usage as the ledger records it, every count but these 0 (the total their sum)."""
    total = None if prompt is None or completion is None else prompt + completion
    counts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cached_tokens": cached,
    }
    return cast(Usage, {**dict.fromkeys(Usage.__annotations__, 0), **counts})


def call(
    *,
    lens: Any = "default_summary",
    source: Any = "src-1",
    service: Any = "RunnerService",
    model: str | None = "gpt-4o-mini",
    status: str = "ok",
    prompt: int | None = 100,
    completion: int | None = 20,
    cost: str | None = "0.0001",
    duration_s: float = 0.5,
    epoch: float = EPOCH,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A call record built by the ledger's own record builder."""
    failed = status != "ok"
    record = call_record(
        status=status,  # type: ignore[arg-type]
        operation="chat",
        context={"lens_key": lens, "source_id": source, "service": service, **(extra or {})},
        request={
            **EMPTY_REQUEST,
            "model": model,
            "temperature": 0.2,
            "messages_count": 2,
            "system_prompt_length": 10,
            "user_prompt_length": 100,
        },
        response={
            "model": None if failed else model,
            "id": None if failed else "chatcmpl-1",
            "request_id": None,
            "content_length": None if failed else 80,
            "finish_reason": None if failed else "stop",
            "tool_calls_count": None if failed else 0,
            "service_tier": None if failed else "default",
            "tool_uses": None,
        },
        usage=usage(prompt, completion),
        start_epoch=epoch,
        duration_s=duration_s,
        ttft_s=None,
        prompt_cost_units=None if cost is None else _units(cost) // 2,
        completion_cost_units=None if cost is None else _units(cost) - _units(cost) // 2,
        retries=0,
        error={"type": "RateLimitError", "status_code": 429, "message": "HTTP 429"} if failed else None,
    )
    return dict(record)


def _units(usd: str) -> int:
    """USD as the ledger's integer units of 10**-24 USD."""
    return int(Decimal(usd).scaleb(USD_UNIT_DIGITS))


def lens_run(calls: list[dict[str, Any]], *, epoch: float = EPOCH) -> dict[str, Any]:
    """The lens_summary record of ``calls`` (their context is the lens context)."""
    totals = LensTotals()
    for record in calls:
        cost = record["cost"]["total_cost_usd"]
        totals.add(record, None if cost is None else _units(str(cost)))  # type: ignore[arg-type]
    return dict(lens_record(context=calls[0]["context"], summary=totals.summary(1.0), end_epoch=epoch))


def line(record: dict[str, Any]) -> str:
    """The JSONL line the ledger's writer produces for ``record``."""
    log = logging.LogRecord("llm_monitor", logging.INFO, __file__, 0, record, None, None)
    return FORMATTER.format(log)


def write(path: Path, records: list[dict[str, Any]], *, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(line(r) + "\n" for r in records) + "".join(x + "\n" for x in extra_lines))
    return path


class StoppedClock:
    """The ``time`` module with ``time()`` stopped at ``epoch``: set on the monitor and the lens
    context (``at``), it dates the calls and lens runs of real SDK calls on any day."""

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch

    def time(self) -> float:
        return self.epoch

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def at(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    """Calls and lens runs from now on start at ``when`` (an aware datetime)."""
    clock = StoppedClock(when.timestamp())
    monkeypatch.setattr(_monitor, "time", clock)
    monkeypatch.setattr(_context, "time", clock)


@contextmanager
def logging_to(path: Path, sdk: Sdk) -> Iterator[tuple[llm_ledger.LLMCallMonitor, openai.OpenAI]]:
    """A monitor writing the log ``path`` as ``configure()`` does, and a real SDK client it watches on
    the loopback server; every line is in the file once the block ends."""
    handler = JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    try:
        yield monitor, sdk(monitor)
    finally:
        handler.close()
