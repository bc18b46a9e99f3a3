"""configure() refuses a setting that acts on a feature left off (budget_mode="raise" or
on_budget_exceeded without budgets, on_anomaly without anomaly detection), naming the fix; an
operator's explicit off switch (LLM_LEDGER_BUDGETS=off, LLM_LEDGER_ANOMALIES=off) is respected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import ConfigError


def _hook(record: Any) -> None:
    """An alert callback."""


BUDGETS = {"default": {"max_api_calls": 3}}


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        (
            {"budget_mode": "raise"},
            {},
            "budget_mode='raise' acts on production budgets, and there are none (neither budgets= nor "
            "LLM_LEDGER_BUDGETS is set): pass budgets= a budgets.yaml path or a mapping (or set "
            "LLM_LEDGER_BUDGETS); or set budget_mode to 'warn'",
        ),
        (
            {"budgets": None, "budget_mode": "raise"},
            {},
            "budget_mode='raise' acts on production budgets, and there are none (budgets=None)",
        ),
        (
            {},
            {"LLM_LEDGER_BUDGET_MODE": "raise"},
            "LLM_LEDGER_BUDGET_MODE='raise' acts on production budgets, and there are none (neither budgets= "
            "nor LLM_LEDGER_BUDGETS is set)",
        ),
        (
            {"on_budget_exceeded": _hook},
            {},
            "on_budget_exceeded acts on production budgets, and there are none (neither budgets= nor "
            "LLM_LEDGER_BUDGETS is set): pass budgets= a budgets.yaml path or a mapping (or set "
            "LLM_LEDGER_BUDGETS); or drop on_budget_exceeded",
        ),
        (
            {"on_anomaly": _hook},
            {},
            "on_anomaly acts on anomaly detection, which is off (neither anomalies= nor LLM_LEDGER_ANOMALIES "
            "is set): pass anomalies=True or an AnomalyConfig (or set LLM_LEDGER_ANOMALIES=on); or drop "
            "on_anomaly",
        ),
        (
            {"anomalies": False, "on_anomaly": _hook},
            {},
            "on_anomaly acts on anomaly detection, which is off (anomalies=False)",
        ),
    ],
    ids=[
        "raise",
        "raise budgets=None",
        "raise from env",
        "on_budget_exceeded",
        "on_anomaly",
        "anomalies=False",
    ],
)
def test_a_setting_for_a_feature_left_off_is_refused(
    kwargs: dict[str, Any],
    env: dict[str, str],
    message: str,
    fresh_config: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The error names the setting, why the feature is off and how to turn it on; nothing changes."""
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("default: {max_api_calls: 3}\n")
    # features the environment turned on (no argument named them), then off: the next call sees none
    monkeypatch.setenv("LLM_LEDGER_BUDGETS", str(budgets))
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "on")
    llm_ledger.configure(log_dir=None)
    guard, detector = llm_ledger.get_monitor().budgets, llm_ledger.get_monitor().anomalies
    assert guard is not None and detector is not None
    monkeypatch.delenv("LLM_LEDGER_BUDGETS")
    monkeypatch.delenv("LLM_LEDGER_ANOMALIES")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        llm_ledger.configure(log_dir=None, **kwargs)
    assert str(raised.value).startswith(message)
    assert llm_ledger.get_monitor().budgets is guard and llm_ledger.get_monitor().anomalies is detector


def test_an_operators_off_switch_leaves_the_settings_waiting(
    fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM_LEDGER_BUDGETS=off and LLM_LEDGER_ANOMALIES=off turn the features off on purpose: the code's
    budget_mode, on_budget_exceeded and on_anomaly are accepted and wait unused."""
    monkeypatch.setenv("LLM_LEDGER_BUDGETS", "off")
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "off")
    settings = llm_ledger.configure(
        log_dir=None, budget_mode="raise", on_budget_exceeded=_hook, on_anomaly=_hook
    )
    assert settings.budgets is None and settings.anomalies is None
    assert llm_ledger.get_monitor().budgets is None and llm_ledger.get_monitor().anomalies is None


def test_settings_with_their_feature_on_are_accepted(
    fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same settings with budgets and anomaly detection on, from arguments or the environment."""
    settings = llm_ledger.configure(
        log_dir=None,
        budgets=BUDGETS,
        budget_mode="raise",
        on_budget_exceeded=_hook,
        anomalies=True,
        on_anomaly=_hook,
    )
    assert settings.budget_mode == "raise" and settings.anomalies is not None
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "on")
    assert llm_ledger.configure(log_dir=None, on_anomaly=_hook).anomalies is not None
