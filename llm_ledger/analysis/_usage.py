"""The usage of one call as a row: its lens, server and model, its tokens and its recorded cost.

``llm-ledger reprice`` prices these rows again; the pytest plugin sums them per lens, server and model
into the ``usage`` of its ``--llm-report`` file. Public as :func:`llm_ledger.report.usage_row`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from .._records import MEDIA, billed, cost_decimal, cost_pending

if TYPE_CHECKING:
    from .._pricing import PriceTable

__all__ = [
    "COUNTS", "LOST_ANSWERS", "NO_ANSWER", "NO_LENS", "TOTAL_ONLY", "UsageRow", "cost_gaps", "failed_calls",
    "model_name", "tool_uses", "usage_row",
]  # fmt: skip

NO_LENS: Final = "<no lens>"  # the lens of a call made outside any lens
# A failed call counts what its answer reported: one cut short after a billed answer counts it.
NO_ANSWER: Final = "one that got no answer counts no tokens or cost"
NO_MODEL: Final = "<no model>"  # the name of a call's model when neither request nor answer has one
# why a call whose usage gave total_tokens alone (some compatible servers) has no cost, as reports say it
TOTAL_ONLY: Final = "only a total of tokens reported (no prompt and completion tokens, so no price applied)"
# what a cost leaves out of a call whose answer (or a retried attempt's) may have been billed, its usage lost
LOST_ANSWERS: Final = "answers lost before their usage was read (a body that broke, a read timeout)"
# the token counts of a UsageRow, named as a call record's usage names them
TOKENS: Final = (
    "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cache_write_tokens",
    "prompt_audio_tokens", "completion_audio_tokens", "cached_audio_tokens", "prompt_image_tokens",
    "cached_image_tokens",
)  # fmt: skip
# all its whole numbers, named as a report's usage row names them
COUNTS: Final = (
    *TOKENS,
    "calls",
    "uncosted_calls",
    "no_usage_calls",
    "unpriced_unit_calls",
    "total_only_calls",
    "failed_calls",
    "tool_fee_calls",
    "pending_calls",
    "lost_answer_calls",
)
# The first port of Linux's default range of ports given to sockets bound to port 0 (the other systems'
# start higher, at 49152): a loopback server on one of these was started for a run, not configured.
_PASSING_PORTS: Final = 32768


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def failed_calls(count: int | str | None = None) -> str:
    """Calls that failed, as every report names them: "2 failed call(s) (cassette misses or API
    errors)"; without ``count``, "calls that failed (...)"."""
    what = "calls that failed" if count is None else f"{count} failed call(s)"
    return f"{what} (cassette misses or API errors)"


