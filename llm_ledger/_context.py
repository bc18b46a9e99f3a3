"""Who a call belongs to: the context stack and the open lens runs, carried by contextvars.

contextvars give each thread its own stack and each asyncio task a copy of its parent's, so
concurrent lenses never see each other's calls while tasks fanned out inside one lens (e.g.
``asyncio.gather``) all count toward it.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._records import LensSummary, LensTotals, new_id

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor

__all__ = ["LensRun", "TrackedContext", "current_context", "current_lenses"]

P = ParamSpec("P")
R = TypeVar("R")

_BASE: dict[str, Any] = {"lens_key": None, "source_id": None, "service": None}
_context: ContextVar[dict[str, Any]] = ContextVar("llm_ledger_context", default=_BASE)
_lenses: ContextVar[tuple[LensTotals, ...]] = ContextVar("llm_ledger_lenses", default=())


# read on every call: the ContextVars' own methods, without a Python frame in between
current_context: Callable[[], dict[str, Any]] = _context.get
"""The merged context of the enclosing ``lens`` / ``track_llm_call`` blocks (do not mutate)."""
current_lenses: Callable[[], tuple[LensTotals, ...]] = _lenses.get
"""Totals of every open lens run, outermost first."""


class _Scope:
    """A block that adds context: a sync and async context manager, and a decorator."""

    def __init__(self, context: dict[str, Any]) -> None:
        self._extra = context
        self._token: Token[dict[str, Any]] | None = None

    def _fresh(self) -> _Scope:
        raise NotImplementedError

    def _enter(self) -> None:
        if self._token is not None:
            raise RuntimeError(f"{type(self).__name__} is already active; open a new one for each block")
        self._token = _context.set({**_context.get(), **self._extra})

    def _exit(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                _context.reset(token)
            except ValueError:  # exited in another context than it was entered (e.g. another task)
                pass

    def __enter__(self) -> Any:
        self._enter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit()

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Use as a decorator: each call of ``func`` runs in a new block of its own."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._fresh():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._fresh():
                return func(*args, **kwargs)

        return wrapper


class TrackedContext(_Scope):
    """Returned by :func:`llm_ledger.track_llm_call`: adds context to every call inside."""

    def _fresh(self) -> TrackedContext:
        return TrackedContext(self._extra)

    def __enter__(self) -> TrackedContext:
        self._enter()
        return self


class LensRun(_Scope):
    """One run of a lens; ``summary`` holds its aggregate once the block has ended.

    Returned by :func:`llm_ledger.lens`. Lenses nest: a call counts in every enclosing lens.
    """

    def __init__(self, monitor: LLMCallMonitor, lens_key: str, context: dict[str, Any]) -> None:
        if not isinstance(lens_key, str) or not lens_key:
            raise TypeError(f"lens_key must be a non-empty string, got {lens_key!r}")
        super().__init__({**context, "lens_key": lens_key})
        self.lens_key = lens_key
        self._monitor = monitor
        self._totals: LensTotals | None = None
        self._lens_token: Token[tuple[LensTotals, ...]] | None = None
        self._started = 0.0
        self._started_perf = 0.0
        self.run_id: str | None = None
        self.summary: LensSummary | None = None

    @property
    def context(self) -> dict[str, Any]:
        """The lens's own context (lens_key, lens_run_id and what was passed to ``lens()``)."""
        return dict(self._extra)

    def _fresh(self) -> LensRun:
        extra = {k: v for k, v in self._extra.items() if k not in ("lens_key", "lens_run_id")}
        return LensRun(self._monitor, self.lens_key, extra)

    def __enter__(self) -> LensRun:
        self.run_id = new_id()
        self._extra = {**self._extra, "lens_run_id": self.run_id}
        self._enter()
        self._totals = LensTotals()
        self._lens_token = _lenses.set((*_lenses.get(), self._totals))
        self.summary = None
        self._started = time.time()
        self._started_perf = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        wall = time.perf_counter() - self._started_perf
        token, self._lens_token = self._lens_token, None
        if token is not None:
            try:
                _lenses.reset(token)
            except ValueError:
                pass
        context = {**_context.get(), **self._extra}
        self._exit()
        totals = self._totals
        if totals is not None:
            self.summary = totals.summary(wall)
            self._monitor._emit_lens(context, self.summary, self._started + wall)
