"""Who a call belongs to: the context and the open lens runs, in contextvars (each thread its own,
each task a copy of its parent's; ``propagate(fn)`` carries them into a thread).
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import threading
import time
import types
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import Context, ContextVar, Token, copy_context
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

from ._errors import warn_internal
from ._records import LensSummary, LensTotals, made_here, new_id

if TYPE_CHECKING:
    from ._budgets import _RunBudget
    from ._monitor import LLMCallMonitor

__all__ = [
    "RUN_KEYS",
    "LensRun",
    "TrackedContext",
    "counted_in",
    "current_context",
    "current_lenses",
    "filed_under",
    "propagate",
]

P = ParamSpec("P")
R = TypeVar("R")

_BASE: dict[str, Any] = {"lens_key": None, "source_id": None, "service": None}
RUN_KEYS = ("lens_key", "lens_run_id", "parent_lens_run_id")  # a run's own: never inherited by a fresh one
_context: ContextVar[dict[str, Any]] = ContextVar("llm_ledger_context", default=_BASE)
_lenses: ContextVar[tuple[LensRun, ...]] = ContextVar("llm_ledger_lenses", default=())


# read on every call: the ContextVars' own methods, without a Python frame in between
current_context: Callable[[], dict[str, Any]] = _context.get
"""The merged context of the enclosing ``lens`` / ``track_llm_call`` blocks (do not mutate)."""
current_lenses: Callable[[], tuple[LensRun, ...]] = _lenses.get
"""Every open lens run, outermost first."""


def _reset(var: ContextVar[Any], token: Token[Any] | None) -> bool:
    """Undo ``token``'s set; False when exited in another context than it was entered in."""
    if token is not None:
        try:
            var.reset(token)
        except ValueError:  # e.g. another task, or a context copy of a thread pool's
            return False
    return True


_told_elsewhere: set[str] = set()  # lens keys already said to end in another context


def _said_elsewhere(lens_key: str) -> None:
    """Warn, once per lens key, that a lens block ended in another context than it began in."""
    if lens_key in _told_elsewhere or len(_told_elsewhere) >= 1000:
        return
    _told_elsewhere.add(lens_key)
    warn_internal(  # an application's handler failing on it never reaches its with block
        "llm-ledger: lens %r ended in another context than it began in: it was entered and left in "
        "context copies of their own (a sync generator run step by step in a thread pool: a web "
        "framework's dependency or streaming response body?), so the calls of its later steps counted in "
        "no run of it. Open the lens where its calls are made: with llm_ledger.lens(...) in the handler "
        "or an async def (for a dependency: an async generator, whose lens the handler's calls count "
        "in); a generator that makes the calls itself (a response body) can take it as a decorator "
        "(llm_ledger.lens(...)(generator_function)), which keeps each of its steps in the lens, but not "
        "the calls made between its steps (a dependency's handler)",
        lens_key,
    )


class _Block(dict[str, Any]):
    """The context a block set, with what its exit needs: the scope keeps no state, so concurrent
    tasks and threads may enter it, nested or not."""

    __slots__ = ("scope", "token")
    scope: _Scope
    token: Token[dict[str, Any]]


