"""The recipes of docs/exporters.md work as written, run the way an operator runs them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llm_ledger.testing import FakeOpenAI
from tests import warm_python
from tests.exporter_helpers import Receiver

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "exporters.md"


def recipe(after: str) -> str:
    """The first ```python block of docs/exporters.md after the line holding ``after``."""
    text = DOC.read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


def _service(fake_openai: FakeOpenAI, then: str = "") -> str:
    """The "Sending to an OTLP endpoint" block, then one call in a lens, then ``then``."""
    return (
        recipe("**Sending to an OTLP endpoint**")
        + textwrap.dedent(
            f"""
        import os, signal, time
        import openai
        client = llm_ledger.instrument(openai.OpenAI(api_key="sk-test", base_url={fake_openai.base_url!r}))
        hi = [{{"role": "user", "content": "hi"}}]
        with llm_ledger.lens("checkout_summary"):
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        """
        )
        + textwrap.dedent(then)
    )


def _run(app: str, port: int, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``app`` in a process of its own, exporting to ``127.0.0.1:port`` (with ``env`` set)."""
    variables = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", **env}
    return warm_python.run(
        [sys.executable, "-c", app], env=variables, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def _received(app: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Receiver]:
    """``app`` run against a loopback OTLP receiver, and the receiver once the process ended."""
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        return _run(app, receiver.server_port, tmp_path, **env), receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def _metric_names(receiver: Receiver) -> set[str]:
    return {
        metric.name
        for body in receiver.bodies.get("/v1/metrics", [])
        for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _span_names(receiver: Receiver) -> set[str]:
    return {
        span.name
        for body in receiver.bodies.get("/v1/traces", [])
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }


def test_the_otlp_recipe_sends_spans_and_metrics_to_the_endpoint_in_the_environment(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The "Sending to an OTLP endpoint" block, then one call in a lens, in a process of its own with
    OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME set: at exit the receiver has the lens and call
    spans, under that service name, and llm-ledger's metrics."""
    done, receiver = _received(
        _service(fake_openai), tmp_path, OTEL_SERVICE_NAME="checkout", LLM_LEDGER_LOG_DIR="off"
    )
    assert done.returncode == 0, done.stderr
    assert "llm_ledger" not in done.stderr, done.stderr  # nothing reported on llm_ledger.internal
    spans: dict[str, str] = {}
    for body in receiver.bodies.get("/v1/traces", []):
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                spans |= {span.name: service for span in scope.spans}
    assert spans == {"lens checkout_summary": "checkout", "chat gpt-4o-mini": "checkout"}
    names = _metric_names(receiver)
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "llm_ledger.cost"} <= names


@pytest.mark.parametrize("log_dir", ["logs", "off"])
def test_the_otlp_recipe_exports_everything_when_the_service_is_stopped_by_sigterm(
    log_dir: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The same recipe in a service stopped by SIGTERM (systemd, Kubernetes) right after a lens: the
    receiver still gets its spans and metrics, with the log file or without, and the process still
    dies by SIGTERM. SIGTERM's death skips the exit hooks where the SDK's providers export what they
    hold, so every stop lost the last spans and up to a minute of metrics (the spend among them)."""
    app = _service(fake_openai, "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)\n")
    done, receiver = _received(app, tmp_path, LLM_LEDGER_LOG_DIR=log_dir)
    assert done.returncode == -15, done.stderr
    assert _span_names(receiver) == {"lens checkout_summary", "chat gpt-4o-mini"}
    assert {"gen_ai.client.token.usage", "llm_ledger.cost"} <= _metric_names(receiver)


def test_the_otlp_recipe_under_uvicorn_shut_down_in_its_lifespan_exports_once_without_a_warning(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The recipe in an ASGI app under plain `uvicorn app:app`, its providers (``tracer_provider``,
    ``meter_provider``) shut down in its lifespan's shutdown as this page says, stopped by SIGTERM: the
    spans reach the receiver, the process dies by SIGTERM, and nothing warns. uvicorn imports the app
    before installing its own handler, so it raises SIGTERM into the ledger's after that shutdown; the
    ledger exported into the shut-down exporters again, and the SDK said "Exporter already shutdown,
    ignoring batch" at every stop, and with opentelemetry-sdk 1.32 (the floor) "Already shutdown, ignoring
    call to force_flush()" of the tracer provider. (The recipe named no ``meter_provider`` this page told
    to shut down.)"""
    (tmp_path / "app.py").write_text(
        recipe("**Sending to an OTLP endpoint**")
        + textwrap.dedent(
            f"""
        import openai
        base_url = {fake_openai.base_url!r}
        client = llm_ledger.instrument(openai.AsyncOpenAI(api_key="sk-test", base_url=base_url))

        async def app(scope, receive, send):
            while scope["type"] == "lifespan":
                message = await receive()
                if message["type"] == "lifespan.startup":
                    with llm_ledger.lens("checkout_summary"):
                        hi = [{{"role": "user", "content": "hi"}}]
                        await client.chat.completions.create(model="gpt-4o-mini", messages=hi)
                    await send({{"type": "lifespan.startup.complete"}})
                    print("returned", flush=True)
                else:
                    tracer_provider.shutdown()
                    meter_provider.shutdown()  # the names this page gives them
                    await send({{"type": "lifespan.shutdown.complete"}})
                    return
        """
        )
    )
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}"}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--uds",
        str(tmp_path / "app.sock"),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "returned\n"
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
        server.communicate()
        receiver.shutdown()
        receiver.server_close()
    assert server.returncode == -signal.SIGTERM, stderr
    assert "already shutdown" not in stderr.lower(), stderr
    assert _span_names(receiver) == {"lens checkout_summary", "chat gpt-4o-mini"}
    assert {"gen_ai.client.token.usage", "llm_ledger.cost"} <= _metric_names(receiver)


def test_a_sigterm_with_the_endpoint_down_still_ends_the_service_within_the_bound(
    fake_openai: FakeOpenAI, tmp_path: Path, refused_port: int
) -> None:
    """The same service with no collector listening: SIGTERM writes the log, waits at most 10 s for
    the providers' exports (the SDK retries), and the process dies by the signal."""
    then = "print(time.monotonic(), flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n"
    done = _run(_service(fake_openai, then), refused_port, tmp_path, LLM_LEDGER_LOG_DIR="logs")
    took = time.monotonic() - float(done.stdout.split()[0])
    assert done.returncode == -15, done.stderr
    assert took < 20, took
    assert len((tmp_path / "logs" / "llm_calls.jsonl").read_text().splitlines()) == 2


PROMTOOL_TEST = """
rule_files: [llm-ledger-alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'llm_ledger_dropped_records_total{job="my-service",event="llm_api_call"}'
        values: '0 0 0 2x40'
      - series: 'llm_ledger_dropped_records_total{job="my-service",event="lens_summary"}'
        values: '0x43'
      - series: 'llm_ledger_unpriced_calls_total{job="my-service",lens="x",model="acme",service_tier="dflt"}'
        values: '0 0 1x100'
      - series: 'llm_ledger_unpriced_calls_total{job="my-service",lens="x",model="acme",service_tier="flex"}'
        values: '0 0 1x100'
      - series: 'llm_ledger_unpriced_calls_total{job="my-service",lens="x",model="gpt",service_tier="dflt"}'
        values: '0x102'
      - series: 'llm_ledger_budget_exceeded_total{job="my-service",lens="agent",limit="max_api_calls"}'
        values: '0 0 1x40'
      - series: 'llm_ledger_budget_exceeded_total{job="my-service",lens="agent",limit="max_cost_usd"}'
        values: '0x42'
    alert_rule_test:
      - eval_time: 5m
        alertname: LLMLedgerDroppedRecords
        exp_alerts:
          - exp_labels: {severity: warning, job: my-service, event: llm_api_call}
            exp_annotations:
              summary: "my-service: llm_api_call records missing from the metrics (llm_ledger.internal log)"
      - eval_time: 30m
        alertname: LLMLedgerDroppedRecords
        exp_alerts: []
      - eval_time: 10m
        alertname: LLMUnpricedCalls
        exp_alerts:
          - exp_labels: {severity: info, job: my-service, lens: x, model: acme}
            exp_annotations:
              summary: "model acme (lens x) has no price: its spend is missing (add it to a price file)"
      - eval_time: 90m
        alertname: LLMUnpricedCalls
        exp_alerts: []
      - eval_time: 5m
        alertname: LLMBudgetExceeded
        exp_alerts:
          - exp_labels: {severity: warning, job: my-service, lens: agent, limit: max_api_calls}
            exp_annotations:
              summary: "lens agent: runs went over max_api_calls (budgets.yaml)"
      - eval_time: 30m
        alertname: LLMBudgetExceeded
        exp_alerts: []
"""


def yaml_block(first_line: str) -> str:
    """The ```yaml block of docs/exporters.md that starts with ``first_line``."""
    text = DOC.read_text()
    start = text.index(f"```yaml\n{first_line}\n") + len("```yaml\n")
    return text[start : text.index("```", start)]


def test_the_scrape_config_and_alert_rules_pass_promtool_and_fire_on_a_rise(tmp_path: Path) -> None:
    """The docs' prometheus.yml and llm-ledger-alerts.yml, checked by Prometheus' own promtool; its
    rule tests show each alert firing after a rise, with its summary, and quiet once the series is flat."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but promtool is missing: .ci/run installs Debian's prometheus")
        pytest.skip("no promtool (apt-get install prometheus)")
    (tmp_path / "prometheus.yml").write_text(yaml_block("# prometheus.yml"))
    (tmp_path / "llm-ledger-alerts.yml").write_text(yaml_block("# llm-ledger-alerts.yml"))
    (tmp_path / "alerts-test.yml").write_text(PROMTOOL_TEST)
    for command in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts-test.yml"]):
        done = subprocess.run([promtool, *command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
