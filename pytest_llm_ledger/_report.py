"""Session totals: per test, per lens and overall; budget checks; the report JSON; terminal tables.

Costs are summed exactly, as ``Decimal`` dollars read from each record's JSON number, so totals do
not depend on the order records arrive in (a serial run and an xdist run give identical numbers);
they leave as JSON numbers.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any, Final

import yaml

from llm_ledger import Budgets, Limits

# llm_ledger.analysis, not llm_ledger.report (aggregation, rendering, the diff): the plugin is loaded by
# every pytest run of an environment with llm-ledger installed
from llm_ledger.analysis import (
    COUNTS,
    NO_ANSWER,
    NO_LENS,
    REPORT_SCHEMA,
    UsageRow,
    cost_decimal,
    cost_gaps,
    failed_calls,
    text_table,
    usage_row,
    usd,
)
from llm_ledger.loading import did_you_mean, listed, one_line

from ._naming import replayed_auth_advice, rerecord_command

__all__ = [
    "SESSION_BUCKET",
    "Breach",
    "SessionLedger",
    "Totals",
    "budget_report",
    "notices",
    "paired",
    "priced_at_fixed_time",
    "render_breaches",
    "render_lens_table",
    "sets_limits",
]

REPORT_VERSION: Final = 1
SESSION_BUCKET: Final = "<session>"  # records emitted outside any test's setup, call or teardown
# what identifies a row of the report's "usage": `llm-ledger reprice` prices each again, so calls a price
# tells apart stay apart: the service tier that served them, the minute they were priced at (UTC) where
# their price depends on the time of day ("" elsewhere, or unknown)
USAGE_KEYS: Final = (
    "lens",
    "provider",
    "server",
    "model",
    "served_model",
    "cost_source",
    "service_tier",
    "at",
)
_INTS: Final = ("api_calls", "prompt_tokens", "completion_tokens", "total_tokens", "errors")
# the per-model counts of calls whose cost is unknown or incomplete, each its own reason (cost_gaps)
_GAPS: Final = ("unpriced", "no_usage", "units", "tool_fees", "pending", "total_only", "lost")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Totals:
    """Calls, tokens and cost of a call, a lens run, a test, a lens or the session.

    A call whose cost is unknown or incomplete is counted, per model, under its reason (the dicts
    below), so a budget that cannot be checked can say why. A background response begun counts 1 in
    ``pending`` and the record of its end -1 (:func:`paired`).
    """

    api_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    errors: int = 0
    cost: Decimal = Decimal(0)  # USD, summed exactly
    priced: bool = True  # every call's cost known (background responses aside: ``pending``)
    unpriced: dict[str, int] = field(default_factory=dict)  # model -> calls with tokens but no price
    no_usage: dict[str, int] = field(default_factory=dict)  # model -> calls that reported no usage
    units: dict[str, int] = field(default_factory=dict)  # model -> calls billed in units not priced
    tool_fees: dict[str, int] = field(default_factory=dict)  # model -> calls with tool fees left out
    pending: dict[str, int] = field(default_factory=dict)  # model -> background responses begun, not ended
    total_only: dict[str, int] = field(default_factory=dict)  # model -> calls that reported a total alone
    # (no price applies to a total)
    lost: dict[str, int] = field(default_factory=dict)  # model -> calls with a billed answer's usage lost

    @property
    def cost_complete(self) -> bool:
        return self.priced and not any(count > 0 for count in self.pending.values())

    @property
    def cost_usd(self) -> float:
        return float(self.cost)

    def metric(self, name: str) -> float:
        return float(getattr(self, name))  # cost_usd included

    def add(self, other: Totals) -> None:
        for name in _INTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost += other.cost
        self.priced = self.priced and other.priced
        for name in _GAPS:
            mine = getattr(self, name)
            for model, count in getattr(other, name).items():
                mine[model] = mine.get(model, 0) + count
                if not mine[model]:  # a background response's start and end
                    del mine[model]

    @classmethod
    def sum_of(cls, parts: Iterable[Totals]) -> Totals:
        out = cls()
        for part in parts:
            out.add(part)
        return out

    @classmethod
    def of_call(cls, record: Mapping[str, Any], row: UsageRow | None = None) -> Totals:
        """The totals of one call record (``row``: its :func:`usage_row`, when known)."""
        row = row or usage_row(record)
        totals = cls(
            api_calls=1,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens,
            errors=row.failed_calls,
            cost=row.cost_usd,
        )
        if row.lost_answer_calls:  # an answer billed (retried, or the call failed) whose usage was lost
            totals.priced = False
            totals.lost[row.model_name] = 1
        if row.uncosted_calls:  # billed, with no cost: say why, per model
            totals.priced = False
            if row.unpriced_unit_calls:
                gaps = totals.units
            elif row.total_only_calls:
                gaps = totals.total_only
            else:
                gaps = totals.no_usage if row.no_usage_calls else totals.unpriced
            gaps[row.model_name] = 1
        if row.tool_fee_calls:  # priced, its built-in tools' fees left out
            totals.priced = False
            totals.tool_fees[row.model_name] = 1
        return totals

    @classmethod
    def of_lens(cls, record: Mapping[str, Any]) -> Totals:
        summary = record.get("summary") or {}
        cost = cost_decimal(summary.get("total_cost_usd"))
        return cls(
            api_calls=_int(summary.get("total_api_calls")),
            prompt_tokens=_int(summary.get("prompt_tokens")),
            completion_tokens=_int(summary.get("completion_tokens")),
            total_tokens=_int(summary.get("total_tokens")),
            errors=_int(summary.get("errors")),
            cost=cost or Decimal(0),
            priced=bool(summary.get("cost_complete", True)) and cost is not None,
        )

    def cost_gaps(self) -> str:
        return cost_gaps(**{name: getattr(self, name) for name in _GAPS})

    def cost_fixes(self) -> str:
        fixes = [fix for name, fix in _FIXES if any(n > 0 for n in getattr(self, name).values())]
        return "; ".join(fixes or [PRICE_FIX])

    def to_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _INTS}
        out["cost_usd"] = self.cost_usd
        out["cost_complete"] = self.cost_complete
        return out


def paired(record: Mapping[str, Any], begun: dict[str, str], row: UsageRow | None = None) -> Totals:
    """The totals of a call record, counting a background response it begins (+1 in ``pending``) or
    ends (-1); ``begun`` (response id -> model) is kept across the records read one after another."""
    row = row or usage_row(record)
    totals = Totals.of_call(record, row)
    if (response_id := row.response_id) is not None:
        if row.pending_calls:
            begun[response_id] = row.model_name
            totals.pending[row.model_name] = 1
        elif response_id in begun:
            totals.pending[begun.pop(response_id)] = -1
    return totals


# the counts a report's usage row gives first, in this order; the rest of COUNTS follow in theirs
_FIRST_COUNTS: Final = (
    "calls", "prompt_tokens", "cached_tokens", "cache_write_tokens", "prompt_audio_tokens",
    "completion_tokens", "completion_audio_tokens", "cached_audio_tokens", "prompt_image_tokens",
    "cached_image_tokens", "total_tokens",
)  # fmt: skip


@dataclass(slots=True)
class UsageSum:
    """The calls of one lens (the innermost) to one server and model: their :data:`COUNTS` summed."""

    counts: Counter[str] = field(default_factory=Counter)  # a name of COUNTS -> the calls' sum
    cost: Decimal = Decimal(0)  # USD, as recorded
    tool_uses: Counter[str] = field(default_factory=Counter)  # built-in tools' uses: kind -> uses
    tests_with_failed_calls: set[str] = field(default_factory=set)  # node ids

    @classmethod
    def of_row(cls, row: UsageRow, nodeid: str) -> UsageSum:
        counts = Counter({name: getattr(row, name) for name in COUNTS})
        return cls(counts, row.cost_usd, Counter(row.tool_uses), {nodeid} if row.failed_calls else set())

    def add(self, other: UsageSum) -> None:
        self.counts.update(other.counts)  # not +=, which drops the zeros the report shows
        self.cost += other.cost
        self.tool_uses.update(other.tool_uses)
        self.tests_with_failed_calls |= other.tests_with_failed_calls

    def to_report(self) -> dict[str, Any]:
        return {
            **dict.fromkeys(_FIRST_COUNTS, 0),
            **self.counts,
            "tool_uses": dict(sorted(self.tool_uses.items())),
            "tests_with_failed_calls": sorted(self.tests_with_failed_calls),
            "cost_usd": float(self.cost),
        }


def _run_id(context: Mapping[str, Any]) -> str:
    return str(context.get("lens_run_id") or context.get("lens_key"))


def _usage_key(row: UsageRow) -> tuple[str, ...]:
    """The row's USAGE_KEYS, the same when unchanged cassettes are replayed again: the server without a
    passing port, the minute only for a price by the time of day."""
    tier = row.service_tier or ""
    return (
        row.lens, row.provider, row.stable_server, row.model, row.served_model, row.cost_source, tier,
        row.priced_minute,
    )  # fmt: skip


def _usage_entry(key: tuple[str, ...], row: UsageSum) -> dict[str, Any]:
    entry: dict[str, Any] = dict(zip(USAGE_KEYS, key, strict=True))
    entry["service_tier"] = entry["service_tier"] or None  # null: not named (the standard tier)
    entry["at"] = entry["at"] or None  # null: a price the time does not change, or unknown
    return {**entry, **row.to_report()}


PRICE_FIX: Final = (
    "add the model to a price file (USD per 1M tokens) and point LLM_LEDGER_PRICE_FILE at it, read by "
    "llm_ledger.configure() (call it in conftest.py if the tests run none), or pass "
    "configure(price_file=...); see the Prices section of docs/MONITORING.md"
)
USAGE_FIX: Final = (
    "re-record it with usage: streamed chat calls report it with stream_options include_usage "
    "(llm-ledger asks for it unless LLM_LEDGER_STREAM_USAGE=0), and a stream closed before its end "
    "reports none: read it to the end; a cancelled background response (responses.cancel) never reports "
    "its usage: keep a max_api_calls limit in place of a cost limit for it"
)
TOTAL_ONLY_FIX: Final = (
    "have the server report prompt and completion tokens (its usage gives total_tokens alone, and no "
    "price applies to a total); until then a max_total_tokens or max_api_calls limit checks its calls"
)
UNITS_FIX: Final = (
    "llm-ledger prices prompt and completion tokens: docs/PRICING.md (Images and audio) says what each "
    "image, audio and video call is billed in"
)


LOST_FIX: Final = (
    "nothing re-recorded can give a lost answer's usage (the server billed it, the SDK dropped it and "
    "retried or raised): keep a max_api_calls limit beside a cost limit, and look at the calls whose "
    "record has cost.attempts_left_out or an error.status_code of 2xx (docs/MONITORING.md)"
)
PENDING_FIX: Final = (
    "a background response's cost is in the record of its end: retrieve it (responses.retrieve) until it "
    "ends, in the test that began it (docs/PRICING.md, Background responses)"
)
TOOL_FEE_FIX: Final = (
    "give their fees in USD per use in the price file's tool_fees, by model name or pattern "
    '(tool_fees: {"*": {web_search: 0.01, file_search: 0.0025}}: the fees your provider bills), and '
    "point LLM_LEDGER_PRICE_FILE at it, read by llm_ledger.configure() (call it in conftest.py if the "
    "tests run none), or pass configure(price_file=...); see docs/PRICING.md, Built-in tools billed per use"
)


# what makes each kind of unknown cost known, in the order the notices give them
_FIXES: Final = (
    ("unpriced", PRICE_FIX),
    ("no_usage", USAGE_FIX),
    ("total_only", TOTAL_ONLY_FIX),
    ("units", UNITS_FIX),
    ("tool_fees", TOOL_FEE_FIX),
    ("pending", PENDING_FIX),
    ("lost", LOST_FIX),
)


@dataclass(slots=True)
class LensRuns:
    """Every run of one lens in the session (``cut_short``: those never summarised, counted from their
    ended calls)."""

    runs: int
    sum: Totals
    failed_in: list[str]  # node ids of the tests where its calls failed: to re-record when figures drop
    tests: list[str]  # node ids of the tests that ran it (a lens renamed runs in the same tests)
    cut_short: int


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit exceeded, or that could not be checked."""

    scope: str
    name: str
    limit_key: str
    limit: float
    actual: float
    worst_test: str
    runs_over: int = 1
    unknown: str = ""  # a limit that cannot be checked: why (the models with no known cost or usage)
    fix: str = ""  # and what makes the value known
    cut_short: bool = False  # the worst run's summary never came: its figures are at least ``actual``

    @property
    def where(self) -> str:
        return f"{self.scope} {self.name}" if self.scope != "total" else "total"


