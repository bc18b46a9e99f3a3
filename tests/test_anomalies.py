"""Anomalies: lens runs judged against their lens's recent runs, online, after a restart and offline."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client import CollectorRegistry

import llm_ledger
from bench.anomalies import LENSES, flagged, history
from bench.anomalies import main as bench_main
from llm_ledger import AnomalyConfig, AnomalyDetector, ConfigError
from llm_ledger._cli import main
from llm_ledger._records import LensSummary, lens_record
from llm_ledger.exporters import PrometheusSink
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "hi"}]
# tokens and cost only: a loopback call's duration is at the mercy of a busy test machine
QUICK = AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens", "total_cost_usd"))


def _run(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, words: int, model: str = "gpt-4o-mini"
) -> None:
    with monitor.lens("digest"):
        client.chat.completions.create(
            model=model, messages=HI, extra_headers={"x-fake-completion-words": str(words)}
        )


def _anomalies(records: Captured) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "lens_anomaly"]


# -- the detector on synthetic histories (bench/anomalies.py) -------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steady_noisy_runs_never_alarm(seed: int) -> None:
    """500 runs of two lenses with normal token noise and a long-tailed duration: no alarm at the defaults."""
    assert flagged(history(seed, 500).records, AnomalyConfig()) == set()


def _over_threshold(h: Any, run_id: str, config: AnomalyConfig) -> bool:
    """Whether some metric of run ``run_id`` is above median + k MADs (of ln values) of its lens's
    previous ``window`` runs, computed here independently of the detector."""
    index = next(i for i, r in enumerate(h.records) if r["context"]["lens_run_id"] == run_id)
    run = h.records[index]
    lens = run["context"]["lens_key"]
    before = [r for r in h.records[:index] if r["context"]["lens_key"] == lens][-config.window :]
    for metric in config.metrics:
        logs = [math.log(r["summary"][metric]) for r in before]
        center = statistics.median(logs)
        deviations = [abs(v - center) for v in logs]
        mad, floor = statistics.median(deviations), math.log1p(config.min_mad_ratio)
        # below the floor, the mean deviation in MAD units (0.6745 / 0.7979 of it) when it is wider
        spread = max(mad, floor, 0.8453 * statistics.fmean(deviations) if mad < floor else 0)
        if math.log(run["summary"][metric]) > center + config.k * spread:
            return True
    return False


@pytest.mark.parametrize("factor", [2.0, 3.0, 5.0])
def test_every_injected_spike_above_the_threshold_is_caught(factor: float) -> None:
    """Each injected spike that clears its threshold is flagged, with no false alarm; a runaway run
    at twice the usual tokens and cost is always one of them."""
    h = history(0, 500, factor=factor)
    config = AnomalyConfig()
    alarms = flagged(h.records, config)
    above = {run for run in h.spikes if _over_threshold(h, run, config)}
    assert above and alarms == above
    assert {run for run, kind in h.spikes.items() if kind == "runaway"} <= alarms


def test_a_lasting_change_of_level_becomes_the_baseline() -> None:
    """After the level doubles, alarms come, then stop within the window: no alarm in the last 250 runs."""
    h = history(3, 500, step_at=150)
    alarms = flagged(h.records, AnomalyConfig())
    steps = sorted(int(run.rsplit("-", 1)[1]) for run in alarms)
    assert steps and steps[0] == 150 and steps[-1] < 250


def test_the_benchmark_prints_the_tables_of_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.anomalies`` prints Markdown tables as the reports do (docs/ANOMALIES.md shows
    them): names left, figures right, and a ratio with nothing to divide (no spike) as "—"."""
    bench_main(["--seeds", "1", "--runs", "30"])
    lines = capsys.readouterr().out.splitlines()
    tables = [n for n, line in enumerate(lines) if line.startswith("|---")]
    assert len(tables) == 3
    assert lines[tables[0] - 1].startswith("| history | spike | spikes | caught | false alarms | precision |")
    assert lines[tables[0]] == "|---" + "|---:" * 8 + "|"
    assert lines[tables[0] + 1].startswith("| steady | none | 0 | 0 | ") and lines[tables[0] + 1].endswith(
        " | — | — | — | — |"
    )


