"""Budgets: the budgets.yaml schema and its loading (docs/BUDGETS.md), and :class:`BudgetGuard`, the
production check of each lens run against it after each of its calls, and in raise mode of its
``max_api_calls`` before each call is sent (``configure(budgets=...)``).
"""

from __future__ import annotations

import json
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import yaml

from ._errors import BudgetError, BudgetExceededError, ConfigError, check_hook, internal_log
from ._records import USD_UNITS, BudgetRecord, LensTotals, budget_record
from .loading import Document, join, read_file

if TYPE_CHECKING:
    from ._context import LensRun
    from ._monitor import LLMCallMonitor

__all__ = [
    "BUDGET_MODES",
    "BudgetGuard",
    "Budgets",
    "Limits",
    "admit",
    "as_budgets",
    "load_budgets",
    "parse_budgets",
    "refuse_if_stopped",
]

BUDGET_MODES: Final = ("warn", "raise")
_SECTIONS: Final = ("default", "lenses", "tests", "total")


@dataclass(frozen=True)
class Limits:
    """The caps one lens run, test or session must stay within; ``None`` means no cap. Each is named by
    its budgets.yaml key; the total it caps is the key without ``max_`` (:attr:`METRIC_OF`), as the
    plugin's totals and the lens summaries name them."""

    KEYS: ClassVar[tuple[str, ...]]  # the fields' names, sorted: the order limits are checked and listed
    METRIC_OF: ClassVar[Mapping[str, str]]  # limit key -> the total it caps

    max_cost_usd: float | None = None
    max_total_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_api_calls: int | None = None

    def items(self) -> list[tuple[str, float]]:
        """``(limit key, value)`` for each cap that is set, in :attr:`KEYS` order."""
        return [(key, value) for key in self.KEYS if (value := getattr(self, key)) is not None]


Limits.KEYS = tuple(sorted(limit.name for limit in fields(Limits)))
Limits.METRIC_OF = {key: key.removeprefix("max_") for key in Limits.KEYS}


@dataclass(frozen=True)
class Budgets:
    """A parsed budgets file (:func:`load_budgets`, :func:`parse_budgets`)."""

    source: str = "budgets.yaml"
    lenses: Mapping[str, Limits] = field(default_factory=dict)
    default: Limits | None = None
    tests: Mapping[str, Limits] = field(default_factory=dict)
    total: Limits | None = None

    def for_lens(self, lens_key: str) -> Limits | None:
        """The limits for each run of ``lens_key``: its own entry, else ``default``."""
        return self.lenses.get(lens_key, self.default)


# caps past these are typos, and would overflow a float
_MAX_COST: Final = Decimal(10) ** 9
_MAX_COUNT: Final = Decimal(10) ** 15


def _limits(doc: Document, node: yaml.Node, path: str) -> Limits:
    values: dict[str, float | int] = {}
    for key, value_node in doc.fields(node, path, "a mapping of limits", Limits.KEYS).items():
        usd = key == "max_cost_usd"
        expected = "a non-negative number of USD" if usd else "a non-negative whole number"
        value = doc.number(
            value_node, f"{path}.{key}", expected, maximum=_MAX_COST if usd else _MAX_COUNT, whole=not usd
        )
        values[key] = float(value) if usd else int(value)
    return Limits(**values)  # type: ignore[arg-type]


class _MappingDocument(Document):
    """A mapping given in code, validated as a file: its errors name the key path, not a line."""

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> Exception:
        return super().error(None, key_path, message)


def _parse(doc: Document, text: str | bytes) -> Budgets:
    root = doc.compose(text)
    if root is None or doc.is_null(root):
        return Budgets(source=doc.name)
    sections: dict[str, Any] = {}
    for key, node in doc.fields(root, "", "a mapping of sections", _SECTIONS).items():
        if key in ("default", "total"):
            sections[key] = _limits(doc, node, key)
        else:
            what = "lens keys" if key == "lenses" else "test node ids"
            sections[key] = {
                name: _limits(doc, limits_node, join(key, name))
                for name, _, limits_node in doc.mapping(node, key, f"a mapping of {what} to limits")
            }
    return Budgets(source=doc.name, **sections)


