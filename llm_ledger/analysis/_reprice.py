"""``llm-ledger reprice LOG_OR_REPORT``: what the recorded usage would cost with another model, provider or
price table, lens by lens, before and after.

Reads ``llm_calls.jsonl`` logs (as ``llm-ledger report`` does: directories, ``.gz``, globs, ``-``) or a
pytest ``--llm-report`` file (its ``usage`` rows, e.g. from replayed cassettes) and prices every call's
tokens again: ``--model gpt-4o=gpt-4.1-mini`` (repeatable) swaps the model asked for, ``--provider groq``
prices every call at that provider's rates, ``--price-file F`` uses that price table (its ``hosts``
apply to the recorded servers); ``--where``, ``--since`` and ``--until`` pick a log's calls as
``llm-ledger report`` does. "before" is the cost recorded; "after" is the price table's figure (its
tokens, and its built-in tools' uses at the price file's ``tool_fees``), except for a cost the provider
reported (OpenRouter) on a call whose model and provider stay (no --provider, and no host entry in the
price file sending its server to another provider): that one stands. Calls count under the innermost
lens they ran in.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from .._cli import add_command, add_query_options
from .._errors import ConfigError
from .._extract import reasoning_in_completion
from .._pricing import PROVIDER_REPORTED, PriceTable, Route, reasoning_outside
from .._rates import DEFAULT_PROVIDER, PRICE_FILE_SOURCE, provider_error
from .._records import CALL_EVENT, USD_UNIT_DIGITS, Usage, cost_decimal
from ..loading import as_typed, did_you_mean, shown
from ._aggregate import Query, make_query, parse_where, select
from ._read import GLOB_CHARS, STDIN, InputStats, LogReader, report_kind, warn_unread
from ._render import REPRICE_FORMATS, render_reprice
from ._usage import COUNTS, NO_LENS, TOKENS, UsageRow, _epoch, recorded_name, tool_uses, usage_row

__all__ = ["Reprice", "read_usage", "register", "reprice"]


@dataclass(slots=True)
class Row:
    """One lens, before and after."""

    lens: str
    calls: int = 0
    before_usd: Decimal = Decimal(0)
    after_units: int = 0
    before_complete: bool = True
    after_complete: bool = True
    # the calls with a price both before and after, the only ones a change compares
    compared: int = 0
    compared_before_usd: Decimal = Decimal(0)
    compared_after_units: int = 0

    @property
    def after_usd(self) -> Decimal:
        return Decimal(self.after_units).scaleb(-USD_UNIT_DIGITS)

    @property
    def change_usd(self) -> Decimal | None:
        """After minus before over the calls priced on both sides; ``None`` when there are none."""
        if not self.compared:
            return None
        return Decimal(self.compared_after_units).scaleb(-USD_UNIT_DIGITS) - self.compared_before_usd

    def to_json(self) -> dict[str, Any]:
        change = self.change_usd
        return {
            "lens": self.lens,
            "calls": self.calls,
            # the exact sums as JSON numbers, as llm-ledger report writes its costs
            "before_usd": float(self.before_usd),
            "after_usd": float(self.after_usd),
            "change_usd": None if change is None else float(change),
            "before_complete": self.before_complete,
            "after_complete": self.after_complete,
        }


@dataclass(slots=True)
class Reprice:
    """The outcome: rows per lens, their total, and the models left without a price after."""

    source: str
    models: dict[str, str]
    provider: str | None
    price_file: str | None
    rows: dict[str, Row] = field(default_factory=dict)
    unpriced_after: Counter[str] = field(default_factory=Counter)  # model -> calls
    no_usage_calls: int = 0  # calls that reported no usage: no tokens to price, before or after
    hints: dict[str, str] = field(default_factory=dict)  # unpriced model -> how to price it
    # calls a price file priced when made, whose model stays, priced again without it (no price_file)
    price_file_calls: int = 0
    tool_fee_calls: int = 0  # calls whose cost before leaves out their built-in tools' fees (web search...)
    pending_calls: int = 0  # background responses begun whose end no record read shows: no cost either side
    unpriced_tools_after: Counter[str] = field(default_factory=Counter)  # kind -> uses with no fee after

    def total(self) -> Row:
        total = Row("(total)")
        for row in self.rows.values():
            for column in fields(Row)[1:]:  # the sums: counts and amounts add, "complete" flags all hold
                mine, theirs = getattr(total, column.name), getattr(row, column.name)
                setattr(total, column.name, mine and theirs if type(mine) is bool else mine + theirs)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "changes": {"models": self.models, "provider": self.provider, "price_file": self.price_file},
            "lenses": [row.to_json() for _, row in sorted(self.rows.items())],
            "total": self.total().to_json(),
            "unpriced_after": dict(sorted(self.unpriced_after.items())),
            "no_usage_calls": self.no_usage_calls,
            "price_file_calls": self.price_file_calls,
            "tool_fee_calls": self.tool_fee_calls,
            "pending_calls": self.pending_calls,
            "unpriced_tools_after": dict(sorted(self.unpriced_tools_after.items())),
        }


def read_usage(inputs: Sequence[str], query: Query) -> tuple[str, Iterable[UsageRow], list[InputStats]]:
    """("log" or "report", the usage recorded in ``inputs``, what reading each log found: filled in as
    the usage, read one call at a time, is iterated); :class:`ConfigError` says what is wrong. One
    regular file may be the pytest plugin's report; anything else is read as logs (a report among them
    is refused), keeping the calls that pass ``query``'s ``where``, ``since`` and ``until``, as
    ``llm-ledger report`` does."""
    filtered = bool(query.where or query.since or query.until)
    one = inputs[0] if len(inputs) == 1 else None
    if one is not None and not os.path.exists(one) and one != STDIN and not GLOB_CHARS & set(one):
        raise ConfigError(f"{one}: no such file; pass an llm_calls.jsonl log or a pytest --llm-report file")
    if one is not None and os.path.isfile(one) and report_kind(one) == "pytest":
        if filtered:
            raise ConfigError(
                f"{one}: --where, --since and --until select a log's calls; a pytest report keeps no "
                "timestamps or context per call: reprice the log instead"
            )
        return "report", list(_report_usage(one)), []
    reader = LogReader(inputs, events=(CALL_EVENT,))
    calls = select(reader, query) if filtered else reader
    return "log", (usage_row(_billed(c)) for c in calls), reader.stats


def _billed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its thinking tokens in ``completion_tokens``: a Google or xAI call logged before the
    ledger put them there (docs/PRICING.md) is billed for them when repriced."""
    server, usage = record.get("server"), record.get("usage")
    if not (
        isinstance(server, dict) and isinstance(usage, dict) and reasoning_outside(server.get("provider"))
    ):
        return record
    counts = cast(Usage, {key: usage.get(key) for key in Usage.__annotations__})
    billed = reasoning_in_completion(counts)
    return record if billed is counts else {**record, "usage": {**usage, **billed}}


