"""``llm-ledger anomalies --since/--until/--where``: the anomalies of a period or a user, each judged
against the whole history the logs hold."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger._cli import main
from tests.conftest import Sdk
from tests.report_helpers import at, logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

START = datetime(2026, 11, 1, tzinfo=UTC)
RUNAWAYS = {10: "bob", 25: "alice"}  # run number -> whose run's prompt is 40 times the usual


@pytest.fixture
def log(sdk: Sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """30 hourly runs of a `digest` lens from 2026-11-01T00:00Z by real SDK calls, alternately alice's
    and bob's; runs 10 (bob, 2026-11-01T10:00) and 25 (alice, 2026-11-02T01:00) are runaways."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for run in range(30):
            at(monkeypatch, START + timedelta(hours=run))
            user = RUNAWAYS.get(run, ("alice", "bob")[run % 2])
            words = 2000 if run in RUNAWAYS else 50
            messages: Any = [{"role": "user", "content": "word " * words}]
            with llm_ledger.track_llm_call(user_id=user), monitor.lens("digest"):
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    return path


def runs(capsys: pytest.CaptureFixture[str], log: Path, *args: str) -> list[tuple[str, str]]:
    """(timestamp, user_id) of each run `llm-ledger anomalies` lists."""
    command = ["anomalies", str(log), "--min-runs", "5", "--metric", "total_tokens", "--format", "json"]
    assert main([*command, *args]) == 0
    found = json.loads(capsys.readouterr().out)["anomalies"]
    return [(a["timestamp"][:13], a["context"]["user_id"]) for a in found]


def test_since_until_and_where_list_the_anomalies_of_a_period_or_a_user(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Which runs were anomalous this week, or for this user: the runs listed are those the filters
    keep, and each is judged as in the whole history (run 25's baseline holds the runs before --since)."""
    assert runs(capsys, log) == [("2026-11-01T10", "bob"), ("2026-11-02T01", "alice")]
    assert runs(capsys, log, "--since", "2026-11-02") == [("2026-11-02T01", "alice")]
    assert runs(capsys, log, "--until", "2026-11-02T01:00+01:00") == [("2026-11-01T10", "bob")]
    assert runs(capsys, log, "--where", "user_id=bob") == [("2026-11-01T10", "bob")]
    assert runs(capsys, log, "--where", "user_id=alice", "--since", "2026-11-01T12:00") == [
        ("2026-11-02T01", "alice")
    ]
    assert main(["anomalies", str(log), "--min-runs", "5", "--metric", "total_tokens"]) == 0
    assert capsys.readouterr().out.endswith("\n2 anomalies\n")
    assert (
        main(["anomalies", str(log), "--min-runs", "5", "--metric", "total_tokens", "--since", "2026-11-02"])
        == 0
    )
    assert capsys.readouterr().out.endswith("\n1 anomaly\n")


def test_a_bad_filter_is_an_error_naming_the_valid_form(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in llm-ledger report: exit status 2 and the problem, for a bad date or an unknown dimension; a
    bad setting named by its flag."""
    assert main(["anomalies", str(log), "--since", "1/11/2026"]) == 2
    assert "since: '1/11/2026' is not an ISO date or date-time" in capsys.readouterr().err
    assert main(["anomalies", str(log), "--where", "usr_id=bob"]) == 2
    assert "no record has a dimension 'usr_id' (did you mean 'user_id'?)" in capsys.readouterr().err
    assert main(["anomalies", str(log), "--min-runs", "200"]) == 2
    assert "error: --min-runs (200) must not exceed --window (100): " in capsys.readouterr().err
    assert main(["anomalies", str(log), "--k", "0"]) == 2
    assert "error: --k must be " in capsys.readouterr().err


def test_replaying_a_long_history_holds_each_run_compactly(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs are put in time order before they are judged, so each is held until its turn: as its JSON
    text (about 700 bytes), not as the parsed record (about 2.6 KB; 790 MB for a million-line log)."""
    summaries = [line for line in log.read_bytes().splitlines(keepends=True) if b'"lens_summary"' in line]
    long = tmp_path / "long.jsonl"
    long.write_bytes(b"".join(summaries) * 200)  # 6,000 lens runs as the ledger wrote them
    tracemalloc.start()
    try:
        assert main(["anomalies", str(long), "--metric", "total_tokens", "--format", "json"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert json.loads(capsys.readouterr().out)["anomalies"]  # the runaways, judged as before
    assert peak < 7 << 20, f"{peak / 2**20:.1f} MiB"  # it held 10 MiB


def test_the_table_shows_a_value_just_above_its_threshold_apart_from_it(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs of 32 tokens, then one of 43 just above its threshold (42.88): the table shows the threshold
    with the digits that tell it from the value (not 43 and 43), and a whole number of tokens as one; a
    cost as well ($0.000006898 under $0.000006900, not $0.00000690 twice)."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for size in [108] * 10 + [152]:  # 31 or 42 prompt tokens, and a one-token answer
            with monitor.lens("digest"):
                messages: Any = [{"role": "user", "content": "a" * size}]
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, extra_headers={"x-fake-content": "ok"}
                )
    command = ["anomalies", str(path), "--min-runs", "5", "--metric", "total_tokens"]
    assert main([*command, "--format", "json"]) == 0
    [anomaly] = [a["anomaly"] for a in json.loads(capsys.readouterr().out)["anomalies"]]
    assert (anomaly["value"], anomaly["median"], round(anomaly["threshold"], 2)) == (43, 32, 42.88)
    assert main(command) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[4:8] == ["43", "32", "x1.00", "42.9"]
    assert main([*command[:-1], "total_cost_usd", "--k", "5.5955"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[4:8] == ["$0.000006900", "$0.000005250", "x1.00", "$0.000006898"]
