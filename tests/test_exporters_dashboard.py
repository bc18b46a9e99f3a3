"""The Grafana dashboard against a real Prometheus: every panel's PromQL returns data.

A real ``prometheus`` server (Debian's package; ``.ci/run`` installs it) scrapes the demo's metrics
endpoint on loopback while the demo's lenses run against the fake OpenAI server; each panel's
queries then go through Prometheus' HTTP API. Without the binary the test is skipped, with the
reason, on a developer's machine, and fails when ``CI`` is set. The session's server (conftest's
``prometheus``) scrapes every test's metrics as a job of its own (the dashboard's ``$job`` variable
set to it): Prometheus takes about five seconds to scrape its first targets, however short the
interval.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from dashboards.local_prometheus import LocalPrometheus
from examples.lens_app.app import run_lenses
from examples.lens_app.lenses import LENSES
from examples.lens_app.services import RunnerService
from examples.lens_app.sources import load_sources
from examples.lens_app.store import Store
from llm_ledger.exporters import _setup
from llm_ledger.testing import Captured, FakeOpenAI
from tests import warm_python
from tests.conftest import FAKE_KEY
from tests.exporter_helpers import SharedPrometheus, scrape, total, wait, workload

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "llm-ledger.json"
# what Grafana would put in place of its variables: every job, lens and model; a range that covers the test
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__range": "10m",
    "$job": ".*",
    "$lens": ".*",
    "$model": ".*",
}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # panels inside a collapsed row


def expressions(job: str = ".*") -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {**GRAFANA_VARIABLES, "$job": job}
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            found.append((panel["title"], expr))
    return found


def test_dashboard_covers_what_the_issue_asks_and_uses_its_datasource_variable() -> None:
    """Spend by lens and model, cost per run, tokens by type, p50/p95, TTFT, errors, unpriced, top lenses;
    every panel queries through the ${datasource} variable (no hard-coded data source or SDK filter)."""
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in panels(dashboard)).lower()
    for words in (
        "spend rate by lens", "spend rate by model", "cost per lens run", "tokens by type", "p50 / p95",
        "time to first token", "error rate", "unpriced calls", "top lenses by cost",
    ):  # fmt: skip
        assert words in titles, words
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    assert all("telemetry_sdk" not in expr for _, expr in expressions())


@pytest.fixture
def default_monitor_exports(fresh_config: None, prometheus: SharedPrometheus) -> Iterator[int]:
    """configure(exporters=["prometheus:127.0.0.1:PORT"]) as the demo's --metrics does, with a budget
    the workload's research lens goes over; the port."""
    port = prometheus.port("every_panel")
    budgets = {"lenses": {"extra_research": {"max_api_calls": 2}}}
    llm_ledger.configure(log_dir=None, exporters=[f"prometheus:127.0.0.1:{port}"], budgets=budgets)
    yield port
    _setup.prepare(()).commit(llm_ledger.get_monitor())


async def _demo_lenses(server: FakeOpenAI, db: Path) -> None:
    client = llm_ledger.instrument(
        openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0)
    )
    async with client:
        with Store(db) as store:
            results = await run_lenses(RunnerService(client, store), list(LENSES), load_sources(), {})
    assert all(r.error is None for r in results)


def _traffic(server: FakeOpenAI, db: Path) -> None:
    """The demo's five lenses over its sources, plus a stream, a failed call and an unpriced model."""
    import asyncio

    asyncio.run(_demo_lenses(server, db))
    workload(llm_ledger.get_monitor(), server, lens_prefix="extra_")