def _deepseek_day(runs: int, runaway_at: int | None = None) -> list[dict[str, Any]]:
    """``runs`` runs of a lens on deepseek-chat, evenly over two days, its tokens steady: their cost
    halves in DeepSeek's off-peak hours (16:30 to 00:30 UTC, as genai-prices lists them)."""
    out = []
    for n, record in enumerate(r for r in history(6, runs).records if r["context"]["lens_key"] == "digest"):
        start = 1_767_225_600 + n * 2 * 86_400 // runs  # from 2026-01-01T00:00Z
        second = start % 86_400
        off_peak = second >= 16 * 3600 + 1800 or second < 1800
        summary: LensSummary = record["summary"].copy()
        summary["models_used"], summary["duration_ms"] = ["deepseek-chat"], 1000.0
        summary["total_cost_usd"] = summary["total_tokens"] * (0.55 if off_peak else 1.1) / 1e6
        if n == runaway_at:
            summary["total_tokens"] *= 5
            summary["total_cost_usd"] *= 5
        out.append(dict(lens_record(context=record["context"], summary=summary, end_epoch=start + 1)))
    return out


def test_a_price_by_time_of_day_is_no_cost_anomaly() -> None:
    """A DeepSeek lens's cost doubles every day when the off-peak discount ends (00:30 UTC): each part
    of the day has its own cost baseline, so that is no alarm; a runaway run still is."""
    assert flagged(_deepseek_day(600), AnomalyConfig()) == set()
    spikes = _deepseek_day(600, runaway_at=400)
    assert flagged(spikes, AnomalyConfig()) == {spikes[400]["context"]["lens_run_id"]}


def test_a_lens_and_model_pair_has_its_own_baseline() -> None:
    """A cheap lens's runs never make an expensive lens's runs look anomalous, and vice versa."""
    h = history(4, 300)
    assert {r["context"]["lens_key"] for r in h.records} == set(LENSES)
    cheap_only = [r for r in h.records if r["context"]["lens_key"] == "classify"]
    detector = AnomalyDetector(AnomalyConfig())
    assert [a for r in cheap_only for a in detector.observe(r)] == []
    digest = next(r for r in h.records if r["context"]["lens_key"] == "digest")
    assert detector.observe(digest) == []  # a new lens: no baseline, no judgement


# -- online, with the real SDK ----------------------------------------------------------------------


@pytest.mark.parametrize("words", [5, 40])  # 40: 73 tokens, whose exp(ln(73)) is 72.99999999999999
def test_a_run_above_its_baseline_emits_a_lens_anomaly_and_calls_back(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, words: int
) -> None:
    """After min_runs ordinary runs, a run with many more tokens is followed by its lens_anomaly
    records (tokens and cost), in the sinks and through the callback; the median of runs alike is
    their value, with no float noise from the log scale."""
    heard: list[llm_ledger.AnomalyRecord] = []
    config = dataclasses.replace(QUICK, k=5)  # a whole number, as people write it
    monitor.anomalies = AnomalyDetector(config, on_anomaly=heard.append)
    for _ in range(6):
        _run(client, monitor, words=words)
    assert _anomalies(records) == []
    _run(client, monitor, words=300)
    spike = records.lenses[-1]
    found = _anomalies(records)
    assert [r["event"] for r in records][-3:] == ["lens_summary", "lens_anomaly", "lens_anomaly"]
    assert {a["anomaly"]["metric"] for a in found} == {"total_tokens", "total_cost_usd"}
    tokens = next(a for a in found if a["anomaly"]["metric"] == "total_tokens")
    assert tokens["level"] == "WARNING" and tokens["context"] == spike["context"]
    assert tokens["anomaly"]["value"] == spike["summary"]["total_tokens"]
    assert tokens["anomaly"]["median"] == records.lenses[0]["summary"]["total_tokens"]
    assert tokens["anomaly"]["mad"] == 0 and tokens["anomaly"]["runs"] == 6
    assert tokens["anomaly"]["model"] == "gpt-4o-mini" and tokens["anomaly"]["k"] == 5
    assert tokens["anomaly"]["median"] < tokens["anomaly"]["threshold"] < tokens["anomaly"]["value"]
    assert heard == found
    for anomaly in (a["anomaly"] for a in found):  # one JSON type per field, as index mappings need
        figures = {key: anomaly[key] for key in ("value", "median", "mad", "threshold", "k")}
        assert all(type(v) is float for v in figures.values()), figures