def _report_usage(path: str) -> Iterator[UsageRow]:
    from ._diff import load_report

    data = load_report(path)
    rows = data.get("usage")
    if not isinstance(rows, list):
        raise ConfigError(
            f"{path}: this report has no per-model usage (written before llm-ledger could reprice); "
            "write it again with `pytest --llm-report`"
        )
    for row in rows:  # load_report checked each; a row written before the plugin kept a field lacks it
        host, _, port = str(row.get("server") or "").rpartition(":")
        yield UsageRow(
            lens=str(row.get("lens") or NO_LENS),
            provider=str(row.get("provider") or "openai"),
            host=host or None,
            port=int(port) if port.isdigit() else None,
            model=recorded_name(row.get("model")),
            served_model=recorded_name(row.get("served_model")),
            cost_source=recorded_name(row.get("cost_source")),
            cost_usd=cost_decimal(row.get("cost_usd", 0)) or Decimal(0),
            at=_epoch(row.get("at")),
            service_tier=row.get("service_tier"),
            tool_uses=tool_uses(row.get("tool_uses")),
            **{name: row.get(name, 0) for name in COUNTS},
        )


def parse_models(pairs: Iterable[str]) -> dict[str, str]:
    """``["gpt-4o=gpt-4.1-mini"]`` as a mapping; :class:`ConfigError` for anything else."""
    models: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            # quoted unless it looks like a credential: its "=" alone is no reason to hide it
            empty = " (OLD is empty)" if sep and not old.strip() else " (NEW is empty)" if sep else ""
            raise ConfigError(
                f"--model {shown(pair)}: expected OLD=NEW{empty}, e.g. --model gpt-4o=gpt-4.1-mini"
            )
        old, new = old.strip(), new.strip()
        if models.get(old, new) != new:
            raise ConfigError(
                f"--model {as_typed(f'{old}={new}')}: {as_typed(old)} is already priced as "
                f"{as_typed(models[old])}; give one NEW per OLD"
            )
        models[old] = new
    return models