@pytest.mark.prometheus
def test_every_panel_returns_data_from_a_real_prometheus(
    prometheus: SharedPrometheus, default_monitor_exports: int, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Prometheus scrapes the demo's /metrics twice around two rounds of traffic; then every panel's
    every query returns at least one series with a finite value."""
    server, job = prometheus.server, "every_panel"
    metrics_url = f"http://127.0.0.1:{default_monitor_exports}/metrics"
    _traffic(fake_openai, tmp_path / "app.sqlite3")
    first = total(scrape(metrics_url), "llm_ledger_calls_total")
    assert first > 0

    def scraped(at_least: float) -> bool:
        result = server.query(f'sum(llm_ledger_calls_total{{job="{job}"}})')
        return bool(result) and float(result[0]["value"][1]) >= at_least

    wait("the first scrape", lambda: scraped(first))
    _traffic(fake_openai, tmp_path / "app.sqlite3")  # so that rates and quantiles have something to show
    second = total(scrape(metrics_url), "llm_ledger_calls_total")
    wait("the scrape after the second round", lambda: scraped(second))
    empty = []
    for title, expr in expressions(job):
        values = [float(series["value"][1]) for series in server.query(expr)]
        if not any(v == v and v not in (float("inf"), float("-inf")) for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    up = server.query(f'up{{job="{job}"}}')
    assert [float(s["value"][1]) for s in up] == [1.0]
    assert server.errors() == []


def _panel_expr(title: str, job: str) -> str:
    (expr,) = [e for t, e in expressions(job) if t == title]
    return expr


@contextlib.contextmanager
def _exported(
    prometheus: SharedPrometheus, job: str, monitor: llm_ledger.LLMCallMonitor, server: FakeOpenAI
) -> Iterator[openai.OpenAI]:
    """A PrometheusSink of its own on ``monitor``, its /metrics on ``job``'s port, scraped once by the
    session's Prometheus: a client of ``monitor``; afterwards the client closed and the server stopped."""
    from prometheus_client import CollectorRegistry

    from llm_ledger.exporters import PrometheusSink, start_metrics_server

    registry = CollectorRegistry()
    monitor.add_sink(PrometheusSink(registry))
    metrics = start_metrics_server(prometheus.port(job), "127.0.0.1", registry=registry)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0))
    try:
        wait("the first scrape", lambda: bool(prometheus.server.query(f'up{{job="{job}"}} == 1')))
        yield client
    finally:
        client.close()
        metrics.shutdown()  # at once, as configure() stops its server
        metrics.server_close()


def _calls_scraped(server: LocalPrometheus, job: str, n: int) -> bool:
    return sum(float(s["value"][1]) for s in server.query(f'llm_ledger_calls_total{{job="{job}"}}')) == n


@pytest.mark.prometheus
def test_dashboard_counts_the_first_calls_of_every_lens_and_model(
    prometheus: SharedPrometheus,
    monitor: llm_ledger.LLMCallMonitor,
    records: Captured,
    fake_openai: FakeOpenAI,
) -> None:
    """A lens that ran once, and each label set's first calls, count in the dashboard's increase()
    panels (a series Prometheus first sees already at its value has no rise, so it would show $0);
    the cost per run of a lens that cheap is within a bucket's width of the truth."""
    server, job = prometheus.server, "first_calls"
    hi: Any = [{"role": "user", "content": "hi"}]
    with _exported(prometheus, job, monitor, fake_openai) as client:
        with monitor.lens("rare"):  # one run, never again
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        for _ in range(3):
            with monitor.lens("busy"):
                client.chat.completions.create(model="gpt-4o", messages=hi)
        calls = len(records.calls)
        wait("a scrape of every call", lambda: _calls_scraped(server, job, calls))
        spend = sum(c["cost"]["total_cost_usd"] for c in records.calls)

        # read at that scrape: increase() extrapolates a series' rise past its last sample (by up to 1.1
        # scrape intervals: for a series seen in n scrapes, up to 1 + 1.1 / (n - 1) times its rise),
        # never before its first (that sample is 0); at its last sample, a first call missed would show
        (at,) = {
            float(s["value"][1]) for s in server.query(f'timestamp(llm_ledger_calls_total{{job="{job}"}})')
        }

        def value(expr: str) -> float:
            return sum(float(s["value"][1]) for s in server.query(expr, at))

        assert calls * 0.9 <= value(_panel_expr("Calls over the range", job)) <= calls * 1.5
        assert spend * 0.9 <= value(_panel_expr("Spend over the range", job)) <= spend * 1.5
        top = {
            s["metric"]["lens"]: float(s["value"][1])
            for s in server.query(_panel_expr("Top lenses by cost", job), at)
        }
        rare = next(c for c in records.calls if c["context"]["lens_key"] == "rare")["cost"]["total_cost_usd"]
        assert top.get("rare", 0) >= rare * 0.9, top
        # a cheap lens (a hundredth of a cent or less) keeps its place in the p95 of its cost too
        for expr in (e for t, e in expressions(job) if t == "Cost per lens run"):  # mean, p95
            per_run = {s["metric"]["lens"]: float(s["value"][1]) for s in server.query(expr, at)}
            assert rare / 3 <= per_run["rare"] <= rare * 3, (expr, per_run, rare)
        # no call failed (so no series has status="error"): the error rate is 0 %, not "No data"
        error_rate = server.query(_panel_expr("Error rate", job), at)
        assert [float(s["value"][1]) for s in error_rate] == [0.0], error_rate
        # every call was priced: the unpriced stat says 0, not "No data"
        unpriced = server.query(_panel_expr("Unpriced calls over the range", job), at)
        assert [float(s["value"][1]) for s in unpriced] == [0.0], unpriced
    assert server.errors() == []


