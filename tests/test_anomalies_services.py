"""Anomalies per service: two services (api and batch, staging and prod) writing one log under the same
lens key are judged each against its own runs, live, after a rebuild from the log and replayed."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from bench.anomalies import history
from llm_ledger import AnomalyConfig, AnomalyDetector
from llm_ledger._cli import main
from llm_ledger.testing import Captured, capture
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hi"}]
QUICK = AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens", "total_cost_usd"))
STEADY, TENFOLD = 5, 50  # completion words: 12 tokens ($0.00000495) and 84 ($0.0000482), ten times the cost


def _run(client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, service: str | None, words: int) -> None:
    with monitor.lens("digest", service=service):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-completion-words": str(words)}
        )


def _anomalies(records: Captured) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "lens_anomaly"]


def _flagged(records: Captured) -> list[tuple[str | None, str, int]]:
    """(service, metric, runs in the baseline) of each lens_anomaly record."""
    return [
        (a["context"]["service"], a["anomaly"]["metric"], a["anomaly"]["runs"]) for a in _anomalies(records)
    ]


def _runaway(service: str | None, runs: int) -> list[tuple[str | None, str, int]]:
    return [(service, "total_tokens", runs), (service, "total_cost_usd", runs)]


def test_two_services_on_one_lens_key_are_judged_apart(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """batch's usual runs, ten times api's cost, are no anomaly after api's, nor api's after batch's;
    and api's first run at batch's level is caught, judged on api's runs only. One baseline per lens
    key flagged batch's first runs against api's, then hid api's runaway among batch's runs."""
    monitor.anomalies = AnomalyDetector(QUICK)
    for _ in range(6):
        _run(client, monitor, "api", STEADY)
    for _ in range(6):
        _run(client, monitor, "batch", TENFOLD)
    for _ in range(3):
        _run(client, monitor, "api", STEADY)
        _run(client, monitor, "batch", TENFOLD)
    assert _flagged(records) == []
    _run(client, monitor, "api", TENFOLD)
    assert _flagged(records) == _runaway("api", 9)


def _restart(log_dir: Path) -> llm_ledger.LLMCallMonitor:
    """configure() as a restarted service calls it: anomaly detection on, its baselines rebuilt from
    the log (turned off first: configure() rebuilds only when the detector's settings change)."""
    llm_ledger.configure(log_dir=log_dir, anomalies=False, handle_sigterm=False)
    llm_ledger.configure(log_dir=log_dir, anomalies=QUICK, handle_sigterm=False)
    return llm_ledger.get_monitor()


def test_two_services_keep_their_own_baselines_after_a_restart(
    fresh_config: None, tmp_path: Path, sdk: Sdk
) -> None:
    """The baselines rebuilt from a log two services wrote keep them apart: batch's usual run after
    api's is no anomaly, and api's runaway is caught, judged on api's runs (it was judged on the last
    ten runs of either, whose spread, batch's runs among them, hid it)."""
    with logging_to(tmp_path / "llm_calls.jsonl", sdk) as (monitor, client):
        for service, words in [("batch", TENFOLD)] * 6 + [("api", STEADY)] * 6:
            _run(client, monitor, service, words)
    monitor = _restart(tmp_path)
    client = sdk(monitor)
    with capture() as records:
        _run(client, monitor, "batch", TENFOLD)
        _run(client, monitor, "api", STEADY)
        assert _flagged(records) == []
        _run(client, monitor, "api", TENFOLD)
        assert _flagged(records) == _runaway("api", 7)


def test_a_log_written_before_services_were_named_still_rebuilds(
    fresh_config: None, tmp_path: Path, sdk: Sdk
) -> None:
    """A log of runs that name no service (written before the application named its services) rebuilds
    the baseline of the runs that still name none, as before; a service named since starts its own."""
    with logging_to(tmp_path / "llm_calls.jsonl", sdk) as (monitor, client):
        for _ in range(6):
            _run(client, monitor, None, STEADY)
    monitor = _restart(tmp_path)
    client = sdk(monitor)
    with capture() as records:
        _run(client, monitor, "batch", TENFOLD)
        assert _flagged(records) == []
        _run(client, monitor, None, TENFOLD)
        assert _flagged(records) == _runaway(None, 6)


def test_the_command_judges_each_service_on_its_own_runs_and_names_it(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger anomalies`` replays a log two services wrote as they are judged live: batch's usual
    runs are not listed, api's runaway is, the table names its service, and --where picks one."""
    log = tmp_path / "llm_calls.jsonl"
    with logging_to(log, sdk) as (monitor, client):
        for service, words in [("api", STEADY)] * 6 + [("batch", TENFOLD)] * 6 + [("api", TENFOLD)]:
            _run(client, monitor, service, words)
    command = ["anomalies", str(log), "--min-runs", "5", "--window", "10", "--metric", "total_tokens"]
    assert main([*command, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)["anomalies"]
    assert [(a["context"]["service"], a["anomaly"]["runs"]) for a in listed] == [("api", 6)]
    assert main(command) == 0
    header, _, row, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["time", "service", "lens", "model"]
    assert row.split()[1:3] == ["api", "digest"]
    assert main([*command, "--where", "service=batch"]) == 0
    assert capsys.readouterr().out == "no anomalous lens run\n"


@pytest.mark.parametrize(("others", "kept"), [(999, True), (1000, False)])
def test_at_most_a_thousand_baselines_are_kept_with_services_in_the_key(others: int, kept: bool) -> None:
    """The bound on memory holds with services in the key: 1,000 baselines (service, lens, models),
    the least recently seen dropped past it. A service's baseline outlives 999 others' runs, and its
    runaway is caught; one more and it starts again (no verdict)."""
    run = next(r for r in history(0, 10).records if r["context"]["lens_key"] == "digest")
    detector = AnomalyDetector(QUICK)

    def observe(service: str, factor: float = 1.0) -> list[Any]:
        summary = {**run["summary"], "total_tokens": run["summary"]["total_tokens"] * factor}
        return detector.observe(
            {**run, "context": {**run["context"], "service": service}, "summary": summary}
        )

    for _ in range(5):
        observe("api")
    for n in range(others):
        observe(f"tenant-{n}")
    assert bool(observe("api", factor=10)) is kept


class Service(str, enum.Enum):  # noqa: UP042 -- the (str, Enum) mixin is the case: StrEnum str()s to its value
    API = "api"
    BATCH = "batch"


def test_a_service_named_by_an_enum_keeps_its_baseline_after_a_restart(
    fresh_config: None, tmp_path: Path, sdk: Sdk
) -> None:
    """A service given as an ``Enum`` member is written to the log as its value (``"api"``), which the
    rebuild reads: the live runs after a restart meet that baseline, and api's runaway is caught judged
    on its runs before the restart too (keyed by ``str()`` of the member, they started anew)."""
    with logging_to(tmp_path / "llm_calls.jsonl", sdk) as (monitor, client):
        for service, words in [(Service.BATCH, TENFOLD)] * 6 + [(Service.API, STEADY)] * 6:
            _run(client, monitor, service, words)
    monitor = _restart(tmp_path)
    client = sdk(monitor)
    with capture() as records:
        _run(client, monitor, Service.BATCH, TENFOLD)
        _run(client, monitor, Service.API, STEADY)
        assert _flagged(records) == []
        _run(client, monitor, Service.API, TENFOLD)
        assert _flagged(records) == _runaway(Service.API, 7)
