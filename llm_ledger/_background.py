"""Background responses (``responses.create(background=True)``): their usage comes with their end,
which a later ``responses.retrieve()`` / ``cancel()`` (or a resumed stream) sees. This process's
registry of the ones it began and of those whose end it recorded, so that each end is recorded once
here, polls record nothing, and the end of one begun here counts in the lens runs it began in. A
response is known by its id on the host and port of the client's base URL: ids are a server's own,
and two servers (a gateway and OpenAI, or a test server started anew) may give the same one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._servers import _address

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor, _Call
    from ._servers import Endpoint

__all__ = ["ENDED", "LATER", "LIMIT", "begun", "ended_here", "key", "take"]

# the owner of a retrieve or cancel call: recorded only when it sees its response's end (see _monitor)
LATER = "llm-ledger:later"
LIMIT = 10_000  # ids kept in each map: past it, the oldest are forgotten

Key = tuple[Any, Any, str]
_lock = threading.Lock()
# (host, port, response id) -> the monitor and the call that began it (its request, context, lens
# runs, start)
_pending: OrderedDict[Key, tuple[LLMCallMonitor, _Call]] = OrderedDict()
_ended: OrderedDict[Key, None] = OrderedDict()  # responses whose end this process recorded
ENDED: Any = object()  # what take() gives for an id whose end was recorded already


def key(endpoint: Endpoint, response_id: str) -> Key:
    """How the registry knows ``response_id``, answered by the server of ``endpoint``'s base URL."""
    try:
        host, port = _address(endpoint._current_url())
    except Exception:  # not the SDK's client: a server nobody knows
        host = port = None
    return host, port, response_id


def _keep(ids: OrderedDict[Key, Any], key: Key, value: Any) -> None:
    ids[key] = value
    if len(ids) > LIMIT:
        ids.popitem(last=False)


def begun(monitor: LLMCallMonitor, call: _Call, response_id: Any) -> None:
    """``call`` began the background response ``response_id`` (still queued or in progress): a new
    one, even under an id seen before (a cassette replayed again in the process)."""
    if type(response_id) is str and response_id:
        known = key(call.endpoint, response_id)
        with _lock:
            _ended.pop(known, None)
            _keep(_pending, known, (monitor, call))


def take(known: Key, background: Callable[[], bool]) -> tuple[LLMCallMonitor, _Call] | Any | None:
    """Mark the end of the response ``known`` (:func:`key`) as recorded: the monitor and call that
    began it here, None when it began elsewhere, or ``ENDED`` when there is nothing to record: its
    end was recorded already, or it is not a background response (``background()`` says; a stored
    response's usage was its create's)."""
    with _lock:
        if known in _ended:
            return ENDED
        entry = _pending.pop(known, None)
        if entry is None and not background():
            return ENDED
        _keep(_ended, known, None)
        return entry


def ended_here(call: _Call, response_id: Any) -> None:
    """The end of ``response_id`` was recorded by ``call``, which began it (a background stream read
    to its end): a later retrieve records nothing."""
    if type(response_id) is str and response_id:
        known = key(call.endpoint, response_id)
        with _lock:
            _pending.pop(known, None)
            _keep(_ended, known, None)


def _forget() -> None:
    """A forked child records what it retrieves as a process that began none of them (its parent
    records the ends of its own)."""
    global _lock
    _lock = threading.Lock()
    _pending.clear()
    _ended.clear()


os.register_at_fork(after_in_child=_forget)