def _json_value(value: object) -> object:
    """A value of a budgets mapping JSON has no type for: a number of another type (``Decimal("1.5")``,
    numpy's ``int64``) as the number it is, anything else as its repr (refused: ``got "{1}"``)."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (numbers.Real, Decimal)):
        return float(value)
    return repr(value)


def parse_budgets(text: str | bytes | Mapping[str, Any], source: str = "budgets.yaml") -> Budgets:
    """Parse budgets YAML, or a mapping of the same shape; raises :class:`BudgetError` (never anything
    else) naming the file, the line, the key path and the valid keys or values."""
    if isinstance(text, Mapping):
        try:
            as_json = json.dumps(text, default=_json_value)  # JSON is YAML: one validator for both
        except (TypeError, ValueError) as exc:
            raise BudgetError(f"{source}: not a mapping of sections to limits: {exc}") from None
        return _parse(_MappingDocument(source, BudgetError, "a budgets mapping"), as_json)
    if not isinstance(text, str | bytes):
        raise BudgetError(
            f"{source}: parse_budgets() takes YAML text or a mapping, got {text!r}; "
            "for a file, use load_budgets(path)"
        )
    return _parse(Document(source, BudgetError, "a budgets file"), text)


def load_budgets(path: str | os.PathLike[str], name: str | None = None, *, hint: str = "") -> Budgets:
    """Read and parse ``path`` (called ``name`` in messages); a missing file is a :class:`BudgetError`
    too, followed by ``hint``."""
    name = name or str(path)
    hint = f"; create it (sections: {', '.join(_SECTIONS)}){hint}"
    return parse_budgets(read_file(str(path), BudgetError, "budgets file", name=name, hint=hint), name)


def as_budgets(value: Budgets | Mapping[str, Any] | str | os.PathLike[str], *, hint: str = "") -> Budgets:
    """A :class:`Budgets` from itself, a mapping of the budgets.yaml shape, or the path of a budgets file."""
    if isinstance(value, Budgets):
        return value
    if isinstance(value, Mapping):
        return parse_budgets(value, "configure(budgets=...)")
    if isinstance(value, (str, os.PathLike)) and str(value).strip() and "\x00" not in str(value):
        return load_budgets(os.fspath(value), hint=hint)
    raise ConfigError(
        f"budgets must be the path of a budgets file, a mapping of its shape or a Budgets, got {value!r}"
    )


# -- production ----------------------------------------------------------------------------------

# the two totals LensTotals names its own way (its cost in 10**-24 USD); the others it names as Limits
_LENS_TOTALS: Final = {"api_calls": "calls", "cost_usd": "cost_units"}
# a cost budget's calls with no price (a model the price table does not know)
_UNPRICED: Final = (
    "llm-ledger: lens %r has calls with no price (a model the price table does not know), which its "
    "budget %s %s counts as $0 (its summaries say cost_complete: false); add their models to a price file "
    "(LLM_LEDGER_PRICE_FILE or configure(price_file=...)) so that the budget sees them, or keep a token "
    "or call limit beside it"
)
# a cost budget's calls whose cost leaves out their built-in tools' fees (docs/PRICING.md)
_TOOL_FEES: Final = (
    "llm-ledger: lens %r has calls that used built-in tools billed per use (web search...), whose fees "
    "its budget %s %s counts as $0 (its summaries say cost_complete: false); give their fees in USD per "
    'use in a price file\'s tool_fees (tool_fees: {"*": {web_search: 0.01}}, with the fees your provider '
    "bills: docs/PRICING.md) and point LLM_LEDGER_PRICE_FILE or configure(price_file=...) at it, or keep "
    "a call limit beside it"
)
# a token or cost budget's calls answered with no usage (a compatible server that sends none, a stream
# stopped before its usage chunk): only a call limit sees them
_NO_USAGE: Final = (
    "llm-ledger: lens %r has calls that reported no usage, which its budget %s %s counts as {}; keep a "
    "max_api_calls limit beside it, or have the server report usage (for streams: leave stream_usage on, "
    "and read each stream to its end; a cancelled background response never reports it)"
)
# a run that ends before the background responses it began: their end's record counts in no run
_LEFT_RUNNING: Final = (
    "llm-ledger: lens %r ended with background responses (background=True) still running, whose cost "
    "its budget %s %s cannot count: the record of their end comes after the run; retrieve them until they "
    "end inside the lens, or keep a max_api_calls limit beside it"
)
# a token or cost budget's image, audio and video calls billed in other units (docs/PRICING.md)
# a cost budget's calls with an answer billed whose usage was lost (a body that broke, a read timeout)
_ANSWERS_LOST: Final = (
    "llm-ledger: lens %r has calls with answers the server may have billed whose usage was lost (a body "
    "that broke after a 2xx answer, a read timeout; the SDK retried or raised), which its budget %s %s "
    "counts as {} (the calls' records say cost.attempts_left_out or error.status_code 2xx); keep a "
    "max_api_calls limit beside it"
)
_UNITS: Final = (
    "llm-ledger: lens %r has image, audio or video calls billed in other units than tokens (images, "
    "seconds), which no price table prices and its budget %s %s counts as {}; keep a max_api_calls limit "
    "beside it (docs/PRICING.md, Images and audio)"
)
# a cost or prompt / completion token budget's calls whose usage gave total_tokens alone (some
# compatible servers): their tokens count in the total, with no split no price applies to them
_TOTAL_ONLY: Final = (
    "llm-ledger: lens %r has calls whose usage gave only total_tokens (no prompt_tokens and "
    "completion_tokens, as some compatible servers report it), which its budget %s %s counts as {}; "
    "keep a max_total_tokens or max_api_calls limit beside it, or have the server report prompt and "
    "completion tokens"
)
_NO_USAGE_TOKENS: Final = _NO_USAGE.format("0 tokens")
_NO_USAGE_COST: Final = _NO_USAGE.format("$0")
# set once a run in raise mode caps its calls or goes over a limit: only then does each call look at
# the runs it starts in (admit)
checking = False


class BudgetGuard:
    """Checks each lens run against ``budgets`` (a :class:`Budgets`, a mapping of its shape or the path
    of a budgets file; its ``lenses`` and ``default`` sections). ``configure(budgets=..., budget_mode=...,
    on_budget_exceeded=...)`` sets one on the default monitor; ``monitor.budgets = BudgetGuard(...)`` on
    yours. What ``mode`` "warn" and "raise" do and when ``on_exceeded`` is called: docs/BUDGETS.md.
    """

    def __init__(
        self,
        budgets: Budgets | Mapping[str, Any] | str | Path,
        *,
        mode: str = "warn",
        on_exceeded: Callable[[BudgetRecord], object] | None = None,
    ) -> None:
        self.budgets: Budgets = as_budgets(budgets)
        if mode not in BUDGET_MODES:
            raise ConfigError(
                f"budget_mode must be one of {', '.join(map(repr, BUDGET_MODES))}, got {mode!r}"
            )
        check_hook("on_budget_exceeded", on_exceeded)
        self.mode = mode
        self.on_exceeded = on_exceeded
        # lens key -> ((totals attribute, cap, limit key, cap as written), ...); None: no limit
        self._checks: dict[str, tuple[tuple[str, int, str, float], ...] | None] = {}
        self._unpriced: set[str] = set()  # lens keys warned of calls their cost budget cannot see
        self._no_usage: set[str] = set()  # lens keys warned of calls their token budgets cannot see
        self._pending: set[str] = set()  # lens keys warned of runs ended before their background responses

    def __repr__(self) -> str:
        return f"<BudgetGuard {self.budgets.source} mode={self.mode}>"

    def watch(self, lens_key: str, context: dict[str, Any]) -> _RunBudget | None:
        """The check of one run of ``lens_key`` (``None``: no limit applies to it)."""
        if lens_key in self._checks:
            checks = self._checks[lens_key]
        else:
            limits = self.budgets.for_lens(lens_key)
            found = []
            for key, cap in limits.items() if limits else ():
                exact = int(Decimal(str(cap)) * USD_UNITS) if key == "max_cost_usd" else int(cap)
                metric = Limits.METRIC_OF[key]
                found.append((_LENS_TOTALS.get(metric, metric), exact, key, cap))
            checks = tuple(found) or None
            if len(self._checks) < 10_000:  # lens keys are few; a key made per request is not cached
                self._checks[lens_key] = checks
        return None if checks is None else _RunBudget(self, checks, context)


class _RunBudget:
    """One lens run's budget: compared with its totals after each call; over a limit it is reported
    once, and in raise mode ``stopped`` holds the error its next call raises. In raise mode its
    ``max_api_calls`` (``cap``) also counts the calls started (``started``): one past it is refused."""

    __slots__ = ("_checks", "_context", "_guard", "_lock", "_over", "cap", "started", "stopped")

    def __init__(
        self, guard: BudgetGuard, checks: tuple[tuple[str, int, str, float], ...], context: dict[str, Any]
    ) -> None:
        global checking
        self._guard = guard
        self._checks = checks
        self._context = context
        self._lock = threading.Lock()
        self._over: set[str] = set()
        self.stopped: BudgetRecord | None = None
        self.started: int = 0
        self.cap: int | None = None
        if guard.mode == "raise":
            self.cap = next((cap for _, cap, key, _ in checks if key == "max_api_calls"), None)
            checking = checking or self.cap is not None

    def start(self, monitor: LLMCallMonitor, cap: int) -> bool:
        """Count a call about to be sent; False when it would be one past ``cap``: the run is then
        stopped, its record written (by the first call refused)."""
        with self._lock:
            if self.started < cap:
                self.started += 1
                return True
        try:
            self._exceeded(monitor, "max_api_calls", cap, cap + 1, refused=True)
        except Exception as exc:  # a record that cannot be made: reported, and the call goes
            monitor._report("checking a lens run's budget", exc)
        return False

    def unstart(self) -> None:
        """A call counted by :meth:`start` was refused by another run's cap: never sent."""
        with self._lock:
            self.started -= 1

    def check(self, monitor: LLMCallMonitor, totals: LensTotals) -> None:
        """After a call of the run ended: report each limit its totals went over for the first time."""
        for attribute, cap, key, written in self._checks:
            actual = getattr(totals, attribute)
            if actual > cap and key not in self._over:
                try:
                    usd_or_count = actual / USD_UNITS if key == "max_cost_usd" else actual
                    self._exceeded(monitor, key, written, usd_or_count)
                except Exception as exc:  # never in the way of the call, nor of the run's summary
                    monitor._report("checking a lens run's budget", exc)
            elif key == "max_cost_usd" and not totals.priced:  # (not a background start: its end comes)
                # no usage reported, else (or also: told once) tools' fees or a model with no price
                message = _NO_USAGE_COST if not totals.tokens_complete else _UNPRICED
                if totals.tokens_complete and totals.units_left_out:
                    message = _UNITS.format("$0")
                elif totals.tokens_complete and totals.unsplit:
                    message = _TOTAL_ONLY.format("$0")
                elif totals.tokens_complete and totals.fees_left_out:
                    message = _TOOL_FEES
                elif totals.tokens_complete and totals.answers_lost:
                    message = _ANSWERS_LOST.format("$0")
                self._blind(self._guard._unpriced, message, key, written)
            elif key.endswith("_tokens") and not totals.tokens_complete:
                self._blind(self._guard._no_usage, _NO_USAGE_TOKENS, key, written)
            elif key.endswith("_tokens") and totals.units_left_out:
                self._blind(self._guard._no_usage, _UNITS.format("0 tokens"), key, written)
            elif key != "max_total_tokens" and key.endswith("_tokens") and totals.unsplit:
                self._blind(self._guard._no_usage, _TOTAL_ONLY.format("0 tokens"), key, written)
            elif key.endswith("_tokens") and totals.answers_lost:
                self._blind(self._guard._no_usage, _ANSWERS_LOST.format("0 tokens"), key, written)

    def left_running(self) -> None:
        """The run ended before background responses it began: their cost and tokens come after it."""
        for _, _, key, written in self._checks:
            if key != "max_api_calls":
                self._blind(self._guard._pending, _LEFT_RUNNING, key, written)
                return

    def _blind(self, warned: set[str], message: str, key: str, cap: float) -> None:
        """Warn once per lens key (``warned`` holds the keys told) that the limit ``key`` cannot see
        some of the run's calls, so that a budget never passes quietly on calls counted as 0."""
        lens_key = str(self._context.get("lens_key"))
        if lens_key not in warned and len(warned) < 10_000:
            warned.add(lens_key)
            internal_log.warning(message, lens_key, key, _amount(key, cap))

    def _exceeded(
        self, monitor: LLMCallMonitor, key: str, cap: float, actual: float, refused: bool = False
    ) -> None:
        global checking
        guard = self._guard
        with self._lock:  # stopped as the limit is marked over: a call refused meanwhile sees it
            if key in self._over:  # another thread's call got there first
                return
            self._over.add(key)
            record = budget_record(
                context=self._context,
                budget={
                    "limit": key,
                    "max": cap,
                    "actual": actual,
                    "source": guard.budgets.source,
                    "mode": guard.mode,
                    "refused": refused,
                },
                epoch=time.time(),
            )
            if guard.mode == "raise" and self.stopped is None:
                self.stopped = record
                checking = True
        monitor._alert(record, guard.on_exceeded, "the on_budget_exceeded callback")