def reprice(
    source: str,
    usage: Iterable[UsageRow],
    table: PriceTable,
    *,
    models: dict[str, str],
    provider: str | None,
    price_file: str | None,
) -> Reprice:
    """Price ``usage`` again with ``table``, ``models`` swapped and every call at ``provider`` if given;
    :class:`ConfigError` names the close matches of a model no call used, a new model with no price where
    it would be used, or an unknown provider."""
    if provider is not None and table.route(provider=provider).matched_by != "provider":
        raise ConfigError(f"--provider: {provider_error(provider)}")
    used: set[str] = set()  # the models the calls asked for, else were served
    named: set[str] = set()  # the models they asked for or were served
    result = Reprice(source, models, provider, price_file)
    checked: set[tuple[int, str]] = set()
    waiting: dict[str, Row] = {}  # a log's background response begun -> its row, until its end is read
    for item in usage:  # one pass, one call at a time: a log's calls are never held together
        used.add(item.model or item.served_model)
        named.update((item.model, item.served_model))
        route = (
            table.route(provider=provider)
            if provider is not None
            else table.route(item.host, item.port, provider=item.provider)
        )
        new = models.get(item.model) or models.get(item.served_model)
        if new is not None and (id(route), new) not in checked:
            checked.add((id(route), new))
            if route.rates(new) is None:
                raise ConfigError(
                    f"--model ...={as_typed(new)}: no price for {shown(new)} at provider {route.provider!r}"
                    f"{did_you_mean(new, table.model_names(route.provider), n=3)}; "
                    "add it to a price file (--price-file)"
                )
        row = result.rows.setdefault(item.lens, Row(item.lens))
        row.calls += item.calls
        row.before_usd += item.cost_usd
        # an answer billed whose usage was lost is left out before and after
        priced_before = item.uncosted_calls == 0 and item.no_usage_calls == 0 and not item.lost_answer_calls
        row.before_complete &= priced_before and not item.tool_fee_calls
        row.after_complete &= item.no_usage_calls == 0 and not item.lost_answer_calls
        result.tool_fee_calls += item.tool_fee_calls
        result.no_usage_calls += item.no_usage_calls
        if item.pending_calls and item.response_id is not None:
            waiting[item.response_id] = row
        elif item.response_id is not None:
            waiting.pop(item.response_id, None)
        elif item.pending_calls:  # a report's row: begun in its session, never ended there
            row.before_complete = row.after_complete = False
            result.pending_calls += item.pending_calls
        stays = new is None and provider is None and route.provider == item.provider
        if stays and price_file is None and item.cost_source == PRICE_FILE_SOURCE:
            result.price_file_calls += item.calls  # its change is the table's, not the what-if's
        # a server the recording's price file priced itself (self-hosted), which no host entry now maps:
        # its model keeps no price, rather than a vendor's list price for a model of that name
        own_server = new is None and route.matched_by == "model" and item.provider != DEFAULT_PROVIDER
        cost: int | None = None
        fees_left_out = False  # whether after leaves out built-in tools' fees
        if stays and item.cost_source == PROVIDER_REPORTED:
            # what the provider billed stands while the model and provider stay: no price table knows
            # better (a host entry sending the server to another provider, e.g. self-hosted, prices it)
            cost = int(item.cost_usd.scaleb(USD_UNIT_DIGITS))
        else:
            if new:
                cost = _cost(route, new, None, item)
            elif not own_server:
                cost = _cost(route, item.served_model, item.model, item)
            # uses unknown: a report row written before rows counted them
            fees_left_out = bool(item.tool_fee_calls) and not item.tool_uses
            if cost is not None and item.tool_uses:
                fees, left_out = table._tool_fees(new or item.served_model, new or item.model, item.tool_uses)
                cost += fees or 0
                for kind in left_out or ():
                    result.unpriced_tools_after[kind] += item.tool_uses[kind]
                fees_left_out = bool(left_out)
            row.after_complete &= not fees_left_out
        if cost is None:
            if item.prompt_tokens or item.completion_tokens:
                row.after_complete = False
                name = new or item.model_name
                name += f" (at {item.provider})" if own_server else ""
                result.unpriced_after[name] += item.calls
                vendored = f"openai/{name}"  # OpenRouter's, Groq's... name for an OpenAI model
                if (
                    not own_server
                    and name not in result.hints
                    and route.rates(name) is None  # not priced for its counts (more cached than prompt)
                    and route.rates(vendored) is not None
                ):
                    result.hints[name] = f"at {route.provider} it is {vendored!r}: --model {name}={vendored}"
            continue
        row.after_units += cost
        if priced_before and not item.tool_fee_calls and not fees_left_out:  # complete on both sides
            row.compared += item.calls
            row.compared_before_usd += item.cost_usd
            row.compared_after_units += cost
    for row in waiting.values():  # begun, and no record read shows its end: its cost is unknown
        row.before_complete = row.after_complete = False
        result.pending_calls += 1
    used.discard("")
    for old in models:
        if old not in named:
            raise ConfigError(
                f"--model {as_typed(f'{old}={models[old]}')}: no call in {source} used {shown(old)}"
                f"{did_you_mean(old, used)}; "
                f"models used: {', '.join(sorted(used)) or 'none'}"
            )
    return result


