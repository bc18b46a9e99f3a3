"""Budget breaches and anomalies in the report: are production budgets catching runaway lenses?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import AnomalyConfig, AnomalyDetector, BudgetGuard
from llm_ledger._cli import main
from llm_ledger.report import summarise
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "summarise the quarterly numbers"}]


@pytest.fixture
def log(sdk: Sdk, tmp_path: Path) -> Path:
    """Real SDK calls under a monitor with production budgets (raise) and anomaly detection: `agent`
    runs of 2 calls for alice, then one runaway run of bob's, its 4th call refused (max_api_calls 3)
    and far above its baseline; `digest` runs within their limits."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        monitor.budgets = BudgetGuard({"lenses": {"agent": {"max_api_calls": 3}}}, mode="raise")
        monitor.anomalies = AnomalyDetector(AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",)))
        for user, calls in [("alice", 2)] * 6 + [("bob", 10)]:
            with llm_ledger.track_llm_call(user_id=user), monitor.lens("agent"):
                try:
                    for _ in range(calls):
                        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
                except llm_ledger.BudgetExceededError:
                    pass
        with llm_ledger.track_llm_call(user_id="alice"), monitor.lens("digest"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return path


def test_rows_count_the_budget_breaches_and_anomalies_of_their_group(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """budget_exceeded and lens_anomaly records count in the rows of their lens, user, day...: in JSON
    as over_budget and anomalies, in tables as columns when any is there; never as skipped lines."""
    report = summarise(log, by="user_id")
    rows = {row.key["user_id"]: row for row in report.rows}
    assert (rows["bob"].calls, rows["bob"].over_budget, rows["bob"].anomalies) == (3, 1, 1)
    assert (rows["alice"].over_budget, rows["alice"].anomalies) == (0, 0)
    assert (report.total.over_budget, report.total.anomalies, report.skipped) == (1, 1, 0)
    assert main(["report", str(log), "--by", "lens", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["key"]["lens"], r["over_budget"], r["anomalies"]) for r in out["rows"]] == [
        ("agent", 1, 1),
        ("digest", 0, 0),
    ]
    assert main(["report", str(log), "--by", "lens"]) == 0
    header, _, agent, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[-3:] == ["over", "budget", "anomalies"]
    assert agent.split()[-2:] == ["1", "1"]
    assert agent.split()[:3] == ["agent", "7", "15"]


def test_budget_and_anomaly_columns_appear_only_when_there_are_some(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log without budgets or anomaly detection: the table keeps its usual columns."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client), monitor.lens("digest"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert main(["report", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-2:] == ["avg", "ms"]


def test_by_or_where_model_the_alerts_count_under_the_models_of_their_run(sdk: Sdk, tmp_path: Path) -> None:
    """A budget breach or an anomaly names no model: it counts under the models its run used, as the run
    does, so --where model=X keeps the breaches and anomalies of the runs that used X (not none), and
    --by model shows them beside those models' spend, not under (none)."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        monitor.budgets = BudgetGuard({"lenses": {"agent": {"max_api_calls": 1}}})
        monitor.anomalies = AnomalyDetector(AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",)))
        for words in [5] * 6 + [400]:  # the last digest run is far above the others
            with monitor.lens("digest"):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * words}]
                )
        with monitor.lens("agent"):  # over max_api_calls at its second call
            for model in ("gpt-4o", "gpt-4.1"):
                client.chat.completions.create(model=model, messages=HI)
    rows = {row.key["model"]: row for row in summarise(path, by="model").rows}
    assert {m: (r.over_budget, r.anomalies) for m, r in rows.items()} == {
        "gpt-4o-mini": (0, 1),
        "gpt-4o": (1, 0),
        "gpt-4.1": (1, 0),
    }
    assert (report := summarise(path, by="model")).total.over_budget == report.total.anomalies == 1
    agent = summarise(path, where={"model": "gpt-4o"}).rows
    assert [(r.key["lens"], r.over_budget, r.anomalies) for r in agent] == [("agent", 1, 0)]
    digest = summarise(path, where={"model": "gpt-4o-mini"}).rows
    assert [(r.key["lens"], r.over_budget, r.anomalies) for r in digest] == [("digest", 0, 1)]
