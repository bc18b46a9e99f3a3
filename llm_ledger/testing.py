"""Helpers for testing code that uses llm-ledger: collect records in memory (:func:`capture`, docs/CI.md),
no file, no network; serve a loopback OpenAI-compatible API (:class:`FakeOpenAI`, docs/FAKE_SERVER.md)
to point the real SDK at; price calls at one time of day whatever the hour (:func:`price_time_of_day`);
tell the credentials a request carries (:func:`request_credentials`), as cassettes and captured content
are redacted of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._config import get_monitor
from ._credentials import credential_field, credential_name, request_credentials
from ._monitor import LLMCallMonitor, add_global_sink, remove_global_sink
from ._pricing import price_time_of_day
from ._records import CALL_EVENT, LENS_EVENT

if TYPE_CHECKING:
    from ._fake_server import FakeOpenAI, RecordedAnswer, RecordedRequest

__all__ = [
    "Captured",
    "FakeOpenAI",
    "RecordedAnswer",
    "RecordedRequest",
    "add_global_sink",
    "capture",
    "credential_field",
    "credential_name",
    "price_time_of_day",
    "remove_global_sink",
    "request_credentials",
]


def __getattr__(name: str) -> Any:
    # the fake server (http.server, email) loads when first asked for: the pytest plugin imports this
    # module in every pytest run of an environment with llm-ledger installed, and needs none of it
    if name in ("FakeOpenAI", "RecordedAnswer", "RecordedRequest"):
        from . import _fake_server

        return getattr(_fake_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Captured:
    """Records emitted while a :func:`capture` block was open, in emission order, each copied when
    emitted (docs/CI.md). Records from other threads and tasks count too (a sink is called on the thread
    that ended the call). ``calls``, ``lenses`` and iterating give snapshots, safe to read while calls
    are still running; ``records`` is the list the records go to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def __call__(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            return iter(list(self.records))

    def __repr__(self) -> str:
        return f"<Captured {len(self.calls)} call(s), {len(self.lenses)} lens summary(ies)>"

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The ``llm_api_call`` records."""
        return [r for r in self if r.get("event") == CALL_EVENT]

    @property
    def lenses(self) -> list[dict[str, Any]]:
        """The ``lens_summary`` records."""
        return [r for r in self if r.get("event") == LENS_EVENT]


@contextmanager
def capture(monitor: LLMCallMonitor | None = None, *, every_monitor: bool = False) -> Iterator[Captured]:
    """Collect every record ``monitor`` (default: the default monitor) emits inside the block;
    with ``every_monitor=True``, every record of every monitor in the process (yours included)."""
    captured = Captured()
    if every_monitor:
        if monitor is not None:
            raise TypeError("capture() takes a monitor or every_monitor=True, not both")
        add, remove = add_global_sink, remove_global_sink
    else:
        target = monitor or get_monitor()
        add, remove = target.add_sink, target.remove_sink
    add(captured)
    try:
        yield captured
    finally:
        remove(captured)