def _cost(route: Route, model: str, fallback: str | None, item: UsageRow) -> int | None:
    counts = {name: getattr(item, name) for name in TOKENS}
    try:
        costs = route._costs(model, counts, max(item.calls, 1), fallback, item.at, item.service_tier)
    except ValueError:  # more cached than prompt tokens: the ledger recorded no cost for such a call either
        return None
    return None if costs is None else costs[0] + costs[1]


def register(subparsers: Any, summary: str) -> None:
    parser = add_command(
        subparsers,
        "reprice",
        summary,
        run,
        formats=REPRICE_FORMATS,
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="exit status: 0 repriced, 2 bad input (an unknown model or provider names the close matches)",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="LOG_OR_REPORT",
        help="a pytest --llm-report file, or logs: a file (.gz too), a directory, a glob, or - for stdin",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="price the calls to OLD as calls to NEW (repeatable)",
    )
    add_query_options(parser, "calls of a log")
    parser.add_argument("--provider", help="price every call at this provider's rates (e.g. groq, azure)")
    parser.add_argument("--price-file", help="the price table to use (default: genai-prices' bundled prices)")


def run(args: argparse.Namespace) -> int:
    models = parse_models(args.model)
    query = make_query(("lens",), parse_where(args.where), args.since, args.until)
    table = PriceTable.from_file(args.price_file) if args.price_file else PriceTable()
    kind, usage, stats = read_usage(args.sources, query)
    name = Path(args.sources[0]).name if len(args.sources) == 1 else f"{len(args.sources)} inputs"
    selected = [as_typed(f"{key}={'|'.join(sorted(values))}") for key, values in query.where.items()]
    bounds = query.to_json()
    selected += [f"{bound} {bounds[bound]}" for bound in ("since", "until") if bounds[bound]]
    source = f"{name} ({', '.join([kind, *selected])})"
    result = reprice(source, usage, table, models=models, provider=args.provider, price_file=args.price_file)
    warn_unread("reprice", stats)
    sys.stdout.write(render_reprice(result, args.fmt))
    return 0
