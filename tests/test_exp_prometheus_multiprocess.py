"""Multiprocess mode (PROMETHEUS_MULTIPROC_DIR): a label set first written by a worker after the server
started is scraped at 0 before its value (against a real Prometheus), so rate() and increase() count
its first calls, and only once whichever process serves the directory (a restarted server, each web
worker); the lens and model caps hold across every worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import generate_latest

import llm_ledger
from llm_ledger.exporters import metrics_registry
from llm_ledger.testing import FakeOpenAI, capture
from tests.conftest import FAKE_KEY, Sdk
from tests.exporter_helpers import (
    METRICS_SERVER,
    PROMETHEUS_WORKER,
    Samples,
    SharedPrometheus,
    by_labels,
    samples,
    scrape,
    total,
    wait,
)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parents[1]
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a pre-fork server's processes: one multiprocess directory, empty."""
    (tmp_path / "multiproc").mkdir()
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}


def records_of(fake_openai: FakeOpenAI, path: Path, lens: str, calls: int) -> Path:
    """``calls`` calls in one run of ``lens``, as the JSON lines a worker's sink will be handed."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
    with capture(monitor) as records, monitor.lens(lens):
        for _ in range(calls):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    client.close()  # left to the garbage collector, its socket may warn in a later test
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def worker(env: dict[str, str], lines: Path, **caps: int) -> subprocess.Popen[bytes]:
    """A worker process handing ``lines`` to its own ``PrometheusSink(**caps)``."""
    return subprocess.Popen(
        [sys.executable, "-c", PROMETHEUS_WORKER, str(lines), json.dumps(caps)], env=env, cwd=REPO
    )


def run_worker(env: dict[str, str], lines: Path) -> None:
    assert worker(env, lines).wait(timeout=60) == 0


def run_capped_worker(env: dict[str, str], lines: Path, max_lenses: int) -> str:
    """A worker handing ``lines`` to a ``PrometheusSink(max_lenses=...)``, run to its end: its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", PROMETHEUS_WORKER, str(lines), json.dumps({"max_lenses": max_lenses})],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture
