"""``--where`` values that no record has: a typo says so, rather than leaving an empty report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger._cli import main
from llm_ledger.report import summarise
from tests.conftest import Sdk
from tests.report_helpers import at, logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "summarise the quarterly numbers"}]


@pytest.fixture
def log(sdk: Sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real SDK calls of alice on 2026-11-02 and of bob on 2026-11-09, each in a `summary` run."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for user, day in (("alice", 2), ("bob", 9)):
            at(monkeypatch, datetime(2026, 11, day, 12, tzinfo=UTC))
            with llm_ledger.track_llm_call(user_id=user), monitor.lens("summary"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return path


def test_a_where_value_no_record_has_is_named_with_the_closest_one(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--where user_id=alcie: the empty table says which value matched nothing and the closest one the
    records have, in text, Markdown (as a code span) and JSON; a value some record has is not named."""
    assert main(["report", str(log), "--where", "user_id=alcie", "--where", "user_id=bob"]) == 0
    out = capsys.readouterr().out
    assert "--where user_id=alcie: no call or lens run has this value (did you mean alice?)" in out
    assert "user_id=bob" not in out
    assert main(["report", str(log), "--where", "lens=summry", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "--where `lens=summry`: no call or lens run has this value (did you mean `summary`?)" in out
    assert main(["report", str(log), "--where", "user_id=alcie", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == [] and report["unmatched_where"] == {"user_id": ["alcie"]}
    assert summarise(log, where={"user_id": "alcie"}).unmatched == (("user_id", "alcie", "alice"),)


def test_a_where_value_outside_the_time_range_is_no_typo(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bob's calls are all after --until: his rows are empty, but the value exists, so nothing is said."""
    report = summarise(log, where={"user_id": "bob"}, until="2026-11-05")
    assert report.rows == () and report.unmatched == ()
    assert (
        main(["report", str(log), "--where", "user_id=bob", "--until", "2026-11-05", "--format", "json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["unmatched_where"] == {}