# the SessionLedger sets and dicts a worker's update the controller's with
_MERGED: Final = (
    *("recorded", "cassettes", "tested", "deselected", "refused", "unmarked_live"),
    *("unplayed", "auth_errors", "replayed_auth_errors"),
)


class SessionLedger:
    """Everything the session's records add up to; mergeable across xdist workers."""

    def __init__(self) -> None:
        self.tests: dict[str, Totals] = {}
        self.lens_runs: list[tuple[str, str, Totals]] = []  # (lens key, node id, run totals)
        self.unplayed: dict[str, int] = {}  # node id -> recorded interactions its passing run never played
        self.recorded: set[str] = set()  # node ids whose cassette this run recorded into
        self.auth_errors: dict[str, list[str]] = {}  # node id -> the 401/403 answers its cassette left out
        # node id -> "its cassette: the 401/403 answers it replayed" (the test does not expect them)
        self.replayed_auth_errors: dict[str, str] = {}
        self.expect_auth_errors: set[str] = set()  # the cassette paths of tests marked record_auth_errors
        # the cassette paths of the collected tests marked llm (not live) -> the node id of the first
        self.cassettes: dict[str, str] = {}
        self.tested: set[str] = set()  # the cassette folders of the test files the collection found tests in
        self.deselected: set[str] = set()  # node ids of collected tests left out (-k, a CI shard)
        self.failed: set[str] = set()  # node ids of failed tests (seen on the controller under xdist)
        self.refused: set[str] = set()  # OpenAI requests refused while no test ran: they fail the run
        self.unmarked_live: set[str] = set()  # node ids not marked llm whose OpenAI requests went out live
        # (node id, *USAGE_KEYS) -> the tokens of those calls; node id -> its calls outside any lens
        self.usage: dict[tuple[str, ...], UsageSum] = {}
        self._outside: dict[str, Totals] = {}
        # lens run id -> (its lens key, node id, its ended calls, its ended nested runs' included) until
        # its summary comes; a run left here never ended (key "": known only as a nested run's parent)
        self._open: dict[str, tuple[str, str, Totals]] = {}
        self._begun: dict[str, str] = {}  # background response id -> model, until the record of its end
        self._begun_rows: dict[str, tuple[str, ...]] = {}  # background response id -> its start's usage row

    def add_call(self, nodeid: str, record: Mapping[str, Any]) -> None:
        row = usage_row(record)
        call = paired(record, self._begun, row)
        self.tests.setdefault(nodeid, Totals()).add(call)
        context = record.get("context") or {}
        if not context.get("lens_key"):
            self._outside.setdefault(nodeid, Totals()).add(call)
        else:
            self._open_run(_run_id(context), nodeid, str(context["lens_key"])).add(call)
        key = (nodeid, *_usage_key(row))
        self.usage.setdefault(key, UsageSum()).add(UsageSum.of_row(row, nodeid))
        if row.pending_calls and row.response_id is not None:
            self._begun_rows[row.response_id] = key
        elif row.response_id in self._begun_rows:  # ended: the cost of its start's row is the end's
            self.usage[self._begun_rows.pop(row.response_id)].counts["pending_calls"] -= 1

    def add_lens(self, nodeid: str, record: Mapping[str, Any]) -> None:
        context = record.get("context") or {}
        run = Totals.of_lens(record)
        self.tests.setdefault(nodeid, Totals())
        # a run's calls reach the ledger before its summary, a nested run's summary before its parent's
        _, _, calls = self._open.pop(_run_id(context), ("", nodeid, Totals()))
        if context.get("parent_lens_run_id"):
            self._open_run(str(context["parent_lens_run_id"]), nodeid).add(calls)
        for name in _GAPS:  # why its cost is incomplete: its summary does not say
            setattr(run, name, dict(getattr(calls, name)))
        self.lens_runs.append((str(context.get("lens_key") or "<unnamed>"), nodeid, run))

    def _open_run(self, run_id: str, nodeid: str, key: str = "") -> Totals:
        """The ended calls of lens run ``run_id`` while its summary has not come."""
        old_key, owner, calls = self._open.get(run_id) or ("", nodeid, Totals())
        self._open[run_id] = (key or old_key, owner, calls)
        return calls

    def forget(self, nodeid: str) -> None:
        """Drop what test ``nodeid`` added, counts and notices: it runs again (pytest-rerunfailures)."""
        self.tests[nodeid] = Totals()
        self.lens_runs = [run for run in self.lens_runs if run[1] != nodeid]
        self._open = {run_id: run for run_id, run in self._open.items() if run[1] != nodeid}
        self.usage = {key: row for key, row in self.usage.items() if key[0] != nodeid}
        self._outside.pop(nodeid, None)
        # its notices too: a 401 of a failed attempt says nothing about the attempt that counts
        self.auth_errors.pop(nodeid, None)
        self.replayed_auth_errors.pop(nodeid, None)
        self.unplayed.pop(nodeid, None)
        self.unmarked_live.discard(nodeid)

    # -- xdist -----------------------------------------------------------------------------------

    def to_wire(self) -> str:
        """This ledger as text, which an xdist worker's ``workeroutput`` holds."""
        return base64.b64encode(pickle.dumps(self)).decode("ascii")

    def merge_wire(self, wire: str) -> None:
        other: SessionLedger = pickle.loads(base64.b64decode(wire))
        for nodeid, totals in other.tests.items():
            self.tests.setdefault(nodeid, Totals()).add(totals)
        self.lens_runs += other.lens_runs
        for name in _MERGED:
            getattr(self, name).update(getattr(other, name))
        for key, row in other.usage.items():
            self.usage.setdefault(key, UsageSum()).add(row)
        for nodeid, totals in other._outside.items():
            self._outside.setdefault(nodeid, Totals()).add(totals)
        self._open.update(other._open)

    # -- aggregates ------------------------------------------------------------------------------

    def total(self) -> Totals:
        return Totals.sum_of(self.tests.values())

    @property
    def outside(self) -> Totals:
        """The calls made outside any lens."""
        return Totals.sum_of(self._outside.values())

    def runs_by_lens(self) -> dict[str, tuple[list[tuple[str, Totals]], list[tuple[str, Totals]]]]:
        """lens key -> (node id, totals) of each of its summarised runs, and of each run cut short (never
        summarised), counted from its ended calls; sorted."""
        summarised, cut = _by_lens(self.lens_runs), _by_lens(run for run in self._open.values() if run[0])
        return {key: (summarised.get(key, []), cut.get(key, [])) for key in sorted({*summarised, *cut})}

    def outside_failed_in(self) -> list[str]:
        rows = (row for key, row in self.usage.items() if key[1] == NO_LENS)
        return sorted({nodeid for row in rows for nodeid in row.tests_with_failed_calls})

    def lenses(self) -> dict[str, LensRuns]:
        out = {}
        for key, (summarised, cut) in self.runs_by_lens().items():
            runs = summarised + cut
            failed, tests = sorted({n for n, run in runs if run.errors}), sorted({n for n, _ in runs})
            out[key] = LensRuns(len(runs), Totals.sum_of(r for _, r in runs), failed, tests, len(cut))
        return out

    def report(self, exit_status: int | None = None) -> dict[str, Any]:
        """The ``--llm-report`` document; ``exit_status``, pytest's, says whether the run stopped early."""
        lens_runs = Counter(nodeid for key, nodeid, _ in [*self.lens_runs, *self._open.values()] if key)
        usage: dict[tuple[str, ...], UsageSum] = {}
        for (_, *key), row in self.usage.items():
            usage.setdefault(tuple(key), UsageSum()).add(row)
        return {
            "schema": REPORT_SCHEMA,
            "version": REPORT_VERSION,
            "lenses": {
                key: {
                    "runs": agg.runs,
                    "cut_short_runs": agg.cut_short,
                    **agg.sum.to_report(),
                    "tests_with_failed_calls": agg.failed_in,
                    "tests": agg.tests,
                }
                for key, agg in self.lenses().items()
            },
            "tests": {
                nodeid: {**totals.to_report(), "lens_runs": lens_runs[nodeid]}
                for nodeid, totals in sorted(self.tests.items())
            },
            "total": {**self.total().to_report(), "tests": len(self.tests)},
            # a report of a run whose tests failed (cassette misses...) does not describe the code:
            # `llm-ledger diff` flags it
            "failed_tests": sorted(self.failed),
            "exit_status": exit_status,
            # the tokens of each lens per server and model, for `llm-ledger reprice`
            "usage": [_usage_entry(key, row) for key, row in sorted(usage.items())],
        }

    # -- budgets ---------------------------------------------------------------------------------

    def check(self, budgets: Budgets) -> list[Breach]:
        """Every limit in ``budgets`` this session exceeds, worst run first within each limit."""
        breaches: list[Breach] = []
        for key, (summarised, cut) in self.runs_by_lens().items():
            if (limits := budgets.for_lens(key)) is not None:
                breaches.extend(_check_runs("lens", key, limits, summarised, cut))
        for nodeid, limits in sorted(budgets.tests.items()):
            if nodeid in self.tests:
                breaches.extend(_check_runs("test", nodeid, limits, [(nodeid, self.tests[nodeid])]))
        if budgets.total is not None:
            for breach in _check_runs("total", "session", budgets.total, [("", self.total())]):
                # the worst test: the one that did most of what went over the limit, or one whose
                # value is unknown when that is why the limit could not be checked
                metric = Limits.METRIC_OF[breach.limit_key]
                # sorted: a tie (a test's parametrizations) names the same test whatever order the
                # tests ran or the xdist workers reported in
                tests = sorted(self.tests.items())
                if breach.unknown:
                    tests = [(nodeid, t) for nodeid, t in tests if _unknown(t, metric)] or tests
                worst = max(tests, key=lambda kv: kv[1].metric(metric), default=("", Totals()))[0]
                breaches.append(replace(breach, worst_test=worst))
        return breaches


