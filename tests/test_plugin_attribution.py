"""Which test a record counts in when its call ends in another (the pytest sessions are in
test_plugin_budgets.py and test_plugin_replay.py): the clocks, set by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llm_ledger import _attribution
from pytest_llm_ledger._attribution import Starts

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK


def call(started: float, lens_run_id: str | None = None) -> dict[str, Any]:
    start = datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"event": "llm_api_call", "context": {"lens_run_id": lens_run_id}, "timing": {"start_time": start}}


def lens(lens_run_id: str) -> dict[str, Any]:
    return {"event": "lens_summary", "context": {"lens_run_id": lens_run_id, "parent_lens_run_id": None}}


@pytest.fixture(name="clock")
def clock_fixture(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The wall and monotonic clocks the attribution reads, moved by the test."""
    clock = SimpleNamespace(wall=1_000.0, monotonic=50.0)
    fake = SimpleNamespace(time=lambda: clock.wall, perf_counter=lambda: clock.monotonic)
    monkeypatch.setattr(_attribution, "time", fake)
    return clock


def run_two_tests(starts: Starts, clock: SimpleNamespace) -> None:
    """Test a from 1000 s to 1001 s, then test b from 1002 s on (both clocks in step)."""
    starts.begin("a")
    clock.wall, clock.monotonic = 1_001.0, 51.0
    starts.begin(None)
    clock.wall, clock.monotonic = 1_002.0, 52.0
    starts.begin("b")


def test_a_call_and_its_lens_run_count_in_the_test_the_call_started_in(clock: SimpleNamespace) -> None:
    starts = Starts("<session>")
    run_two_tests(starts, clock)
    clock.wall, clock.monotonic = 1_002.5, 52.5

    assert starts.owner(call(1_000.5, "run-1")) == "a"
    assert starts.owner(lens("run-1")) == "a"
    assert starts.owner(call(1_002.25)) == "b"
    assert starts.owner(lens("run-2")) == "b"


def test_a_wall_clock_set_back_leaves_a_tests_calls_with_it(clock: SimpleNamespace) -> None:
    """After the wall clock was set back, a call of the running test seems to have started before
    it; the monotonic clock tells, and the call stays where it ended."""
    starts = Starts("<session>")
    run_two_tests(starts, clock)
    clock.wall, clock.monotonic = 997.5, 52.5  # set back 5 s

    assert starts.owner(call(997.4)) == "b"


def test_a_call_of_an_attempt_run_again_counts_nowhere(clock: SimpleNamespace) -> None:
    starts = Starts("<session>")
    run_two_tests(starts, clock)
    clock.wall, clock.monotonic = 1_003.0, 53.0
    starts.again()
    clock.wall, clock.monotonic = 1_003.5, 53.5

    assert starts.owner(call(1_002.5)) is None
    assert starts.owner(call(1_003.25)) == "b"