@pytest.mark.prometheus
def test_latency_panels_show_successful_calls_and_fast_failures_stay_in_the_error_rate(
    prometheus: SharedPrometheus, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """Three calls that fail at once and one that succeeds after 400 ms: the duration panel's p50 is
    the successful call's (not a failure's few milliseconds), and the error rate counts the failures."""
    server, job = prometheus.server, "latency"
    hi: Any = [{"role": "user", "content": "hi"}]
    with _exported(prometheus, job, monitor, fake_openai) as client:
        client.chat.completions.create(
            model="gpt-4o", messages=hi, extra_headers={"x-fake-fault": "slow", "x-fake-delay-ms": "400"}
        )
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(
                    model="gpt-4o", messages=hi, extra_headers={"x-fake-status": "500"}
                )
        wait("a scrape of every call", lambda: _calls_scraped(server, job, 4))
        # read at that scrape: rate() extrapolates each series from its last sample to the time read
        # in proportion to the time it has samples for, and the failures' series may begin a scrape
        # after the success's (a ratio of two rates is exact only at a scrape's own time)
        (at,) = {
            float(s["value"][1]) for s in server.query(f'timestamp(llm_ledger_calls_total{{job="{job}"}})')
        }
        p50, p95 = (
            {s["metric"]["model"]: float(s["value"][1]) for s in server.query(expr, at)}
            for title, expr in expressions(job)
            if title == "Call duration p50 / p95"
        )
        error_rate = [float(s["value"][1]) for s in server.query(_panel_expr("Error rate", job), at)]
    # in the bucket of the 400 ms call or, on a loaded host, the next one; the failures' is 0.01
    assert 0.32 < p50["gpt-4o"] <= 1.28, p50
    assert 0.32 < p95["gpt-4o"] <= 1.28, p95
    assert error_rate == [pytest.approx(0.75)]
    assert server.errors() == []


@pytest.mark.prometheus
def test_a_token_type_first_counted_later_is_counted_by_increase(
    prometheus: SharedPrometheus, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """A label set's cached-tokens series is made only by its first call that reads from the prompt
    cache, after the label set's first calls: Prometheus scrapes it at 0 first, so the dashboard's
    increase() and rate() count those first tokens, and no series of zeros is scraped before."""
    server, job = prometheus.server, "token_types"
    hi: Any = [{"role": "user", "content": "hi"}]
    tokens = f'llm_ledger_tokens_total{{job="{job}", token_type="cached"}}'
    with _exported(prometheus, job, monitor, fake_openai) as client:
        with monitor.lens("cached"):
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        wait("a scrape of the first call", lambda: _calls_scraped(server, job, 1))
        assert server.query(f"count_over_time({tokens}[10m])") == []  # no series of zeros
        with monitor.lens("cached"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=hi, extra_headers={"x-fake-cached-tokens": "5"}
            )
        wait("a scrape of the second call", lambda: _calls_scraped(server, job, 2))
        wait("a scrape of its cached tokens", lambda: bool(server.query(f"{tokens} == 5")))
        # read at that scrape: increase() extrapolates past the last sample (up to 1.1 scrape intervals),
        # never before the first (0); at the last, the new series' first tokens missed would show
        (at,) = {float(s["value"][1]) for s in server.query(f"timestamp({tokens})")}
        increase = [float(s["value"][1]) for s in server.query(f"increase({tokens}[10m])", at)]
        panel = {
            s["metric"]["token_type"]: float(s["value"][1])
            for s in server.query(_panel_expr("Tokens by type", job).replace("[30s]", "[10m]"), at)
        }
    assert len(increase) == 1 and 5 <= increase[0] <= 5 * 1.55, increase
    assert panel["cached"] > 0, panel
    assert server.errors() == []


@pytest.mark.prometheus
def test_the_documented_anomaly_alert_fires_on_a_lenss_first_anomaly(
    prometheus: SharedPrometheus, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """docs/ANOMALIES.md's alert rule, evaluated by Prometheus: it fires on the first anomaly of a lens
    (its counter series is at 0 from the lens's first runs on, so increase() sees the rise)."""
    from prometheus_client import CollectorRegistry

    from llm_ledger import AnomalyConfig, AnomalyDetector
    from llm_ledger.exporters import PrometheusSink, start_metrics_server

    text = (REPO / "docs" / "ANOMALIES.md").read_text()
    alert = text[text.index("- alert: LLMLensAnomaly") :].split("expr: ", 1)[1].split("\n", 1)[0]
    server, job = prometheus.server, "anomaly"
    registry = CollectorRegistry()
    monitor.add_sink(PrometheusSink(registry))
    monitor.anomalies = AnomalyDetector(AnomalyConfig(window=10, min_runs=5, metrics=("total_tokens",)))
    metrics = start_metrics_server(prometheus.port(job), "127.0.0.1", registry=registry)
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))

    def run(words: int) -> None:
        with monitor.lens("digest"):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-fake-completion-words": str(words)},
            )

    def runs_scraped(n: int) -> bool:
        runs = server.query(f'llm_ledger_lens_runs_total{{job="{job}"}}')
        return sorted(float(s["value"][1]) for s in runs) == [0, n]

    try:
        for _ in range(5):
            run(5)
        wait("a scrape of the ordinary runs", lambda: runs_scraped(5))
        run(400)  # far above its baseline
        wait(
            "a scrape of the anomaly",
            lambda: bool(server.query(f'llm_ledger_lens_anomalies_total{{job="{job}"}} > 0')),
        )
        firing = server.query(alert)  # as documented: every job's (the other tests' jobs have no anomaly)
    finally:
        # closed here: left to the garbage collector (an SDK client sits in a reference cycle), its
        # socket may be finalized first and warn "unclosed socket" in whichever later test that runs
        client.close()
        metrics.shutdown()  # at once, as configure() stops its server
        metrics.server_close()
    assert [(s["metric"]["job"], s["metric"]["lens"], s["metric"]["metric"]) for s in firing] == [
        (job, "digest", "total_tokens")
    ]
    assert server.errors() == []