def _by_lens(runs: Iterable[tuple[str, str, Totals]]) -> dict[str, list[tuple[str, Totals]]]:
    out: dict[str, list[tuple[str, Totals]]] = {}
    for key, nodeid, run in sorted(runs, key=lambda r: (r[0], r[1])):
        out.setdefault(key, []).append((nodeid, run))
    return out


def _check_runs(
    scope: str,
    name: str,
    limits: Limits,
    runs: list[tuple[str, Totals]],
    cut: Iterable[tuple[str, Totals]] = (),
) -> list[Breach]:
    """The limits ``runs`` exceed, or cannot be checked on; runs ``cut`` short (no summary came) are
    checked on their ended calls, a lower bound: over a limit is a breach, within it unchecked (a notice)."""
    out = []
    for limit_key, limit in limits.items():
        metric = Limits.METRIC_OF[limit_key]
        each = [(run.metric(metric), nodeid, False) for nodeid, run in runs]
        over = [t for t in each + [(run.metric(metric), nodeid, True) for nodeid, run in cut] if t[0] > limit]
        if over:
            actual, nodeid, cut_short = max(over, key=lambda t: t[0])
            out.append(Breach(scope, name, limit_key, limit, actual, nodeid, len(over), cut_short=cut_short))
        elif unknown := [(nodeid, run) for nodeid, run in runs if _unknown(run, metric)]:
            # fail closed: a limit is met only by a value that is known
            nodeid, run = unknown[0]
            gaps = Totals.sum_of(each for _, each in unknown)
            if metric != "cost_usd":  # tokens are unknown only for calls that reported none to price
                split = gaps.total_only if metric != "total_tokens" else {}  # a total alone: no split
                gaps = Totals(no_usage=gaps.no_usage, units=gaps.units, total_only=split, lost=gaps.lost)
            out.append(
                Breach(scope, name, limit_key, limit, run.metric(metric), nodeid, len(unknown),
                       gaps.cost_gaps(), gaps.cost_fixes())
            )  # fmt: skip
    return out