@functools.cache
def _prices() -> PriceTable:
    """genai-prices' table alone (a price file's rates are flat): whether a row from a log written
    before records said (``cost.priced_at``) was priced by the time of day."""
    from .._pricing import PriceTable

    return PriceTable()


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The tokens of one call, or of many calls of one lens, server and model (a report's row)."""

    lens: str  # the innermost lens the calls ran in, else NO_LENS
    provider: str
    host: str | None
    port: int | None
    model: str  # asked for ("" when unknown)
    served_model: str  # answered with ("" when unknown)
    cost_source: str  # cost.source as recorded ("" when no cost)
    calls: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal  # as recorded
    uncosted_calls: int  # billed calls recorded without a cost (those of lost_answer_calls aside)
    no_usage_calls: int  # calls that reported no usage: unknown before and after
    # of those, the image, audio and video calls: billed in units (images, seconds, characters, image
    # tokens) that have no prompt and completion tokens to price
    unpriced_unit_calls: int = 0
    # of those, the others that reported total_tokens alone (some compatible servers): no price applies
    total_only_calls: int = 0
    total_tokens: int = 0  # as recorded, else prompt + completion when both are known
    failed_calls: int = 0  # calls that failed (status "error"): cassette misses, API errors
    # the moment the call was priced at (epoch seconds): cost.priced_at, else its start; None: unknown
    at: float | None = None
    service_tier: str | None = None  # the tier that served the calls (None: unknown, or the standard one)
    cache_write_tokens: int = 0  # the part of prompt_tokens written to the prompt cache
    prompt_audio_tokens: int = 0  # the audio part of prompt_tokens
    completion_audio_tokens: int = 0  # the audio part of completion_tokens
    cached_audio_tokens: int = 0  # the audio part of cached_tokens (a Realtime response's)
    prompt_image_tokens: int = 0  # the image part of prompt_tokens the cache did not serve (Realtime)
    cached_image_tokens: int = 0  # the image part of cached_tokens (a Realtime response's)
    # whether the record says the time of day set its price (cost.priced_at not null); None: it does not
    # say (a log written before records did, a report's row)
    priced_by_time: bool | None = None
    # calls whose cost leaves out fees of built-in tools billed per use (cost.left_out: web search...)
    tool_fee_calls: int = 0
    # calls with an answer that may have been billed but whose usage was lost (a body that broke after
    # a 2xx, a read timeout once the request was sent), retried or not (cost.attempts_left_out, a
    # failed call's error.status_code 2xx): not in uncosted_calls, though they may have no cost
    lost_answer_calls: int = 0
    # background responses begun, whose cost is the record's of their end: a log's start (its record),
    # a report's starts whose end its session never recorded
    pending_calls: int = 0
    # a Responses call's response id (a log's record): a start and its end pair up by it
    response_id: str | None = None
    # the uses of built-in tools billed per use, kind -> uses (response.tool_uses): what a price file's
    # tool_fees price when repriced
    tool_uses: Mapping[str, int] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """What messages call these calls' model: see :func:`model_name`."""
        return model_name(self.model, self.served_model)

    @property
    def server(self) -> str:
        """``host:port`` (the host alone without a port; "" when unknown)."""
        return f"{self.host}:{self.port}" if self.host and self.port else self.host or ""

    @property
    def stable_server(self) -> str:
        """:attr:`server` without a loopback server's port handed out for the asking (a test's fake
        server, new on each run), so a report written again from the same cassettes is the same; a
        local server's fixed port stays, for a price file's ``hosts`` entry naming it."""
        if self.port is not None and self.port >= _PASSING_PORTS and _loopback(self.host):
            return self.host or ""
        return self.server

    @property
    def priced_minute(self) -> str:
        """The UTC minute the call was priced at (ISO: ``cost.priced_at``, else its start) when its
        price depends on the time of day, else "": a report's rows change with the minute only when
        repricing needs it."""
        if self.at is None or self.priced_by_time is False:
            return ""
        minute = datetime.fromtimestamp(self.at // 60 * 60, UTC).isoformat()
        if self.priced_by_time:
            return minute
        names = (self.served_model, self.model)  # the monitor prices the served model first
        return minute if any(n and _prices().priced_by_time(n, provider=self.provider) for n in names) else ""


def usage_row(record: Mapping[str, Any]) -> UsageRow:
    """The :class:`UsageRow` of one ``llm_api_call`` record (``calls`` is 1): the one reading of a
    call's usage, shared by the pytest plugin's totals and reports and ``llm-ledger reprice``.

    Missing or malformed fields read as unknown: no lens is ``"<no lens>"``, no provider ``"openai"``,
    a token count that is not a whole number >= 0 is 0. A call recorded without a cost is uncosted when
    it was billed (the lens summary's rule); one that did not fail but reported no prompt and completion
    tokens has no usage. One with an answer billed whose usage was lost (``cost.attempts_left_out``, or
    a failed call billed with no usage) counts in ``lost_answer_calls``, not in ``uncosted_calls``."""
    usage = _dict(record.get("usage"))
    server = _dict(record.get("server"))
    response = _dict(record.get("response"))
    tier = response.get("service_tier")
    cost = _dict(record.get("cost"))
    recorded = cost_decimal(cost.get("total_cost_usd"))
    started = _dict(record.get("timing")).get("start_time") or record.get("timestamp")
    priced = _epoch(cost.get("priced_at"))  # None: not priced by the time of day, or an older record
    counts = {name: recorded_count(usage.get(name)) for name in TOKENS}
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    known = prompt is not None and completion is not None
    total_only = prompt is None and completion is None and counts["total_tokens"] is not None
    if counts["total_tokens"] is None:  # as recorded, else prompt + completion
        counts["total_tokens"] = (prompt or 0) + (completion or 0) if known else 0
    ok = record.get("status") != "error"
    pending = cost_pending(record)  # a background response's start: its cost is its end's record's
    # an answer billed with its usage lost: attempts retried or timed out so, or a failed call's
    uncosted = recorded is None and billed(record)
    lost = bool(cost.get("attempts_left_out")) or (uncosted and not ok and counts["total_tokens"] is None)
    response_id = response.get("id") if record.get("operation") == "responses" else None
    address, port = server.get("address"), server.get("port")
    return UsageRow(
        lens=str(_dict(record.get("context")).get("lens_key") or NO_LENS),
        provider=str(server.get("provider") or "openai"),
        host=address if isinstance(address, str) else None,
        port=port if type(port) is int else None,
        model=recorded_name(_dict(record.get("request")).get("model")),
        served_model=recorded_name(response.get("model")),
        cost_source=recorded_name(cost.get("source")),
        calls=1,
        cost_usd=recorded or Decimal(0),
        uncosted_calls=int(uncosted and not lost),
        no_usage_calls=int(not known and ok and not pending),
        unpriced_unit_calls=int(not known and ok and record.get("operation") in MEDIA),
        total_only_calls=int(total_only and ok and not pending and record.get("operation") not in MEDIA),
        failed_calls=int(not ok),
        at=_epoch(started) if priced is None else priced,
        priced_by_time=None if "priced_at" not in cost else priced is not None,
        service_tier=tier if isinstance(tier, str) else None,
        tool_fee_calls=int(recorded is not None and bool(cost.get("left_out"))),
        pending_calls=int(pending),
        lost_answer_calls=int(lost),
        response_id=response_id if type(response_id) is str else None,
        tool_uses=tool_uses(response.get("tool_uses")),
        **{name: count or 0 for name, count in counts.items()},
    )


def tool_uses(value: Any) -> dict[str, int]:
    """Uses of built-in tools as recorded (a record's ``response.tool_uses``, a report row's
    ``tool_uses``): kind -> a whole number > 0; anything else left out."""
    uses = _dict(value)
    return {kind: n for kind, n in uses.items() if isinstance(kind, str) and type(n) is int and n > 0}


def _epoch(stamp: Any) -> float | None:
    """An ISO timestamp as epoch seconds (no zone: UTC); None when it is not one."""
    try:
        moment = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def model_name(model: Any, served_model: Any) -> str:
    """The name messages give a call's model, from a record or a report's usage row: the model asked
    for, else the model that answered, else ``"<no model>"``."""
    return recorded_name(model) or recorded_name(served_model) or NO_MODEL


def cost_gaps(
    unpriced: Mapping[str, int],
    no_usage: Mapping[str, int],
    units: Mapping[str, int] | None = None,
    tool_fees: Mapping[str, int] | None = None,
    pending: Mapping[str, int] | None = None,
    total_only: Mapping[str, int] | None = None,
    lost: Mapping[str, int] | None = None,
) -> str:
    """Why a cost leaves calls out, from the calls per model (:func:`model_name`) of each reason (the
    parameters, in the order of the message): "no known price for model 'x' (2 calls); no usage
    reported by calls to 'y' (1 call)". The plugin's lines and ``llm-ledger diff`` say it so."""
    parts = []
    for what, counts in (
        ("no known price for model", unpriced),
        ("no usage reported by calls to", no_usage),
        (f"{TOTAL_ONLY} by calls to", total_only or {}),
        ("billed in unpriced units (image, audio or video) by calls to", units or {}),
        ("no price for the built-in tools' fees (web search...) of calls to", tool_fees or {}),
        ("no record of the end of the background responses begun by calls to", pending or {}),
        (LOST_ANSWERS + " by calls to", lost or {}),
    ):
        calls = [f"{m!r} ({n} call{'s' if n != 1 else ''})" for m, n in sorted(counts.items()) if n > 0]
        if calls:
            parts.append(f"{what} {', '.join(calls)}")
    return "; ".join(parts) or "calls with no known cost"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def recorded_name(value: Any) -> str:
    """A model or source name as recorded; "" for anything but text."""
    return value if isinstance(value, str) else ""


def recorded_count(value: Any) -> int | None:
    """A token or call count: a whole number >= 0, else None."""
    return value if type(value) is int and value >= 0 else None