class _Scope:
    """A block that adds context: a sync and async context manager, and a decorator."""

    def __init__(self, context: dict[str, Any]) -> None:
        self._extra = context

    def _fresh(self) -> _Scope:
        """A new block of the same context, for one call of a decorated function."""
        return type(self)(self._extra)

    def __enter__(self) -> Self:
        block = _Block({**_context.get(), **self._extra})
        block.scope = self
        block.token = _context.set(block)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # this block's context: the current one, or under blocks left open inside it (an abandoned
        # generator's), which end with it; none when it has ended already
        block = _context.get()
        while type(block) is _Block:
            if block.scope is self:
                if not _reset(_context, block.token):  # another context holding it: it ends there too
                    old = block.token.old_value
                    _context.set(_BASE if old is Token.MISSING else old)
                return
            block = block.token.old_value

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Use as a decorator: each call of ``func`` runs in a new block of its own (a generator's
        stays open for its life, its steps in a context of their own)."""
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(func):
            wrapper = _async_generator_in(self._fresh, func)
        elif inspect.isgeneratorfunction(func):
            wrapper = _generator_in(self._fresh, func)
        elif inspect.iscoroutinefunction(func):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._fresh():
                    return await func(*args, **kwargs)

        else:
            told: list[bool] = []

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    result = func(*args, **kwargs)
                if not told and inspect.iscoroutine(result):  # said once per function
                    told.append(True)
                    _said_async(func, self)
                return result

        return functools.wraps(func)(wrapper)


def _said_async(func: Callable[..., Any], scope: _Scope) -> None:
    """Warn that a function decorated as a plain one returned a coroutine: its calls ran after its block."""
    name = "lens" if isinstance(scope, LensRun) else "track_llm_call"
    warn_internal(  # an application's handler failing on it never reaches its call
        "llm-ledger: %s is decorated with %s() as a plain function, yet returned a coroutine (a plain "
        "decorator between it and its async def?): the block ended before the coroutine ran, so its "
        "calls got none of its context and counted in no lens run. Put @%s(...) directly on the "
        "async def, under the other decorators",
        getattr(func, "__qualname__", func),
        name,
        name,
    )


def _generator_in(
    fresh: Callable[[], _Scope], func: Callable[..., Any]
) -> Callable[..., Generator[Any, Any, Any]]:
    """``func``'s generators, each inside a ``fresh()`` scope, each step in its context."""

    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        context = copy_context()
        scope = fresh()
        context.run(scope.__enter__)
        try:
            return (yield from _stepped_in(context, context.run(func, *args, **kwargs)))
        finally:  # a scope's exit takes no exception: it ends the block whatever ended the generator
            context.run(scope.__exit__, None, None, None)

    return wrapper


