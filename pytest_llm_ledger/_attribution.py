"""Which test a record counts in: the one its call started in, not the one running when it ended.

A stream one test leaves open ends when the garbage collector gets to it, often while a later test
runs; counted there, it would fill that test's totals and breach its budget. A call record says
when the call started (``timing.start_time``, wall clock, milliseconds), so the plugin keeps when
each test began on the same clock and files the call under the test running then. A lens run's
record follows the last of its calls, so it goes where that call went.

The wall clock can be set back (NTP, a resumed VM): a call that seems to have started before the
running test is moved only while the wall clock has kept pace with the monotonic one since that test
began, so a clock step never takes a test's own calls away from it.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

__all__ = ["Starts"]

_STEP: Final = 0.1  # seconds the two clocks may drift apart during a test (slewing) before it is a step


def _ms(epoch: float) -> int:
    """Whole milliseconds of ``epoch``, cut as the records' timestamps cut them."""
    seconds = int(epoch)
    return seconds * 1000 + int((epoch - seconds) * 1000)


def _started_ms(record: Mapping[str, Any]) -> int | None:
    try:
        return round(datetime.fromisoformat(record["timing"]["start_time"]).timestamp() * 1000)
    except (KeyError, TypeError, ValueError):  # a record without one (another version): where it ended
        return None


class Starts:
    """When each test began (each attempt of a test run again), to file records under it."""

    def __init__(self, outside: str) -> None:
        self._outside = outside
        self._begins: list[int] = [-1]  # milliseconds, wall clock
        # node id, ``outside`` between tests, None for an attempt dropped because its test ran again
        self._owners: list[str | None] = [outside]
        self._offset = 0.0  # wall clock less monotonic clock when the running test began
        self._late_runs: dict[str, str | None] = {}  # lens run id -> the test of its late last call

    def begin(self, nodeid: str | None) -> None:
        """From now on, calls start in test ``nodeid`` (None: between tests)."""
        wall = time.time()
        self._begins.append(_ms(wall))
        self._owners.append(self._outside if nodeid is None else nodeid)
        self._offset = wall - time.perf_counter()

    def again(self) -> None:
        """The running test starts another attempt: the calls of the one before count nowhere."""
        nodeid, self._owners[-1] = self._owners[-1], None
        self.begin(nodeid)

    def owner(self, record: Mapping[str, Any]) -> str | None:
        """The test ``record`` counts in: a node id, ``outside``, or None for a call of a dropped
        attempt."""
        context = record.get("context") or {}
        running = self._owners[-1]
        if record.get("event") != "llm_api_call":  # a lens run's record, right after its last call's
            owner = self._late_runs.pop(str(context.get("lens_run_id")), running)
            parent = context.get("parent_lens_run_id")
            if parent and owner != running:  # the enclosing run ends with this one's last call
                self._late_runs[str(parent)] = owner
            return owner
        started = _started_ms(record)
        if started is None or started >= self._begins[-1]:
            return running
        if abs(time.time() - time.perf_counter() - self._offset) > _STEP:
            return running
        owner = self._owners[bisect_right(self._begins, started) - 1]
        if owner != running and context.get("lens_run_id"):
            self._late_runs[str(context["lens_run_id"])] = owner
        return owner