@pytest.mark.prometheus
def test_the_documented_budget_alert_fires_on_a_lenss_first_breach(
    prometheus: SharedPrometheus, monitor: llm_ledger.LLMCallMonitor, fake_openai: FakeOpenAI
) -> None:
    """docs/BUDGETS.md's alert rule, evaluated by Prometheus: it fires on the first run of a lens that
    goes over its budget, and the dashboard's panel shows that breach under its lens and limit."""
    text = (REPO / "docs" / "BUDGETS.md").read_text()
    alert = text[text.index("- alert: LLMBudgetExceeded") :].split("expr: ", 1)[1].split("\n", 1)[0]
    server, job = prometheus.server, "budget"
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"agent": {"max_api_calls": 2}}}, mode="raise")
    with _exported(prometheus, job, monitor, fake_openai) as client:
        for calls in (2, 2, 5):  # two runs within the limit, then a runaway one
            with contextlib.suppress(llm_ledger.BudgetExceededError), monitor.lens("agent"):
                for _ in range(calls):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
        wait(
            "a scrape of the breach",
            lambda: bool(server.query(f'llm_ledger_budget_exceeded_total{{job="{job}"}} > 0')),
        )
        firing = server.query(alert)  # as documented: every job's (every_panel's has a breach too)
        panel = server.query(_panel_expr("Budget breaches by lens and limit", job))
    assert [(s["metric"]["lens"], s["metric"]["limit"]) for s in firing if s["metric"]["job"] == job] == [
        ("agent", "max_api_calls")
    ]
    assert [(s["metric"]["lens"], s["metric"]["limit"]) for s in panel] == [("agent", "max_api_calls")]
    assert 1 <= float(panel[0]["value"][1]) <= 1.6  # increase() extrapolates past the last sample
    assert server.errors() == []