def _over(run: Totals, limits: Limits) -> bool:
    return any(run.metric(Limits.METRIC_OF[key]) > limit for key, limit in limits.items())


def _unknown(run: Totals, metric: str) -> bool:
    """Whether ``run``'s ``metric`` is a lower bound only: its cost leaves out calls with no known cost,
    its tokens calls that reported none (a total alone has no prompt or completion tokens)."""
    if metric == "cost_usd":
        return not run.cost_complete
    split = metric != "total_tokens" and bool(run.total_only)
    return metric != "api_calls" and bool(run.no_usage or run.units or split or run.lost)


# -- rendering ----------------------------------------------------------------------------------


def _format_value(limit_key: str, value: float) -> str:
    return usd(value) if limit_key == "max_cost_usd" else f"{int(value):,}"


# a lens column this wide keeps a row of the table on one line of a 100-column terminal
_KEY_WIDTH: Final = 40


def _cut(key: str, width: int, head: int) -> str:
    return key if len(key) <= width else key[:head] + "…" + key[len(key) - (width - 1 - head) :]


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each lens key as the table shows it: whole up to :data:`_KEY_WIDTH` characters, else cut in the
    middle (its start and end name it best); keys that would cut alike get one cut that tells them
    apart, a little wider if need be, or are shown whole."""
    shown = {key: key for key in keys if len(key) <= _KEY_WIDTH}
    groups: dict[str, list[str]] = {}
    for key in keys:
        if key not in shown:
            groups.setdefault(_cut(key, _KEY_WIDTH, _KEY_WIDTH // 2), []).append(key)
    for group in groups.values():
        cuts = (
            [_cut(key, width, head) for key in group]
            for width in range(_KEY_WIDTH, 2 * _KEY_WIDTH)
            for head in sorted(range(1, width - 1), key=lambda head: abs(head - width // 2))
        )
        taken = set(shown.values())
        fit = next((c for c in cuts if len(set(c)) == len(c) and not taken & set(c)), group)
        shown.update(zip(group, fit, strict=True))
    return shown


def render_lens_table(ledger: SessionLedger) -> list[str]:
    """The per-lens totals of the terminal summary; a "failed" column, and a line naming each lens and
    test, when calls failed: a lens whose calls missed their cassette would read as cheaper."""
    rows = []
    incomplete = False
    by_key = ledger.lenses()
    short = _short_keys(list(by_key))
    cut = {key: f" ({agg.cut_short:,} cut short)" * bool(agg.cut_short) for key, agg in by_key.items()}
    named = [(key, f"{agg.runs:,}{cut[key]}", agg.sum, agg.failed_in) for key, agg in by_key.items()]
    if ledger.outside.api_calls:  # calls outside any lens: with the lenses, they add up to the total
        named.append(("(no lens)", "", ledger.outside, ledger.outside_failed_in()))
    total = ledger.total()
    failed = bool(total.errors) or any(s.errors for _, _, s, _ in named)
    for name, runs, s, _ in [*named, ("(session total)", "", total, [])]:
        incomplete |= not s.cost_complete
        rows.append(
            [short.get(name, name), runs, f"{s.api_calls:,}", f"{s.prompt_tokens:,}",
             f"{s.completion_tokens:,}", f"{s.total_tokens:,}", usd(s.cost, complete=s.cost_complete)]
            + ([f"{s.errors:,}" if s.errors else ""] if failed else [])
        )  # fmt: skip
    headers = ["lens", "runs", "calls", "prompt", "completion", "tokens", "cost"] + ["failed"] * failed
    lines = text_table(headers, rows)
    if incomplete:
        lines.append(f"* the cost shown leaves out calls with no known cost: {total.cost_gaps()}")
    if any(cut.values()):
        lines.append(
            "cut short: a lens run whose lens_summary never came (still open when the session ended: a "
            "stream not read to its end, a thread still running) counts its calls that had ended"
        )
    if failed:
        lenses = [
            f"{one_line(key)} ({s.errors}, in {listed(tests)})" if tests else f"{one_line(key)} ({s.errors})"
            for key, _, s, tests in named
            if s.errors
        ]
        lines.append(f"failed: {failed_calls()}; {NO_ANSWER}: {listed(lenses)}")
    return lines


def priced_at_fixed_time(ledger: SessionLedger, setting: str) -> str | None:
    """The line naming the models whose calls were priced at the time of day ``setting`` fixes
    (``dearest`` or ``HH:MM``, in lower case) rather than when they ran; None for none, or ``now``."""
    # a usage key: node id, then USAGE_KEYS; "at" is set only for a price by the time of day, and then
    # the calls have a model
    model, served, at = (1 + USAGE_KEYS.index(name) for name in ("model", "served_model", "at"))
    timed = {
        f"{one_line(key[model] or key[served])} ({key[at][11:16]} UTC)" for key in ledger.usage if key[at]
    }
    if not timed or setting == "now":
        return None
    when = "the day's dearest rate" if setting == "dearest" else "a fixed time of day"
    return (
        f"llm-ledger: calls whose price depends on the time of day were priced at {when}, not at the hour "
        f"they ran: {listed(sorted(timed))}; --llm-time-of-day=now prices them at the hour they run"
    )


def notices(
    ledger: SessionLedger,
    budgets: Budgets | None,
    cassettes: Iterable[str] = (),
    location: Sequence[str] = (),
    here: Callable[[str], str] = str,
    *,
    selection: bool = False,
) -> tuple[list[str], bool]:
    """What the session could not check or found out of date (--llm-strict fails the run on any),
    and whether a budget checked nothing. The cassettes first: stale ones, then the plugin's other
    ``cassettes`` notices (orphans, recorded on CI), then the authentication errors; costs; budgets.
    ``location``: the options that chose where the cassettes are, kept in re-record commands;
    ``here``: how a command run where pytest started names a test, for the tests to re-record;
    ``selection``: the run ran some of the tests (a path, a node id, -k, a shard), so a budget whose
    test or lens did not run is no news (a whole-suite run names it: a typo, a lens gone)."""
    out = []
    if ledger.unplayed:
        stale = [f"{here(nodeid)} ({count})" for nodeid, count in sorted(ledger.unplayed.items())]
        # the tests named, not the whole suite: `pytest --llm-record-mode=rewrite` alone records every test
        which = here(next(iter(ledger.unplayed))) if len(stale) == 1 else "NODE_ID..."
        out.append(
            f"llm-ledger: {len(stale)} cassette(s) hold interactions their test no longer makes: "
            f"{listed(stale)}; re-record them with {rerecord_command(which, 'rewrite', location)}"
        )
    out += cassettes
    if ledger.auth_errors:
        refused = [f"{test} ({', '.join(answers)})" for test, answers in sorted(ledger.auth_errors.items())]
        out.append(
            f"llm-ledger: {len(refused)} test(s) got authentication errors while recording, left out of "
            f"their cassettes: {listed(refused)}; check the API key (OPENAI_API_KEY) and record again, or "
            "mark a test that expects them @pytest.mark.llm(record_auth_errors=True)"
        )
    if ledger.replayed_auth_errors:
        tests = sorted(ledger.replayed_auth_errors)
        named = [f"{nodeid} ({ledger.replayed_auth_errors[nodeid]})" for nodeid in tests]
        one = here(tests[0]) if len(tests) == 1 else None
        out.append(f"llm-ledger: {replayed_auth_advice(len(tests), one, location)}: {listed(named)}")
    total = ledger.total()
    if not total.cost_complete:
        out.append(
            f"llm-ledger: calls with no known cost count as $0: {total.cost_gaps()}; {total.cost_fixes()}"
        )
    if budgets is None:
        return out, False
    if not sets_limits(budgets):
        out.append(
            f"llm-ledger: {budgets.source} sets no limit, so --llm-budget checked nothing; add limits "
            f"({', '.join(Limits.KEYS)}) under its sections: default, lenses, tests, total"
        )
        return out, True
    # a budget whose test or lens never ran checks nothing: say so (a typo, a lens or test gone)
    idle = sorted(set(budgets.tests) - set(ledger.tests))
    if idle and not selection:
        out.append(f"llm-ledger: no run of {len(idle)} test(s) with a budget, not checked: {listed(idle)}")
    ran = sorted(ledger.lenses())  # cut short or not
    idle_lenses = [f"{key!r}{did_you_mean(key, ran)}" for key in sorted(set(budgets.lenses) - set(ran))]
    if idle_lenses and not selection:
        out.append(
            f"llm-ledger: no run of {len(idle_lenses)} lens(es) with a budget, not checked: "
            f"{listed(idle_lenses)}; lens keys that ran: {listed(list(map(one_line, ran))) or 'none'}"
        )
    # fail closed: a run cut short within its limits may have gone over them after its calls that ended
    end_lenses = "end each lens inside its test (read its streams to the end or close them, join its threads)"
    cut = {key: runs for key, (_, runs) in ledger.runs_by_lens().items() if runs}
    unchecked = [
        f"{one_line(key)} ({nodeid})"
        for key, runs in cut.items()
        if (limits := budgets.for_lens(key)) is not None
        for nodeid, run in runs
        if limits.items() and not _over(run, limits)
    ]
    if unchecked:
        out.append(
            f"llm-ledger: {len(unchecked)} lens run(s) with a budget were cut short (their lens_summary "
            f"never came), so not checked: {listed(unchecked)}; their ended calls are within the limits, "
            f"the rest is unknown: {end_lenses}"
        )
    # the same for the limits of the tests that ran them, and the session's: calls still open count nowhere
    open_in = {nodeid for runs in cut.values() for nodeid, _ in runs}
    limited = [(f"test {n}", ledger.tests[n], budgets.tests[n]) for n in sorted(open_in & set(budgets.tests))]
    if open_in and budgets.total is not None:
        limited.append(("the session total", ledger.total(), budgets.total))
    within = [name for name, totals, limits in limited if limits.items() and not _over(totals, limits)]
    if within:
        out.append(
            f"llm-ledger: {len(within)} budget(s) cover lens runs cut short, so not checked: "
            f"{listed(within)}; their figures are within the limits but leave out the calls still open: "
            f"{end_lenses}"
        )
        unchecked += within
    if unbudgeted := _unbudgeted(ledger, budgets):
        out.append(unbudgeted)
    return out, bool(idle or idle_lenses or unchecked)


def no_budget(ledger: SessionLedger, budgets: Budgets) -> list[str]:
    """The keys of the lenses that ran with no entry under lenses (``{}`` is unlimited on purpose) and
    no default."""
    if budgets.default is not None:
        return []
    return [key for key in ledger.runs_by_lens() if key not in budgets.lenses]


def budget_report(ledger: SessionLedger, budgets: Budgets, breaches: list[Breach]) -> dict[str, Any]:
    """The report's ``budgets``, which the pull request's cost diff shows."""
    exceeded = [
        {"scope": b.scope, "name": b.name, "limit": b.limit_key, "max": float(b.limit),
         "actual": None if b.unknown else float(b.actual), "at_least": b.cut_short,
         "worst_test": b.worst_test, "unknown": b.unknown or None}
        for b in breaches
    ]  # fmt: skip
    return {"file": budgets.source, "exceeded": exceeded, "no_budget": no_budget(ledger, budgets)}


def _unbudgeted(ledger: SessionLedger, budgets: Budgets) -> str:
    """The notice naming the lenses that ran with no limits, which would pass at any cost, with the
    budgets.yaml lines that limit each to its largest run (fail closed: a strict run fails on it)."""
    by_lens = ledger.runs_by_lens()
    runs = {key: by_lens[key][0] + by_lens[key][1] for key in no_budget(ledger, budgets)}
    if not runs:
        return ""
    lines = [
        f"llm-ledger: {len(runs)} lens(es) ran with no budget in {budgets.source} (no entry under lenses, "
        f"no default), so --llm-budget checked nothing for them: {listed(list(map(one_line, runs)))}; add "
        "under lenses (their largest run's figures, raise them for headroom):"
    ]
    for key, each in runs.items():
        totals = [run for _, run in each]
        limits = [
            f"max_api_calls: {max(t.api_calls for t in totals)}",
            f"max_total_tokens: {max(t.total_tokens for t in totals)}",
        ]
        if all(t.cost_complete for t in totals):  # an unknown cost would only breach a cost limit
            limits.append(f"max_cost_usd: {_rounded_up(max(t.cost for t in totals))}")
        # quoted unless YAML reads it unquoted as itself (not `yes`, `on` or `null`: true, true, none)
        name = key if _PLAIN_KEY.fullmatch(key) and yaml.safe_load(key) == key else json.dumps(key)
        lines.append(f"  {name}: {{{', '.join(limits)}}}")
    return "\n".join(lines)


_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # a lens key plain YAML may read as itself


def _rounded_up(usd: Decimal) -> str:
    """``usd`` rounded up to two significant digits, so a limit of it still passes the run it came from."""
    if not usd:
        return "0"
    step = Decimal(1).scaleb(usd.adjusted() - 1)
    return f"{(usd / step).to_integral_value(ROUND_CEILING) * step:f}"


def applied(ledger: SessionLedger, budgets: Budgets) -> bool:
    """Whether a limit of ``budgets`` applied to the session: the total's, or one of a test or lens that
    ran."""
    ran: list[Limits | None] = [limits for test, limits in budgets.tests.items() if test in ledger.tests]
    ran += [budgets.for_lens(key) for key in ledger.lenses()]
    return _caps([budgets.total, *ran])


def sets_limits(budgets: Budgets) -> bool:
    """Whether ``budgets`` caps anything (an empty file, or lenses listed with no limit, do not)."""
    return _caps([budgets.default, budgets.total, *budgets.lenses.values(), *budgets.tests.values()])


def _caps(sections: list[Limits | None]) -> bool:
    return any(limits is not None and limits.items() for limits in sections)


def render_breaches(breaches: list[Breach]) -> list[str]:
    rows = []
    for b in breaches:
        worst = b.worst_test + " (cut short)" * b.cut_short
        worst += f" (+{b.runs_over - 1} more runs)" if b.runs_over > 1 else ""
        actual = "unknown" if b.unknown else "at least " * b.cut_short + _format_value(b.limit_key, b.actual)
        rows.append([b.where, b.limit_key, _format_value(b.limit_key, b.limit), actual, worst])
    lines = text_table(
        ["lens / test / total", "limit", "max", "actual", "worst run (test id)"], rows, right={2, 3}
    )
    for b in breaches:
        if b.unknown:
            lines.append(f"{b.where}: {b.limit_key} cannot be checked: {b.unknown}; {b.fix}")
    if any(b.cut_short for b in breaches):
        lines.append(
            "cut short: a lens run whose lens_summary never came counts only its calls that had ended, so "
            "its figures are at least those shown"
        )
    return lines