def _amount(key: str, value: float) -> str:
    """A limit or a run's total as written: a whole count, or USD with its $ and every digit (never
    ``1e+06``, which hides the difference between a limit and a total just over it)."""
    return f"${Decimal(repr(value)):f}" if key == "max_cost_usd" else str(int(value))


def refuse_if_stopped(lenses: tuple[LensRun, ...]) -> None:
    """Raise :class:`BudgetExceededError` if a lens run open here went over its budget in raise mode
    (checked before each call once some run may be stopped: ``checking``)."""
    for run in lenses:
        budget = run._budget
        if budget is not None and budget.stopped is not None:
            record = budget.stopped
            spent = record["budget"]
            limit = spent["limit"]
            state = "is over its budget"
            over = f"{limit} {_amount(limit, spent['max'])}, reached {_amount(limit, spent['actual'])}"
            if spent.get("refused"):  # the cap on calls started: this one would be past it
                state, over = "is at its budget", f"{limit} {_amount(limit, spent['max'])}, all started"
            raise BudgetExceededError(
                f"lens run {record['context'].get('lens_key')!r} {state} ({over}; limits from "
                f"{spent['source']}): this call was not sent. Raise the limit, or use budget_mode='warn' "
                "to record breaches without stopping",
                record,
            )


def admit(lenses: tuple[LensRun, ...]) -> None:
    """Before a call is sent (once some run caps its calls or was stopped in raise mode: ``checking``):
    refuse it if a lens run open here is stopped, or has started as many calls as its ``max_api_calls``
    allows in raise mode (then stopped, its record written); else count it started in each capped run."""
    refuse_if_stopped(lenses)
    counted: list[_RunBudget] = []
    for run in lenses:
        budget = run._budget
        if budget is None or (cap := budget.cap) is None or run._totals.closed:
            continue
        if budget.start(run._monitor, cap):
            counted.append(budget)
        elif budget.stopped is not None:  # (else its record failed, reported: the call goes)
            for other in counted:  # never sent: it counts nowhere
                other.unstart()
            refuse_if_stopped((run,))