def test_demo_serves_metrics_and_says_where(tmp_path: Path) -> None:
    """`make demo DEMO_ARGS=--metrics`: the replayed lenses' metrics on /metrics, and the URL printed."""
    demo = warm_python.popen(
        [
            *(sys.executable, "-m", "examples.lens_app", "--metrics", "--metrics-port", "0"),
            *("--db", str(tmp_path / "demo.sqlite3"), "--log-dir", str(tmp_path / "logs")),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LLM_LEDGER_")},
        sigint_default=True,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("metrics:"):
                break
        said = re.fullmatch(
            r"metrics: scrape (http://127\.0\.0\.1:(\d+)/metrics) \(Ctrl-C stops\)", lines[-1].strip()
        )
        assert said is not None and int(said[2]) > 0, lines  # --metrics-port 0: the port bound
        found = scrape(said[1])
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)  # a hang's guard, generous for a loaded host
    assert demo.returncode == 0, err
    for lens in LENSES:
        assert total(found, "llm_ledger_lens_runs_total", lens=lens, status="ok") >= 1, lens
    assert total(found, "llm_ledger_cost_usd_total") > 0


def _compose_service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to dashboards/) of a service's volumes."""
    found = {}
    for volume in service.get("volumes", ()):
        host, container = volume.split(":")[:2]
        found[container] = (REPO / "dashboards" / host).resolve()
    return found