def test_another_model_starts_its_own_baseline(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """Runs of the lens on another model are judged against that model's runs only."""
    monitor.anomalies = AnomalyDetector(QUICK)
    for _ in range(6):
        _run(client, monitor, words=5)
    for _ in range(6):
        _run(client, monitor, words=300, model="gpt-4o")
    assert _anomalies(records) == []


def test_a_lens_with_two_usual_sizes_of_run_never_alarms_on_either(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens whose runs usually make one call and every third run two (a retry, a follow-up): most
    runs are alike (MAD 0), yet the two-call runs are the lens's ordinary traffic, never an anomaly;
    a runaway run is still caught."""
    monitor.anomalies = AnomalyDetector(QUICK)
    for n in range(30):
        with monitor.lens("digest"):
            for _ in range(2 if n % 3 == 2 else 1):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-completion-words": "5"}
                )
    assert _anomalies(records) == []
    _run(client, monitor, words=300)
    assert {a["anomaly"]["metric"] for a in _anomalies(records)} == {"total_tokens", "total_cost_usd"}


def test_a_run_that_only_starts_a_background_response_neither_joins_nor_drags_the_baseline(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """A lens whose runs now and then only start a background response (a handler that queues the job
    and returns): such a run's summary counts the start's 0 tokens and pending cost (pending_calls 1),
    so it is never judged and never joins the baseline; the next whole run is judged against the whole
    runs before it, not flagged against the starts' low figures."""
    monitor.anomalies = AnomalyDetector(QUICK)
    ask: Any = {"model": "gpt-4o-mini", "input": "Summarise the otters' report, please."}

    def research(whole: bool) -> None:
        with monitor.lens("research"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, extra_headers={"x-fake-completion-words": "5"}
            )
            job = client.responses.create(**ask, background=True)
            while whole and job.status in ("queued", "in_progress"):
                job = client.responses.retrieve(job.id)

    for whole in [True] * 5 + [False] * 10 + [True]:
        research(whole)
    pending = [lens["summary"]["pending_calls"] for lens in records.lenses]
    assert pending == [0] * 5 + [1] * 10 + [0]
    started, ended = records.lenses[5]["summary"], records.lenses[-1]["summary"]
    assert started["total_tokens"] < ended["total_tokens"] and started["cost_complete"] is False
    assert _anomalies(records) == []


def test_a_failing_callback_never_reaches_the_application(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, internal_log: pytest.LogCaptureFixture
) -> None:
    """An on_anomaly that raises is reported on llm_ledger.internal; the lens and its calls are unaffected."""

    def broken(record: Any) -> None:
        raise RuntimeError("pager down")

    monitor.anomalies = AnomalyDetector(QUICK, on_anomaly=broken)
    for _ in range(5):
        _run(client, monitor, words=5)
    _run(client, monitor, words=300)
    assert "on_anomaly callback" in internal_log.text and "pager down" in internal_log.text


# the restarted process: the default monitor configured from the environment, one runaway run
_RESTARTED = """
import json, sys
import openai, llm_ledger
from llm_ledger.testing import capture
llm_ledger.configure(log_dir=sys.argv[1], handle_sigterm=False)
with openai.OpenAI(api_key="sk-test", base_url=sys.argv[2], max_retries=0) as raw, capture() as records:
    client = llm_ledger.instrument(raw)
    with llm_ledger.lens("digest"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-completion-words": "300"},
        )
print(json.dumps([r for r in records if r["event"] == "lens_anomaly"]))
"""


def _learn(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """Six ordinary runs of a lens, logged in tmp_path with anomaly detection on."""
    llm_ledger.configure(log_dir=tmp_path, anomalies=QUICK, handle_sigterm=False)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = llm_ledger.instrument(raw)
        for _ in range(6):
            _run(client, llm_ledger.get_monitor(), words=5)
        llm_ledger.flush()


def _restart_catches_a_runaway_run(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """A new process on the same log (LLM_LEDGER_ANOMALIES set) flags its first runaway run, judged on
    the six runs it rebuilt its baseline from."""
    env = {**os.environ, "LLM_LEDGER_ANOMALIES": "window=10,min_runs=5,metrics=total_tokens"}
    done = warm_python.run(
        [sys.executable, "-c", _RESTARTED, str(tmp_path), fake_openai.base_url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [anomaly] = json.loads(done.stdout)
    assert anomaly["anomaly"]["metric"] == "total_tokens" and anomaly["anomaly"]["runs"] == 6


def test_the_baseline_survives_a_restart(fresh_config: None, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """configure(anomalies=...) rebuilds the baselines from the log: after a restart (a new process,
    LLM_LEDGER_ANOMALIES set) the first runaway run is caught, without waiting for min_runs new runs."""
    _learn(tmp_path, fake_openai)
    _restart_catches_a_runaway_run(tmp_path, fake_openai)
    logged = [
        orjson.loads(line)["event"] for line in (tmp_path / "llm_calls.jsonl").read_bytes().splitlines()
    ]
    assert logged[-2:] == ["lens_summary", "lens_anomaly"]  # the log keeps it too


def test_the_rebuild_skips_a_line_nested_too_deeply(
    fresh_config: None, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A corrupt lens_summary line nested past any parser's depth (read by neither orjson nor json) is
    skipped by the rebuild, as other malformed lines are: configure() does not raise RecursionError."""
    _learn(tmp_path, fake_openai)
    deep = b'{"event": "lens_summary", "summary": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    with (tmp_path / "llm_calls.jsonl").open("ab") as log:
        log.write(deep)
    _restart_catches_a_runaway_run(tmp_path, fake_openai)


@pytest.mark.parametrize(
    "rotated", ["llm_calls.jsonl.1", "llm_calls.jsonl.1.gz", "llm_calls.jsonl-20261204.gz"]
)
def test_the_baseline_survives_a_restart_after_logrotate(
    rotated: str, fresh_config: None, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A service restarted after the nightly logrotate (docs/MONITORING.md's stanza: the day before as
    llm_calls.jsonl.1 with delaycompress, .1.gz without it, -DATE.gz with dateext) rebuilds its
    baselines from the log moved away, and catches the first runaway run: they started empty, so
    every restart after a rotation was blind for min_runs runs of each lens."""
    _learn(tmp_path, fake_openai)
    log = tmp_path / "llm_calls.jsonl"
    if rotated.endswith(".gz"):
        (tmp_path / rotated).write_bytes(gzip.compress(log.read_bytes()))
        log.unlink()
    else:
        log.rename(tmp_path / rotated)
    _restart_catches_a_runaway_run(tmp_path, fake_openai)


def test_anomalies_are_off_unless_asked_for(fresh_config: None) -> None:
    """No detector by default; True, an AnomalyConfig or LLM_LEDGER_ANOMALIES=on turns it on."""
    llm_ledger.configure(log_dir=None)
    assert llm_ledger.get_monitor().anomalies is None
    llm_ledger.configure(log_dir=None, anomalies=True)
    detector = llm_ledger.get_monitor().anomalies
    assert detector is not None and detector.config == AnomalyConfig()
    llm_ledger.configure(log_dir=None, anomalies=False)
    assert llm_ledger.get_monitor().anomalies is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on", AnomalyConfig()),
        ("0", None),
        ("k=4.5, window=30,min_runs=12", AnomalyConfig(k=4.5, window=30, min_runs=12)),
        ("k=4.5,window=30,", AnomalyConfig(k=4.5, window=30)),  # an empty item, as in LLM_LEDGER_EXPORTERS
        (
            "metrics=total_cost_usd+duration_ms,scale=linear",
            AnomalyConfig(metrics=("total_cost_usd", "duration_ms"), scale="linear"),
        ),
    ],
)
def test_the_environment_variable_takes_on_off_or_settings(text: str, expected: AnomalyConfig | None) -> None:
    """LLM_LEDGER_ANOMALIES reads like the keyword arguments."""
    assert AnomalyConfig.parse(text) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "anomalies: k must be a number of MADs, greater than 0, got 0"),
        ({"k": -2.0}, "anomalies: k must be a number of MADs, greater than 0, got -2.0"),
        ({"k": float("nan")}, "anomalies: k must be a number of MADs, greater than 0, got nan"),
        ({"window": 2}, "anomalies: window must be a whole number of runs, at least 3, got 2"),
        ({"window": 20.5}, "anomalies: window must be a whole number of runs, at least 3, got 20.5"),
        ({"min_runs": 200}, "anomalies: min_runs (200) must not exceed window (100)"),
        (
            {"metrics": ("tokens",)},
            "anomalies: unknown metric 'tokens' (did you mean 'total_tokens'?); choose from total_tokens, "
            "total_cost_usd, duration_ms",
        ),
        ({"scale": "sqrt"}, "anomalies: scale must be one of log, linear, got 'sqrt'"),
        ({"min_mad_ratio": -0.1}, "anomalies: min_mad_ratio must be a number from 0 up, got -0.1"),
    ],
)
def test_bad_settings_name_what_is_wrong_and_what_would_do(kwargs: dict[str, Any], message: str) -> None:
    """Every setting is checked when the config is made, with the value and the valid range."""
    with pytest.raises(ConfigError) as raised:
        AnomalyConfig(**kwargs)
    assert str(raised.value).startswith(message)


def test_metrics_given_as_a_list_read_as_a_tuple() -> None:
    """``metrics=[...]`` is what a caller writes as often as a tuple; it was refused."""
    config = AnomalyConfig(metrics=["total_tokens", "duration_ms"])  # type: ignore[arg-type]
    assert config.metrics == ("total_tokens", "duration_ms")
    assert config == AnomalyConfig(metrics=("total_tokens", "duration_ms"))
    with pytest.raises(ConfigError, match="metrics must be a non-empty tuple or list of"):
        AnomalyConfig(metrics=[])  # type: ignore[arg-type]


def test_bad_environment_and_arguments_are_config_errors(
    fresh_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt setting in LLM_LEDGER_ANOMALIES lists the valid ones; configure() changes nothing."""
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "kk=3")
    with pytest.raises(
        ConfigError,
        match=r"LLM_LEDGER_ANOMALIES='kk=3': expected on, off, or .*settings: window, k, min_runs",
    ):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "k=lots")
    with pytest.raises(ConfigError, match="k must be a number, got 'lots'"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "min_runs=2.5")
    with pytest.raises(ConfigError, match=r"min_runs must be a whole number, got '2\.5'"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "k=0")  # the operator's value, as AnomalyConfig(k=0) shows it
    with pytest.raises(
        ConfigError, match=r"^LLM_LEDGER_ANOMALIES='k=0': k must be a number of MADs, greater than 0, got 0$"
    ):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "window=10,min_runs=50")
    with pytest.raises(ConfigError, match=r"^LLM_LEDGER_ANOMALIES='window=10,min_runs=50': min_runs \(50\)"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "k=5,window=200,k=8")  # which k did the operator mean?
    with pytest.raises(ConfigError, match="k is given twice; give each setting once"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "min_run=20")  # the setting meant is named
    with pytest.raises(ConfigError, match=r"got 'min_run=20' \(did you mean 'min_runs'\?\)$"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", "on,k=8")  # on, not blamed as if it were no choice
    with pytest.raises(ConfigError, match=r"='on,k=8': 'on' goes alone; settings \(k=6\) turn detection on"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.setenv("LLM_LEDGER_ANOMALIES", ",,")  # nothing but commas: no setting, not the defaults
    with pytest.raises(ConfigError, match=r"LLM_LEDGER_ANOMALIES=',,': expected on, off, or .*got ',,'$"):
        llm_ledger.configure(log_dir=None)
    monkeypatch.delenv("LLM_LEDGER_ANOMALIES")
    with pytest.raises(ConfigError, match="anomalies must be True, False or an AnomalyConfig, got 'yes'"):
        llm_ledger.configure(log_dir=None, anomalies="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on_anomaly must be a callable"):
        llm_ledger.configure(log_dir=None, anomalies=True, on_anomaly=3)  # type: ignore[arg-type]
    assert llm_ledger.get_monitor().anomalies is None


def test_prometheus_counts_anomalies_by_lens_and_metric(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor
) -> None:
    """The Prometheus sink counts lens_anomaly records: llm_ledger_lens_anomalies_total{lens,metric}."""
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    monitor.add_sink(sink)
    monitor.anomalies = AnomalyDetector(QUICK)
    for _ in range(5):
        _run(client, monitor, words=5)
    _run(client, monitor, words=300)
    _run(client, monitor, words=400)
    sink.flush()  # as for any series before get_sample_value() (docs/exporters.md, When values move)
    labels = {"lens": "digest", "metric": "total_tokens"}
    assert registry.get_sample_value("llm_ledger_lens_anomalies_total", labels) == 2
    labels["metric"] = "total_cost_usd"
    assert registry.get_sample_value("llm_ledger_lens_anomalies_total", labels) == 2
    labels["metric"] = "duration_ms"  # not judged (QUICK.metrics): no series
    assert registry.get_sample_value("llm_ledger_lens_anomalies_total", labels) is None


# -- offline: llm-ledger anomalies --------------------------------------------------------------------


def _write_log(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("wb") as file:
        for record in records:
            file.write(orjson.dumps(record) + b"\n")
            # calls and other lines in between are skipped
            file.write(b'{"event":"llm_api_call","context":{}}\nnot json\n')


def test_the_command_replays_history_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logs given in any order (and split across files) are judged in time order, like live, and
    the JSON output lists exactly what the detector finds."""
    h = history(0, 200, factor=3.0)
    ordered = sorted(h.records, key=lambda r: r["timestamp"])
    _write_log(tmp_path / "new.jsonl", ordered[200:])
    _write_log(tmp_path / "old.jsonl", ordered[:200])
    assert (
        main(["anomalies", str(tmp_path / "new.jsonl"), str(tmp_path / "old.jsonl"), "--format", "json"]) == 0
    )
    listed = json.loads(capsys.readouterr().out)["anomalies"]
    expected = flagged(h.records, AnomalyConfig())
    assert {a["context"]["lens_run_id"] for a in listed} == expected and expected
    assert [a["timestamp"] for a in listed] == sorted(a["timestamp"] for a in listed)
    assert {a["event"] for a in listed} == {"lens_anomaly"}


def _process_runs(prefix: str, records: list[dict[str, Any]], **scaled: float) -> list[dict[str, Any]]:
    """``records`` as runs of one process (ids as the ledger makes them: a per-process prefix and a
    counter), each figure named in ``scaled`` multiplied."""
    out = []
    for n, record in enumerate(records, start=1):
        summary = {**record["summary"], **{k: v * record["summary"][k] for k, v in scaled.items()}}
        context = {**record["context"], "lens_run_id": prefix * 20 + f"{n:012x}"}
        out.append({**record, "summary": summary, "context": context})
    return out


def test_a_process_first_run_of_a_lens_is_not_judged_on_its_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a restart, the first run of each lens pays for the process's cold start (imports, the
    first connection, the price data: a second where the lens usually takes milliseconds): it is no
    duration anomaly, online or replayed. The next run as slow is one, and the first run's tokens and
    cost are judged as any run's."""
    runs = [r for r in history(5, 60).records if r["context"]["lens_key"] == "classify"]
    before = _process_runs("a", runs[:40])
    cold, slow = _process_runs("b", runs[40:42], duration_ms=20.0)
    runaway = _process_runs("c", runs[42:43], duration_ms=20.0, total_tokens=10.0)[0]
    detector = AnomalyDetector()
    assert [a for r in before for a in detector.observe(r)] == []
    assert detector.observe(cold) == []
    [late] = detector.observe(slow)
    assert late["anomaly"]["metric"] == "duration_ms"
    assert [a["anomaly"]["metric"] for a in detector.observe(runaway)] == ["total_tokens"]

    _write_log(tmp_path / "llm_calls.jsonl", [*before, cold, slow])
    assert main(["anomalies", str(tmp_path / "llm_calls.jsonl"), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)["anomalies"]
    assert [a["context"]["lens_run_id"] for a in listed] == [slow["context"]["lens_run_id"]]


def test_the_command_prints_a_table_and_takes_the_detector_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names lens, model, metric, value, baseline, threshold and run; --k changes the verdict."""
    h = history(1, 150, factor=3.0)
    _write_log(tmp_path / "llm_calls.jsonl", h.records)
    assert main(["anomalies", str(tmp_path / "llm_calls.jsonl"), "--metric", "total_tokens"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["time", "lens", "model", "metric", "value", "median", "MAD", "threshold", "lens", "run"]
    runaway = next(run for run, kind in h.spikes.items() if kind == "runaway")
    assert runaway in out and "total_tokens" in out and "duration_ms" not in out
    assert main(["anomalies", str(tmp_path / "llm_calls.jsonl"), "--k", "1000"]) == 0
    assert capsys.readouterr().out == "no anomalous lens run\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "no such file"),
        (["/dev/zero"], "is not a regular file"),
        (["log.jsonl", "--k", "0"], "--k must be a number of MADs, greater than 0"),
        (["log.jsonl", "--window", "5"], "--min-runs (20) must not exceed --window (5)"),
        # a deque's length: it was an OverflowError traceback
        (
            ["log.jsonl", "--window", "1" + "0" * 20],
            "--window must be a whole number of runs, at least 3 (at most 9,",
        ),
    ],
)
def test_the_command_explains_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """A missing log or bad settings exit 2 with one line saying what is wrong."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log.jsonl").write_text("")
    assert main(["anomalies", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_rebuild_reads_only_the_end_of_the_log(tmp_path: Path) -> None:
    """history_bytes bounds what a restart reads: the last runs, whole lines only, never a cut one."""
    path = tmp_path / "llm_calls.jsonl"
    lines = [orjson.dumps(r) + b"\n" for r in history(0, 100).records]
    path.write_bytes(b"".join(lines))
    last_ten = sum(map(len, lines[-10:]))
    assert AnomalyDetector(AnomalyConfig(history_bytes=last_ten)).rebuild(path) == 10
    assert AnomalyDetector(AnomalyConfig(history_bytes=last_ten + 5)).rebuild(path) == 10  # a cut line
    assert AnomalyDetector(AnomalyConfig()).rebuild(path) == 200
    assert AnomalyDetector(AnomalyConfig()).rebuild(tmp_path / "none.jsonl") == 0


def test_the_rebuild_reads_the_end_of_the_rotated_log_within_the_same_bound(tmp_path: Path) -> None:
    """A live log shorter than history_bytes is topped up with the end of the log rotated away last
    (compressed or not), never past the bound; a .gz cut short (being compressed) gives the runs
    before the cut, and never fails configure()."""
    lines = [orjson.dumps(r) + b"\n" for r in history(0, 100).records]
    path = tmp_path / "llm_calls.jsonl"
    path.write_bytes(b"".join(lines[-10:]))
    packed = gzip.compress(b"".join(lines[:-10]))
    (tmp_path / "llm_calls.jsonl.1.gz").write_bytes(packed)
    bound = sum(map(len, lines[-30:]))
    assert AnomalyDetector(AnomalyConfig(history_bytes=bound)).rebuild(path) == 30
    assert AnomalyDetector(AnomalyConfig()).rebuild(path) == 200
    (tmp_path / "llm_calls.jsonl.1.gz").write_bytes(packed[: len(packed) // 2])
    assert 10 < AnomalyDetector(AnomalyConfig()).rebuild(path) < 200


def test_a_directory_named_like_a_rotated_log_is_no_rotated_log(tmp_path: Path) -> None:
    """A directory beside the log named like its rotations (llm_calls.jsonl.d, made last) is passed
    over for the log rotated away last: it was taken for it, and the IsADirectoryError lost the
    whole rebuild, the live log's runs too (configure() warned, and the baselines started empty)."""
    lines = [orjson.dumps(r) + b"\n" for r in history(0, 100).records]
    path = tmp_path / "llm_calls.jsonl"
    path.write_bytes(b"".join(lines[-10:]))
    (tmp_path / "llm_calls.jsonl.1").write_bytes(b"".join(lines[:-10]))
    os.utime(tmp_path / "llm_calls.jsonl.1", (1e9, 1e9))
    (tmp_path / "llm_calls.jsonl.d").mkdir()
    assert AnomalyDetector(AnomalyConfig()).rebuild(path) == 200


def test_the_table_shows_small_costs_with_three_significant_digits(
    client: openai.OpenAI,
    monitor: llm_ledger.LLMCallMonitor,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A short gpt-4o-mini lens costs a few millionths of a dollar: its value, median and threshold
    read $0.0000xyz as in `llm-ledger report`, not $0.000004 against a threshold of $0.000005."""
    from llm_ledger._jsonl import JsonlFileHandler

    handler = JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    monitor.add_sink(handler.write_record)
    for words in [3] * 6 + [60]:
        _run(client, monitor, words)
    handler.close()
    args = ["--window", "10", "--min-runs", "5", "--metric", "total_cost_usd"]
    assert main(["anomalies", str(tmp_path / "llm_calls.jsonl"), *args]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    value, median, threshold = row[4], row[5], row[7]
    for cell in (value, median, threshold):
        assert re.fullmatch(r"\$0\.0*[1-9]\d\d", cell), row
    # "hi": 5 prompt tokens at $0.15 per 1M; "Lorem ipsum dolor": 5 completion tokens at $0.60 per 1M
    assert median == "$0.00000375"


def _runs_logged(
    tmp_path: Path, fake_openai: FakeOpenAI, config: AnomalyConfig, last: int = 300, **context: Any
) -> list[Any]:
    """Six ordinary runs of a lens and one of ``last`` words, logged in tmp_path by the default monitor
    with detection on; returns the lens_anomaly records the live detector emitted."""
    llm_ledger.configure(log_dir=tmp_path, anomalies=config, handle_sigterm=False)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = llm_ledger.instrument(raw)
        with llm_ledger.testing.capture() as records:
            for words in [5] * 6 + [last]:
                with llm_ledger.lens("digest", **context):
                    client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=HI,
                        extra_headers={"x-fake-completion-words": str(words)},
                    )
        llm_ledger.flush()
    return _anomalies(records)


def test_the_command_lists_what_the_live_detector_said_of_a_context_with_a_lone_surrogate(
    fresh_config: None, tmp_path: Path, fake_openai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A context value holding a lone surrogate (a file name decoded with surrogateescape) is logged as
    its JSON escape: `llm-ledger anomalies` replays that log and lists what the live detector said (it
    was a TypeError traceback), and a restart rebuilds the baseline from those runs (it skipped them)."""
    live = _runs_logged(tmp_path, fake_openai, QUICK, source_id="report-\udcff.pdf")
    assert [a["anomaly"]["metric"] for a in live] == ["total_tokens", "total_cost_usd"]
    args = ["--window", "10", "--min-runs", "5", "--metric", "total_tokens", "--metric", "total_cost_usd"]
    assert main(["anomalies", str(tmp_path / "llm_calls.jsonl"), "--format", "json", *args]) == 0
    listed = json.loads(capsys.readouterr().out)["anomalies"]
    assert [a["anomaly"] for a in listed] == [a["anomaly"] for a in live]
    assert {a["context"]["lens_run_id"] for a in listed} == {a["context"]["lens_run_id"] for a in live}
    assert AnomalyDetector(QUICK).rebuild(tmp_path / "llm_calls.jsonl") == 7


def test_the_command_judges_the_other_runs_of_a_log_with_a_number_past_a_float(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-edited or corrupt line whose figure is an integer too large for a float leaves that figure
    unjudged; the runs around it are judged as before (it was a TypeError, then an OverflowError)."""
    h = history(1, 150, factor=3.0)
    path = tmp_path / "llm_calls.jsonl"
    _write_log(path, h.records)
    assert main(["anomalies", str(path), "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)["anomalies"]
    context = {**h.records[0]["context"], "lens_key": "edited"}
    huge = {
        **h.records[0],
        "context": context,
        "summary": {**h.records[0]["summary"], "total_tokens": 10**400},
    }
    with path.open("ab") as file:
        file.write(json.dumps({**huge, "timestamp": "2000-01-01T00:00:00.000Z"}).encode() + b"\n")
    assert main(["anomalies", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["anomalies"] == expected and expected


def test_a_metric_named_twice_is_judged_once(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured
) -> None:
    """metrics=total_tokens+total_tokens (or --metric given twice) judges tokens once: one record per
    anomalous run and metric, each run once in the baseline (it was two records, and every value
    counted twice toward min_runs)."""
    config = AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens", "total_tokens"))
    assert config == AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",))
    monitor.anomalies = AnomalyDetector(config)
    for words in [5, 5, 5, 300, 5, 5, 300]:
        _run(client, monitor, words)
    [anomaly] = _anomalies(records)
    assert anomaly["anomaly"]["runs"] == 6
    assert [r["anomaly_metrics"] for r in records if r["event"] == "lens_summary"][-1] == ["total_tokens"]


def test_a_detector_given_a_bool_says_what_it_takes() -> None:
    """AnomalyDetector(True) named True among what it takes ("must be True, False or ..., got True")."""
    with pytest.raises(ConfigError, match=r"^AnomalyDetector\(\) takes an AnomalyConfig \(or None for"):
        AnomalyDetector(True)  # type: ignore[arg-type]


def test_the_command_takes_every_setting_a_live_detector_may_have(
    fresh_config: None, tmp_path: Path, fake_openai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service on scale=linear,min_mad_ratio=0.01 flags a run a fifth above its usual ones, which the
    default settings leave alone: --scale and --min-mad-ratio replay its log to the same verdict (the
    command had no such flags, so its verdicts could not agree)."""
    config = dataclasses.replace(QUICK, metrics=("total_tokens",), scale="linear", min_mad_ratio=0.01)
    live = _runs_logged(tmp_path, fake_openai, config, last=6)
    assert [a["anomaly"]["metric"] for a in live] == ["total_tokens"]
    log = str(tmp_path / "llm_calls.jsonl")
    args = ["--window", "10", "--min-runs", "5", "--metric", "total_tokens", "--format", "json"]
    assert main(["anomalies", log, *args]) == 0
    assert json.loads(capsys.readouterr().out)["anomalies"] == []
    assert main(["anomalies", log, *args, "--scale", "linear", "--min-mad-ratio", "0.01"]) == 0
    assert json.loads(capsys.readouterr().out)["anomalies"] == live
    assert main(["anomalies", log, "--min-mad-ratio", "-1"]) == 2
    assert "--min-mad-ratio must be a number from 0 up, got -1.0" in capsys.readouterr().err