def _async_generator_in(
    fresh: Callable[[], _Scope], func: Callable[..., Any]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """``_generator_in`` for async generators, whose sends and throws are passed on by hand."""

    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        context = copy_context()
        scope = fresh()
        context.run(scope.__enter__)
        generator = None
        try:
            generator = context.run(func, *args, **kwargs)
            step = generator.__anext__()
            while True:
                try:
                    item = await _stepped_in(context, step.__await__())
                except StopAsyncIteration:
                    return
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    step = generator.athrow(exc)
                else:
                    step = generator.asend(sent)
        finally:
            try:
                if generator is not None:
                    await _stepped_in(context, generator.aclose().__await__())
            finally:
                context.run(scope.__exit__, None, None, None)

    return wrapper


@types.coroutine
def _stepped_in(context: Context, steps: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Drive ``steps`` (a generator, or an awaitable's ``__await__()``), each step in ``context``."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            yielded = context.run(steps.send, sent) if thrown is None else context.run(steps.throw, thrown)
        except StopIteration as stop:
            return stop.value
        sent, thrown = None, None
        try:
            sent = yield yielded
        except BaseException as exc:  # e.g. a task's cancellation: into the awaitable with it
            thrown = exc


_collector: int | None = None  # the thread the garbage collector runs on, while it runs


def _collection(phase: str, info: dict[str, int]) -> None:
    global _collector
    _collector = threading.get_ident() if phase == "start" else None


gc.callbacks.append(_collection)


def recorded_apart(record: Callable[..., object], *args: Any) -> bool:
    """Whether ``record(*args)`` ran on a thread of its own (waited for a bounded time), as it does when
    the collector runs it: the collection may have stopped this thread inside the ledger, holding a
    lock that recording takes."""
    # the interpreter shutting down starts no thread (3.11 hangs trying): nothing holds a lock by then
    if _collector != threading.get_ident() or sys.is_finalizing():
        return False
    thread = threading.Thread(target=record, args=args, name="llm-ledger-collected", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # started no thread (Python 3.12's atexit hooks): recorded here
        return False
    thread.join(1.0)
    if thread.is_alive():
        _still_recording.add(thread)
    return True


# the threads of recorded_apart() not done when it stopped waiting: exit waits for them (the interpreter
# stops a daemon thread where it is, losing its records)
_still_recording: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def wait_recorded_apart(timeout: float) -> None:
    """Wait for the threads of ``recorded_apart()`` still recording, ``timeout`` seconds at most."""
    deadline = time.monotonic() + timeout
    for thread in list(_still_recording):
        thread.join(max(0.0, deadline - time.monotonic()))


def counted_in(context: dict[str, Any]) -> tuple[dict[str, Any], tuple[LensRun, ...]]:
    """The lens runs a call (or connection) begun now counts in (an ended run counts no new call), and
    the context its record is filed under (:func:`filed_under` once its innermost run ended)."""
    lenses = _lenses.get()
    if not lenses:
        return context, ()
    runs = tuple(run for run in lenses if run._totals.begin())
    if (not runs or runs[-1] is not lenses[-1]) and lenses[-1]._totals.closed:
        context = filed_under(context, runs)
    return context, runs


def filed_under(context: dict[str, Any], runs: tuple[LensRun, ...]) -> dict[str, Any]:
    """The context for the record of a call begun after its innermost lens run ended: the innermost
    run that counts it (``runs``), else none (its lens key and the rest kept), so a report counts it
    in no run that left it out, nor finds that run again, cut short."""
    context = {k: v for k, v in context.items() if k not in RUN_KEYS[1:]}
    if runs:
        context.update((k, v) for k, v in runs[-1]._extra.items() if k in RUN_KEYS)
    return context


def propagate(func: Callable[P, R]) -> Callable[P, R]:
    """``func``, run in the context it is wrapped in: its lenses and ``track_llm_call`` context.

    For work handed to other threads, which start in an empty context::

        executor.submit(llm_ledger.propagate(summarise), doc)
        threading.Thread(target=llm_ledger.propagate(worker)).start()
        await loop.run_in_executor(None, llm_ledger.propagate(summarise), doc)

    Each run gets its own copy of that context, so one wrapped function may run on several
    threads at once. ``asyncio.to_thread`` and tasks copy the context already. An ``async def``'s
    coroutine runs each step in it wherever it is awaited (``asyncio.run`` on another thread).
    """
    if not callable(func):
        raise TypeError(f"propagate() expects a function to run in another thread, got {func!r}")
    context = copy_context()
    hides = not context.get(_lenses)  # a run inside a lens (a decorator's wrapping, at import) hides it
    told: list[bool] = []

    def run_in() -> Context:
        if hides and not told and (lenses := _lenses.get()):
            told.append(True)
            warn_internal(  # an application's handler failing on it never reaches the call
                "llm-ledger: %s was wrapped by propagate() where no lens was open (as a decorator, at "
                "import?) and now runs inside lens %r, which it hides: its calls count in no lens. Wrap "
                "it where it is handed to another thread: pool.submit(llm_ledger.propagate(fn), ...)",
                getattr(func, "__qualname__", func),
                lenses[-1].lens_key,
            )
        return context.copy()

    in_context: Callable[..., Any]
    if inspect.iscoroutinefunction(func):  # the task awaiting it has a context of its own: each step in this

        async def in_context(*args: Any, **kwargs: Any) -> Any:
            run = run_in()
            return await _stepped_in(run, run.run(func, *args, **kwargs).__await__())

    else:

        def in_context(*args: Any, **kwargs: Any) -> Any:
            return run_in().run(func, *args, **kwargs)

    return functools.wraps(func)(in_context)


class TrackedContext(_Scope):
    """Returned by :func:`llm_ledger.track_llm_call`: adds context to every call inside (one object
    may serve many blocks, nested or concurrent)."""


class LensRun(_Scope):
    """One run of a lens; ``summary`` holds its aggregate once the block has ended.

    Returned by :func:`llm_ledger.lens`. Lenses nest: a call counts in every enclosing lens. A call
    started inside counts even if it ends after the block (a stream read later, a thread still
    running): ``summary`` then shows it in ``open_calls`` (and ``cost_complete`` is false) until
    the last such call ends, when ``summary`` is replaced by the whole run's and its record emitted.
    """

    def __init__(self, monitor: LLMCallMonitor, lens_key: str, context: dict[str, Any]) -> None:
        if callable(lens_key):  # @lens without its parentheses
            raise TypeError(
                "lens() takes a lens key first: write @lens('default_summary', ...) with parentheses"
            )
        if not isinstance(lens_key, str) or not lens_key:
            raise TypeError(f"lens_key must be a non-empty string, got {lens_key!r}")
        # a str subclass (a `class Lens(str, Enum)` member) as its plain value, not str() of it
        lens_key = str.__str__(lens_key)
        super().__init__({**context, "lens_key": lens_key})
        self.lens_key = lens_key
        self._monitor = monitor
        self._totals = LensTotals()
        self._lens_token: Token[tuple[LensRun, ...]] | None = None
        self._started = 0.0
        self._started_perf = 0.0
        self._wall = 0.0
        self._record_context: dict[str, Any] = {}
        self._ended_in: Context | None = None  # where its block ended: its record is emitted from there
        self.run_id: str | None = None
        self.summary: LensSummary | None = None
        self._budget: _RunBudget | None = None  # set when production budgets limit this lens

    @property
    def context(self) -> dict[str, Any]:
        """The lens's own context (lens_key, lens_run_id and what was passed to ``lens()``)."""
        return dict(self._extra)

    def _fresh(self) -> LensRun:
        extra = {k: v for k, v in self._extra.items() if k not in RUN_KEYS}
        return LensRun(self._monitor, self.lens_key, extra)

    def __enter__(self) -> Self:
        if self.run_id is not None:
            state = "is already active" if self._lens_token is not None else "has already run"
            raise RuntimeError(f"lens run {self.lens_key!r} {state}; call lens() again for each block")
        self.run_id = new_id()
        enclosing = _lenses.get()
        self._extra = {**self._extra, "lens_run_id": self.run_id}
        if enclosing and enclosing[-1]._totals.closed:
            # ended, yet in this context (a task outliving it): no part of it, whose summary is written
            enclosing = tuple(run for run in enclosing if not run._totals.closed)
            self._extra["parent_lens_run_id"] = None
        if enclosing:  # nested: the run it is part of (exporters nest its span under that one's)
            self._extra["parent_lens_run_id"] = enclosing[-1].run_id
        super().__enter__()
        # the run's records carry this context, never a block's left open inside it at its end
        self._record_context = _context.get()
        if self._monitor.budgets is not None:
            try:
                self._budget = self._monitor.budgets.watch(self.lens_key, self._record_context)
            except Exception as exc:  # never into the application's with block
                self._monitor._report("watching a lens run's budget", exc)
        self._lens_token = _lenses.set((*enclosing, self))
        self._started = time.time()
        self._started_perf = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._wall = time.perf_counter() - self._started_perf
            token, self._lens_token = self._lens_token, None
            # ended in another context: one holding the run (asgiref's sync_to_async copies it back into
            # its caller's) ends it there too; else it was entered and left in copies of their own, said
            # unless closed from outside (an abandoned async generator's, closed by asyncio in a task)
            if not _reset(_lenses, token):
                lenses = _lenses.get()
                if self in lenses:
                    _lenses.set(lenses[: lenses.index(self)])
                elif exc_type is not GeneratorExit:
                    _said_elsewhere(self.lens_key)
            super().__exit__(exc_type, exc, tb)
            # a record written when its last open call ends (a stream another task reads) goes out from
            # here: a sink reading the context (OTel's current span) sees this one
            self._ended_in = copy_context()
            self.summary, due = self._totals.close(self._wall)
            if self._budget is not None and self._totals.pending > 0:
                self._budget.left_running()
            if due:
                self._write(self.summary)
        except Exception as error:  # never into the application's with block
            self._monitor._report("ending a lens", error)

    def _write(self, summary: LensSummary) -> None:
        """Emit the run's record, in the process that opened the run only (not a forked child)."""
        if self.run_id is not None and made_here(self.run_id) and not recorded_apart(self._write, summary):
            emit, end = self._monitor._emit_lens, self._started + self._wall
            ended_in, self._ended_in = self._ended_in, None  # written once: the request's context let go
            assert ended_in is not None  # set when the block ended, before the record can be due
            ended_in.run(emit, self._record_context, summary, end)

    # -- used by the monitor ---------------------------------------------------------------------

    def _settle_call(self) -> None:
        """Once a counted call's record is emitted: check the budget; write the run's record if due."""
        due = self._totals.settle()
        if self._budget is not None:
            self._budget.check(self._monitor, self._totals)
        if due:
            self.summary = self._totals.summary(self._wall)
            self._write(self.summary)