def test_docker_compose_files_agree_with_each_other_and_the_demo() -> None:
    """docker compose cannot run here: its files are checked instead. Every mounted file exists; Grafana
    loads the dashboard from where provisioning looks and reaches Prometheus by service name and port;
    Prometheus scrapes the demo where the demo serves; the demo's command line is one its parser takes."""
    import shlex

    import yaml

    from examples.lens_app.cli import build_parser

    compose = yaml.safe_load((REPO / "dashboards" / "docker-compose.yml").read_text())
    demo = _compose_service(compose, "demo")
    prometheus = _compose_service(compose, "prometheus")
    grafana = _compose_service(compose, "grafana")
    for service in (demo, prometheus, grafana):
        assert all(host.exists() for host in _mounts(service).values()), service
    # Grafana: provisioning folder, dashboard file, data source
    grafana_mounts = _mounts(grafana)
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    assert provisioning == REPO / "dashboards" / "provisioning"
    dashboard_path = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana_mounts[dashboard_path] == DASHBOARD
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "llm-ledger.yml").read_text())["providers"]
    assert provider["options"]["path"] == str(Path(dashboard_path).parent)
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in prometheus["ports"]
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]  # the default Prometheus data source is picked
    for panel in panels(dashboard):
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}, panel
    # Prometheus scrapes the demo service on the port the demo serves and publishes
    prometheus_config = _mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    assert prometheus_config == REPO / "dashboards" / "prometheus.yml"
    (job,) = yaml.safe_load(prometheus_config.read_text())["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "demo" and host in compose["services"]
    # the demo: the repository mounted where it runs, a command line the demo's own parser accepts
    assert _mounts(demo)[demo["working_dir"]] == REPO
    command = shlex.split(demo["command"])
    assert command[:2] == ["sh", "-c"]
    demo_argv = shlex.split(command[2].split("&&")[1])
    assert demo_argv[:3] == ["python", "-m", "examples.lens_app"]
    args = build_parser().parse_args(demo_argv[3:])
    assert args.metrics and args.metrics_addr == "0.0.0.0" and args.repeat
    assert args.metrics_port == int(port) and f"{port}:{port}" in demo["ports"]


@pytest.mark.prometheus
def test_render_draws_the_panels_from_a_real_prometheus(
    prometheus: SharedPrometheus, fresh_config: None, tmp_path: Path
) -> None:
    """``python -m dashboards.render`` (the README's image): a short run draws every chosen panel, each
    with data: the stats' values, a line per series of the time series panels, a bar per lens. Drawn
    from the session's Prometheus (render() starts one of its own, whose first scrape takes 5 s)."""
    import xml.etree.ElementTree as ET

    from dashboards import render

    job = "render"
    image = render.draw(prometheus.server, prometheus.port(job), job, seconds=5, step=1, workdir=tmp_path)
    root = ET.fromstring(image)
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for title in render.STATS + render.CHARTS:
        assert title in texts, title
    assert "no data" not in texts
    spend = texts[texts.index("Spend over the range") + 1]
    assert spend.startswith("$") and float(spend[1:]) > 0
    lines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    # lenses (and calls outside any), token types, a p50 and a p95 per model
    assert len(lines) >= len(LENSES) + 3 + 2 * 3
    # a line through the range for each lens and token type at least (a model's quantile may have
    # only the few points of the rounds that called it)
    assert sum(len(line.attrib["points"].split()) >= 4 for line in lines) >= len(LENSES) + 3
    for lens in LENSES:
        assert texts.count(lens) >= 2, lens  # a legend and a bar


RENDER_TEST = "test_render_main_runs_a_prometheus_of_its_own_and_writes_the_image"
Render = tuple[warm_python.Process, Path]


def _render(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """``python -m dashboards.render`` started (its files, and its Prometheus', under one dir)."""
    workdir = tmp_path_factory.mktemp("render")
    command = [sys.executable, "-m", "dashboards.render", "--seconds", "6", "--step", "1",
               "--out", str(workdir / "dashboard.svg"), "--prometheus", binary]  # fmt: skip
    render = warm_python.popen(
        command, env={**os.environ, "TMPDIR": str(workdir)}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return render, workdir


@pytest.fixture(scope="module", autouse=True)
def render_started_early(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Render]]:
    """``python -m dashboards.render`` spends its ~12 s waiting for its own Prometheus' first scrape
    (about 5 s after it starts) and in the demo's paced rounds: when the session runs the test of it,
    it starts with this module's first test and runs beside the others, for the test's first run
    (a run again, by --reruns or --count, starts its own)."""
    binary = shutil.which("prometheus")
    started: list[Render] = []
    if binary is not None and any(i.name.partition("[")[0] == RENDER_TEST for i in request.session.items):
        started.append(_render(binary, tmp_path_factory))
    yield started
    for render, _ in started:  # its test did not run here: let it end (a kill would leave its Prometheus)
        render.communicate(timeout=60)


def _processes_mentioning(text: str) -> list[str]:
    """The command lines of the running processes that mention ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and entry.name.isdigit() and int(entry.name) != os.getpid():
            found.append(cmdline)
    return found


@pytest.mark.prometheus
def test_render_main_runs_a_prometheus_of_its_own_and_writes_the_image(
    prometheus_binary: str, render_started_early: list[Render], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``python -m dashboards.render --out PATH`` as a user runs it: it starts Debian's ``prometheus``
    on loopback for itself, has it scrape the demo, writes an image with data in every chosen panel
    (the demo's lenses named in it), says where, and leaves no Prometheus running. (Six seconds of
    traffic: in two, under load, every call could precede its series' first scrape, leaving panels
    with no data.)"""
    import xml.etree.ElementTree as ET

    from dashboards import render

    if render_started_early:
        process, workdir = render_started_early.pop()
    else:
        process, workdir = _render(prometheus_binary, tmp_path_factory)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    image = workdir / "dashboard.svg"
    assert out == f"wrote {image}\n"
    assert [line for line in _processes_mentioning(str(workdir)) if "prometheus" in line] == []
    root = ET.fromstring(image.read_text())
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for title in render.STATS + render.CHARTS:
        assert title in texts, title
    assert "no data" not in texts
    for lens in LENSES:
        assert lens in texts, lens  # a series label, scraped from the demo


def test_render_without_the_prometheus_binary_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the binary, ``python -m dashboards.render`` stops at once with the package to install
    (or the option to point at one), and writes nothing."""
    from dashboards import render

    out = tmp_path / "dashboard.svg"
    with pytest.raises(SystemExit) as stopped:
        render.main(["--prometheus", str(tmp_path / "no-prometheus"), "--out", str(out)])
    assert stopped.value.code == 2
    assert "apt-get install prometheus (or --prometheus PATH)" in capsys.readouterr().err
    assert not out.exists()