def serve(env: dict[str, str]) -> Iterator[Any]:
    """``serve(port=0)`` starts ``start_metrics_server(port)`` in a process of its own; its address."""
    started: list[subprocess.Popen[str]] = []

    def start(port: int = 0) -> str:
        process = subprocess.Popen(
            [sys.executable, "-c", METRICS_SERVER, str(port)],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        return f"127.0.0.1:{int(process.stdout.readline())}"

    yield start
    for process in started:
        process.communicate("", timeout=30)


@pytest.mark.prometheus
def test_a_new_label_set_is_scraped_at_zero_first_so_increase_counts_its_first_calls(
    prometheus: SharedPrometheus, fake_openai: FakeOpenAI, env: dict[str, str], serve: Any, tmp_path: Path
) -> None:
    """A worker's first calls of a new lens, written to the multiprocess files between two scrapes,
    appear in Prometheus as 0 then 3: increase() counts all three."""
    server, job = prometheus.server, "multiprocess"
    serve(prometheus.port(job))
    lines = records_of(fake_openai, tmp_path / "fresh.jsonl", "fresh", 3)
    wait("the first scrape", lambda: bool(server.query(f'up{{job="{job}"}} == 1')))
    run_worker(env, lines)
    selector = f'llm_ledger_calls_total{{job="{job}", lens="fresh"}}'
    wait("a scrape of the calls", lambda: [s["value"][1] for s in server.query(selector)] == ["3"])
    history = server.query(f"{selector}[5m]")
    increase = server.query(f"increase({selector}[5m])")
    assert not server.errors()
    assert len(history) == 1
    values = [float(v) for _, v in history[0]["values"]]
    assert values[0] == 0 and values[-1] == 3, values
    assert float(increase[0]["value"][1]) >= 3, increase  # extrapolated to the window, never below


def test_a_new_series_shows_0_once_whichever_process_serves_the_directory(
    fake_openai: FakeOpenAI, env: dict[str, str], serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Web workers that each serve /metrics (Prometheus reaching any of them), a registry made per
    request, a restarted server: a series shows 0 in the first scrape of the directory that includes
    it and its value in every later one, whichever process serves it (a second 0 would read to
    Prometheus as a counter reset, and increase() would count its calls twice)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", env["PROMETHEUS_MULTIPROC_DIR"])

    def per_request() -> Samples:  # prometheus-client's recipe: a registry made for each request
        return samples(generate_latest(metrics_registry()).decode())

    a, b = (f"http://{serve()}/metrics" for _ in range(2))
    run_worker(env, records_of(fake_openai, tmp_path / "fresh.jsonl", "fresh", 3))
    shown = [scrape(a, settled=False), scrape(a, settled=False), per_request(), scrape(b, settled=False)]
    assert [total(found, "llm_ledger_calls_total", lens="fresh") for found in shown] == [0, 3, 3, 3]
    assert [total(found, "llm_ledger_call_duration_seconds_count", lens="fresh") for found in shown] == [
        0,
        3,
        3,
        3,
    ]
    run_worker(env, records_of(fake_openai, tmp_path / "later.jsonl", "later", 2))
    shown = [per_request(), per_request(), scrape(b, settled=False)]
    assert [total(found, "llm_ledger_lens_runs_total", lens="later") for found in shown] == [0, 1, 1]
    restarted = f"http://{serve()}/metrics"
    assert total(scrape(restarted, settled=False), "llm_ledger_calls_total") == 5


def test_the_lens_and_model_caps_hold_across_every_worker_process(
    env: dict[str, str], serve: Any, tmp_path: Path, sdk: Sdk
) -> None:
    """Four workers at once, each with 12 lenses and models of its own, under max_lenses=10 and
    max_models=5: /metrics names exactly 10 lenses and 5 models (the rest under "other"), not 10 and 5
    per process, and counts every call."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = sdk(monitor)
    files = []
    for w in range(4):
        with capture(monitor) as records:
            for i in range(12):
                with monitor.lens(f"w{w}-lens{i}"):
                    client.chat.completions.create(model=f"w{w}-model{i}", messages=HI)
        files.append(tmp_path / f"w{w}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in records))
    workers = [worker(env, lines, max_lenses=10, max_models=5) for lines in files]
    assert [w.wait(timeout=120) for w in workers] == [0] * 4
    found = scrape(f"http://{serve()}/metrics")
    lenses = by_labels(found, "llm_ledger_calls_total", "lens")
    models = by_labels(found, "llm_ledger_calls_total", "model")
    assert len(lenses) == 11 and lenses[("other",)] == 48 - 10, lenses
    assert len(models) == 6 and models[("other",)] == 48 - 5, models
    assert total(found, "llm_ledger_calls_total") == 48
    runs = by_labels(found, "llm_ledger_lens_runs_total", "lens")
    assert set(runs) == set(lenses) and sum(runs.values()) == 48


def test_an_unusable_shared_cap_file_is_reported_once_and_the_worker_caps_its_own_values(
    env: dict[str, str], serve: Any, tmp_path: Path, sdk: Sdk
) -> None:
    """Should the file that shares a cap be unusable (here a directory in its place), the worker says
    so once, naming the file, and still folds its own values beyond the cap into "other"."""
    (Path(env["PROMETHEUS_MULTIPROC_DIR"]) / "llm_ledger_lens.labels").mkdir()
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = sdk(monitor)
    with capture(monitor) as records:
        for i in range(4):
            with monitor.lens(f"lens{i}"):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    stderr = run_capped_worker(env, lines, max_lenses=2)
    assert stderr.count("could not share the lens label's cap") == 1, stderr
    assert "llm_ledger_lens.labels" in stderr and "may exceed 2" in stderr
    lenses = by_labels(scrape(f"http://{serve()}/metrics"), "llm_ledger_calls_total", "lens")
    assert lenses == {("lens0",): 1.0, ("lens1",): 1.0, ("other",): 2.0}


def test_an_unusable_file_of_scraped_series_leaves_every_scrape_whole(
    fake_openai: FakeOpenAI,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should the file listing the series shown be unusable (here a directory in its place), /metrics
    still shows every value (without the first 0) and says so once, naming the file."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", env["PROMETHEUS_MULTIPROC_DIR"])
    (Path(env["PROMETHEUS_MULTIPROC_DIR"]) / "llm_ledger_scraped.labels").mkdir()
    run_worker(env, records_of(fake_openai, tmp_path / "fresh.jsonl", "fresh", 2))
    with caplog.at_level("WARNING", logger="llm_ledger.internal"):
        shown = [samples(generate_latest(metrics_registry()).decode()) for _ in range(2)]
    assert [total(found, "llm_ledger_calls_total", lens="fresh") for found in shown] == [2, 2]
    warnings = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(warnings) == 1 and "llm_ledger_scraped.labels" in warnings[0], warnings


def test_a_cap_file_line_cut_short_by_a_killed_worker_keeps_the_cap_shared(
    env: dict[str, str], serve: Any, tmp_path: Path, sdk: Sdk
) -> None:
    """A worker killed while it wrote a lens to the shared cap file leaves a line cut short: the next
    workers add their lenses on lines of their own, so the cap stays shared, with no warning."""
    (Path(env["PROMETHEUS_MULTIPROC_DIR"]) / "llm_ledger_lens.labels").write_text('"lens0"\n"le')
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    client = sdk(monitor)
    files = []
    for w in range(2):
        with capture(monitor) as records:
            for i in range(3):
                with monitor.lens(f"w{w}-lens{i}"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        files.append(tmp_path / f"w{w}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in records))
    for lines in files:
        stderr = run_capped_worker(env, lines, max_lenses=3)
        assert "could not share" not in stderr, stderr
    lenses = by_labels(scrape(f"http://{serve()}/metrics"), "llm_ledger_calls_total", "lens")
    assert lenses == {("w0-lens0",): 1.0, ("w0-lens1",): 1.0, ("other",): 4.0}
