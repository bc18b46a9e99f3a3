"""The exceptions llm-ledger raises, all under one root.

    LedgerError
    ├── ConfigError          bad arguments to configure() / LLMCallMonitor, or bad environment variables
    │   ├── PriceFileError   a user price file that cannot be used (names file, line and key)
    │   └── BudgetError      a budgets.yaml that cannot be used (names file, line and key)
    ├── BudgetExceededError  a lens run over its production budget in raise mode: its next call is
    │                        refused before it is sent
    ├── CassetteError        a cassette file that cannot be loaded safely (the pytest plugin)
    ├── CassetteMissError    a request with no unplayed match in its cassette, (replay-only mode)
    └── BlockedRequestError  an OpenAI API request of a test not marked llm (replay-only mode), or any
                             other request of a marked test with network blocking on, refused unsent

The two errors of a test's requests carry the ``nodeid`` of the test whose request raised them.

Errors inside the monitor while it watches a call are never raised to the caller: they are
reported on the ``llm_ledger.internal`` logger instead (``internal_log``, defined here once).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._records import BudgetRecord

__all__ = [
    "BlockedRequestError",
    "BudgetError",
    "BudgetExceededError",
    "CassetteError",
    "CassetteMissError",
    "ConfigError",
    "LedgerError",
    "PriceFileError",
]

internal_log = logging.getLogger("llm_ledger.internal")


def passed_on(exc: BaseException) -> bool:
    """Whether ``exc``, raised inside a user's sink, hook or log handler, goes through the ledger:
    Ctrl-C, a generator's close, and what a signal handler raised while this thread was there (an
    application's SIGTERM handler calling ``sys.exit()``). Anything else would break the call."""
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
        return True
    # CPython calls a signal handler with the frame it interrupted: the handler's caller
    tb = exc.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
        back = frame.f_back
        for value in frame.f_locals.values():  # ``(signum, frame)``, or ``*args``
            if back is not None and (
                value is back or (type(value) is tuple and any(item is back for item in value))
            ):
                return True
    return False


def unchained(exc: BaseException) -> BaseException:
    """``exc``, a failure the ledger caught and reports, cut from the exceptions it was raised while
    handling: its traceback would show theirs too, such as the SDK's error of the call being recorded
    (which quotes what the server answered: an echoed key, the prompt) or the application's own."""
    exc.__cause__ = None
    exc.__suppress_context__ = True
    return exc


def warn_internal(message: str, *args: Any, exc_info: BaseException | None = None) -> None:
    """Warn on ``llm_ledger.internal`` (``exc_info``'s traceback :func:`unchained`); an application's
    log handler failing there is not the call's."""
    try:
        internal_log.warning(message, *args, exc_info=None if exc_info is None else unchained(exc_info))
    except BaseException as exc:
        if passed_on(exc):
            raise


REDACT_FIX = "pass a def returning the redacted str"
REDACT_TAKES = "and returning a str"
HANDS_ON = (
    "pass a def (to reach an event loop, one handing the record on: "
    "loop.call_soon_threadsafe(queue.put_nowait, record))"
)


def check_hook(name: str, hook: object, takes: str = "a record", fix: str = HANDS_ON) -> None:
    """Refuse as ``name`` (a hook the ledger calls: ``redact``, an alert callback) what is neither None
    nor a plain function taking ``takes``."""
    if hook is not None and not callable(hook):
        raise ConfigError(f"{name} must be a callable taking {takes}, got {hook!r}")
    refuse_async(name, hook, fix)


def refuse_async(name: str, hook: object, fix: str = HANDS_ON) -> None:
    """Refuse an ``async def`` as ``name``: the ledger calls its hooks synchronously, on the thread that
    ended the call, so its coroutine would never run (each record lost, a RuntimeWarning each time)."""
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(type(hook).__call__):
        raise ConfigError(
            f"{name} must be a plain function, got the async function {hook!r}: the ledger calls it "
            f"synchronously, on the thread that ended the call, and would never await it; {fix}"
        )


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


class BudgetExceededError(LedgerError):
    """A call refused before it was sent: its lens run went over a production budget with
    ``budget_mode="raise"``. ``record`` is the run's ``budget_exceeded`` record (limit, max, actual)."""

    def __init__(self, message: str, record: BudgetRecord) -> None:
        super().__init__(message)
        self.record = record


class CassetteMissError(LedgerError):
    """A request reached a cassette that holds no unplayed match and may not record it."""

    def __init__(self, message: str, nodeid: str | None = None) -> None:
        super().__init__(message)
        self.nodeid = nodeid  # the test whose request missed


class BlockedRequestError(LedgerError):
    """A request refused before it was sent: an OpenAI API request of a test not marked ``llm``
    (replay-only mode), or a request a cassette does not record while network blocking is on."""

    def __init__(self, message: str, nodeid: str | None = None) -> None:
        super().__init__(message)
        self.nodeid = nodeid  # the test whose request was refused
