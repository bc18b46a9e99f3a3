"""PrometheusSink: metric names and labels, values equal to the records, bounded labels, multiprocess
mode, the metrics server, and configure(exporters=...) with its errors."""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import llm_ledger
from llm_ledger import ConfigError, _config
from llm_ledger._anomalies import METRICS
from llm_ledger.exporters import PrometheusSink, _setup, metrics_ports, start_metrics_server
from llm_ledger.exporters._prometheus import PENDING_CALLS
from llm_ledger.report import summarise_records
from llm_ledger.testing import Captured, FakeOpenAI, capture
from tests import warm_python
from tests.conftest import FAKE_KEY, Sdk
from tests.exporter_helpers import (
    AWAIT_FORKED_CHILD,
    METRICS_SERVER,
    PROMETHEUS_WORKER,
    UNPRICED_MODEL,
    Samples,
    by_labels,
    hold_then_fork,
    label_names,
    samples,
    scrape,
    total,
    workload,
)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parents[1]
CALL_LABELS = {"lens", "model", "provider", "operation", "service_tier"}
EXPECTED_LABELS = {
    "llm_ledger_calls_total": CALL_LABELS | {"status"},
    "llm_ledger_tokens_total": CALL_LABELS | {"token_type"},
    "llm_ledger_cost_usd_total": {"lens", "model", "provider", "service_tier"},
    "llm_ledger_call_duration_seconds_count": {"lens", "model", "operation", "status"},
    "llm_ledger_time_to_first_token_seconds_count": {"lens", "model", "operation"},
    "llm_ledger_lens_runs_total": {"lens", "status"},
    "llm_ledger_lens_cost_usd_count": {"lens"},
    "llm_ledger_unpriced_calls_total": {"lens", "model", "provider", "service_tier"},
    "llm_ledger_budget_exceeded_total": {"lens", "limit"},
}


def exposed(registry: CollectorRegistry) -> Samples:
    """The registry as a scrape after the one that first saw its new series at 0 (see ``scrape``)."""
    generate_latest(registry)
    return samples(generate_latest(registry).decode())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def run(fake_openai: FakeOpenAI, registry: CollectorRegistry) -> tuple[Captured, Samples]:
    """The mixed workload through a monitor with a PrometheusSink: its records and its metrics. The
    research lens's third call goes over its budget."""
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[PrometheusSink(registry)])
    monitor.budgets = llm_ledger.BudgetGuard({"lenses": {"research": {"max_api_calls": 2}}})
    with capture(monitor) as records:
        workload(monitor, fake_openai)
    return records, exposed(registry)


def _model(call: dict[str, Any]) -> str:
    return str(call["request"]["model"] or call["response"]["model"])


def test_every_metric_has_exactly_the_documented_labels(run: tuple[Captured, Samples]) -> None:
    """Each metric family is exposed under its documented name with exactly its label names."""
    _, found = run
    for name, labels in EXPECTED_LABELS.items():
        assert label_names(found, name) == {frozenset(labels)}, name
    assert {"llm_ledger_call_duration_seconds_bucket", "llm_ledger_lens_cost_usd_sum"} <= {
        n for n, _ in found
    }


def test_the_docs_table_lists_every_metric_with_its_type_and_labels(run: tuple[Captured, Samples]) -> None:
    """docs/exporters.md's table of metrics is what a scrape shows: names, types and label names."""
    from prometheus_client.parser import text_string_to_metric_families

    records, _ = run
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    for record in records:  # lens records as a monitor judging anomalies emits them: their anomaly series
        sink({**record, "anomaly_metrics": list(METRICS)} if record["event"] == "lens_summary" else record)
    sink.flush()
    exposed_families = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if not family.name.endswith("_created"):  # prometheus-client's start times (see the docs)
            name = family.name + ("_total" if family.type == "counter" else "")
            exposed_families[name] = (family.type, set(family.samples[0].labels) - {"le"})
    text = (REPO / "docs" / "exporters.md").read_text()
    table = text[text.index("| metric (as exposed) |") :].split("\n\n", 1)[0].splitlines()[2:]
    documented = {}
    for row in table:
        name, kind, labels = (cell.strip() for cell in row.strip("|").split("|"))
        documented[name.strip("`")] = (kind.split()[0], {label.strip(" `") for label in labels.split(",")})
    assert documented == exposed_families


def test_call_counts_tokens_and_cost_equal_the_records(run: tuple[Captured, Samples]) -> None:
    """Counters per label set are the sums of the call records with those values."""
    records, found = run
    calls = records.calls
    assert len(calls) == 7
    expected = Counter(
        (c["context"]["lens_key"] or "none", _model(c), c["server"]["provider"], c["operation"], c["status"])
        for c in calls
    )
    assert by_labels(found, "llm_ledger_calls_total", "lens", "model", "provider", "operation", "status") == {
        k: float(v) for k, v in expected.items()
    }
    for token_type, field in [
        ("input", "prompt_tokens"),
        ("output", "completion_tokens"),
        ("cached", "cached_tokens"),
        ("reasoning", "reasoning_tokens"),
    ]:
        want = sum(c["usage"][field] or 0 for c in calls)
        assert want > 0, field  # the workload exercises every token type
        assert total(found, "llm_ledger_tokens_total", token_type=token_type) == want, token_type
    cost = sum(c["cost"]["total_cost_usd"] or 0 for c in calls)
    assert total(found, "llm_ledger_cost_usd_total") == pytest.approx(cost, rel=1e-12)
    assert total(found, "llm_ledger_cost_usd_total", lens="summary") == pytest.approx(
        sum(c["cost"]["total_cost_usd"] for c in calls if c["context"]["lens_key"] == "summary"), rel=1e-12
    )


def test_histograms_count_every_call_and_streams_have_a_first_token(run: tuple[Captured, Samples]) -> None:
    """Durations are observed once per call, in seconds; time to first token once per stream, in series
    of its own lens, model and operation only."""
    records, found = run
    calls = records.calls
    assert total(found, "llm_ledger_call_duration_seconds_count") == len(calls)
    assert total(found, "llm_ledger_call_duration_seconds_sum") == pytest.approx(
        sum(c["timing"]["duration_ms"] for c in calls) / 1000
    )
    streams = [c for c in calls if c["timing"]["time_to_first_token_ms"] is not None]
    assert len(streams) == 1
    assert total(found, "llm_ledger_time_to_first_token_seconds_count", model="gpt-4o") == 1
    # streams only: no series of empty buckets beside every other call's duration histogram
    (stream,) = streams
    assert by_labels(found, "llm_ledger_time_to_first_token_seconds_count", "lens", "model", "operation") == {
        (stream["context"]["lens_key"], "gpt-4o", "chat"): 1
    }
    buckets = sorted(
        float(dict(ls)["le"]) for (n, ls) in found if n == "llm_ledger_call_duration_seconds_bucket"
    )
    assert min(buckets) == 0.01 and max(b for b in buckets if b != float("inf")) == 81.92


def test_lens_runs_and_their_cost(run: tuple[Captured, Samples]) -> None:
    """One lens run counted per summary record, ``error`` when a call of it failed; its cost observed."""
    records, found = run
    assert by_labels(found, "llm_ledger_lens_runs_total", "lens", "status") == {
        ("summary", "ok"): 1.0,
        ("summary", "error"): 0.0,
        ("research", "ok"): 0.0,
        ("research", "error"): 1.0,
    }
    for lens in records.lenses:
        key = lens["context"]["lens_key"]
        assert total(found, "llm_ledger_lens_cost_usd_sum", lens=key) == pytest.approx(
            lens["summary"]["total_cost_usd"]
        )


def test_budget_breaches_are_counted_by_lens_and_limit_as_the_report_counts_them(
    run: tuple[Captured, Samples],
) -> None:
    """Each budget_exceeded record counts once under its lens and limit: the metrics' total is the
    report's over-budget total for the same records, so an alert and a dashboard can see breaches."""
    records, found = run
    breaches = [r for r in records if r["event"] == "budget_exceeded"]
    assert [(r["context"]["lens_key"], r["budget"]["limit"]) for r in breaches] == [
        ("research", "max_api_calls")
    ]
    assert by_labels(found, "llm_ledger_budget_exceeded_total", "lens", "limit") == {
        ("research", "max_api_calls"): 1.0
    }
    report = summarise_records(list(records), by="lens")
    assert total(found, "llm_ledger_budget_exceeded_total") == report.total.over_budget == 1


def test_a_nested_runs_cost_is_in_its_parents_run_cost_and_in_the_spend_once(
    client: openai.OpenAI, monitor: llm_ledger.LLMCallMonitor, records: Captured, registry: CollectorRegistry
) -> None:
    """As docs/exporters.md says: lens_cost_usd observes a run's whole cost (its nested runs' included,
    as run.summary has it); cost_usd_total counts each call once under its innermost lens, as the report."""
    monitor.add_sink(PrometheusSink(registry))
    hi: Any = [{"role": "user", "content": "hi"}]
    with monitor.lens("outer"):
        client.chat.completions.create(model="gpt-4o", messages=hi)
        with monitor.lens("inner"):
            client.chat.completions.create(model="gpt-4o", messages=hi)
    found = exposed(registry)
    inner, outer = (c["cost"]["total_cost_usd"] for c in records.calls[::-1])
    assert total(found, "llm_ledger_lens_cost_usd_sum", lens="outer") == pytest.approx(outer + inner)
    assert total(found, "llm_ledger_lens_cost_usd_sum", lens="inner") == pytest.approx(inner)
    report = {row.key["lens"]: row.cost_usd for row in summarise_records(list(records)).rows}
    for lens in ("outer", "inner"):
        assert total(found, "llm_ledger_cost_usd_total", lens=lens) == pytest.approx(float(report[lens]))
    assert total(found, "llm_ledger_cost_usd_total") == pytest.approx(outer + inner)


def test_unpriced_calls_are_counted_by_model(run: tuple[Captured, Samples]) -> None:
    """A call to a model without a price counts as unpriced; a failed call that was not billed does not."""
    records, found = run
    assert [c for c in records.calls if c["cost"]["total_cost_usd"] is None and c["status"] == "ok"]
    counted = by_labels(found, "llm_ledger_unpriced_calls_total", "model")
    # no series of zeros for priced models (the failed gpt-4o call was not billed): the dashboard's
    # stat says 0 with "or vector(0)"
    assert counted == {(UNPRICED_MODEL,): 1.0}


def test_no_unbounded_value_becomes_a_label(run: tuple[Captured, Samples]) -> None:
    """user_id, source_id, run ids and call ids never appear in any label."""
    records, found = run
    values = {v for _, ls in found for _, v in ls}
    forbidden = {"user-42", "src-1", "src-2"}
    forbidden |= {c["call_id"] for c in records.calls} | {c["context"]["lens_run_id"] for c in records.lenses}
    assert not values & forbidden


def test_lens_and_model_labels_fold_into_other_beyond_the_cap(sdk: Sdk, registry: CollectorRegistry) -> None:
    """The first max_lenses lens keys and max_models models keep their names; later ones count as "other"."""
    sink = PrometheusSink(registry, max_lenses=2, max_models=2)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = sdk(monitor)
    for lens, model in [("a", "m1"), ("b", "m2"), ("c", "m3"), ("d", "m1"), ("a", "m4")]:
        with monitor.lens(lens):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    found = exposed(registry)
    assert by_labels(found, "llm_ledger_calls_total", "lens") == {("a",): 2.0, ("b",): 1.0, ("other",): 2.0}
    assert by_labels(found, "llm_ledger_calls_total", "model") == {
        ("m1",): 2.0,
        ("m2",): 1.0,
        ("other",): 2.0,
    }
    assert by_labels(found, "llm_ledger_lens_runs_total", "lens") == {
        ("a",): 2.0,
        ("b",): 1.0,
        ("other",): 2.0,
    }


def test_a_lens_named_as_a_reserved_label_value_is_said_once(
    sdk: Sdk, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A lens keyed "none" or "other" shares its series with the calls outside any lens or the lenses
    past the cap (the values are kept for the dashboards that query them): the sink says so once per
    key, naming the fix, on llm_ledger.internal."""
    sink = PrometheusSink(registry)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
    client = sdk(monitor)
    hi: Any = [{"role": "user", "content": "x"}]
    with caplog.at_level(logging.WARNING, logger="llm_ledger.internal"):
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        for lens in ("none", "other", "none", "digest"):
            with monitor.lens(lens):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        found = exposed(registry)
    assert by_labels(found, "llm_ledger_calls_total", "lens") == {
        ("none",): 3.0,
        ("other",): 1.0,
        ("digest",): 1.0,
    }
    said = [r.getMessage() for r in caplog.records if "reserved" in r.getMessage()]
    assert len(said) == 2
    assert "'none'" in said[0] and "outside any lens" in said[0] and "another key" in said[0]
    assert "'other'" in said[1] and "past the cap" in said[1]


def test_a_model_or_tier_named_as_a_reserved_label_value_is_said_once(
    sdk: Sdk, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A model named "unknown" shares its series with the calls that name no model, and a service tier
    named "none" with the answers that name none, as a lens keyed "none" does: the sink says so once per
    value on llm_ledger.internal, naming what the series also count."""
    made: list[Any] = []
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[made.append])
    client = sdk(monitor)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    call = made[0]
    named = [
        {
            **call,
            "request": {**call["request"], "model": model},
            "response": {**call["response"], "model": model},
        }
        for model in ("unknown", None)
    ]
    tiered = [{**call, "response": {**call["response"], "service_tier": tier}} for tier in ("none", None)]
    sink = PrometheusSink(registry)
    with caplog.at_level(logging.WARNING, logger="llm_ledger.internal"):
        for record in [*named, *tiered] * 2:
            sink(record)
        found = exposed(registry)
    assert by_labels(found, "llm_ledger_calls_total", "model") == {("unknown",): 4.0, ("gpt-4o-mini",): 4.0}
    assert by_labels(found, "llm_ledger_calls_total", "service_tier") == {("default",): 4.0, ("none",): 4.0}
    said = [r.getMessage() for r in caplog.records if "reserved" in r.getMessage()]
    assert len(said) == 2
    assert "model 'unknown'" in said[0] and "calls that name no model" in said[0]
    assert "service tier 'none'" in said[1] and "answers that name no service tier" in said[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buckets": [1, 0.5]}, "increasing"),
        ({"buckets": ["x"]}, "sequence of numbers"),
        ({"buckets": [0, 1]}, "positive"),
        ({"max_models": 0}, "max_models must be a whole number"),
        ({"max_lenses": "9"}, "max_lenses must be a whole number"),
    ],
)
def test_bad_arguments_are_config_errors(
    kwargs: dict[str, Any], message: str, registry: CollectorRegistry
) -> None:
    """Bad buckets or caps raise ConfigError naming the argument, and register nothing."""
    with pytest.raises(ConfigError, match=message):
        PrometheusSink(registry, **kwargs)
    assert not exposed(registry)


def test_custom_buckets_are_used(run: tuple[Captured, Samples]) -> None:
    """buckets= sets the bounds of both latency histograms."""
    records, _ = run
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, buckets=[0.5, 2])
    for record in records:
        sink(record)
    les = {dict(ls)["le"] for (n, ls) in exposed(registry) if n.endswith("_seconds_bucket")}
    assert les == {"0.5", "2.0", "+Inf"}


def test_calls_reach_the_metrics_at_every_collection_and_every_pending_calls(
    run: tuple[Captured, Samples],
) -> None:
    """A call's sums wait in the sink until the registry is collected, flush() is called, or
    PENDING_CALLS calls wait; then the metrics hold every one of them. A collection shows a new series
    at 0 first (Prometheus' rate() and increase() count only a rise) and its calls at the next one."""
    records, _ = run
    call = records.calls[0]
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)

    def in_metrics() -> float:  # the counter's own samples: no collection of the registry
        return float(
            sum(s.value for m in sink.calls.collect() for s in m.samples if s.name.endswith("_total"))
        )

    for _ in range(3):
        sink(call)
    assert in_metrics() == 0
    first = samples(generate_latest(registry).decode())
    assert label_names(first, "llm_ledger_calls_total") and total(first, "llm_ledger_calls_total") == 0
    assert total(samples(generate_latest(registry).decode()), "llm_ledger_calls_total") == 3
    assert in_metrics() == 3
    lens = records.lenses[0]
    sink(lens)  # a lens run's new series is shown at 0 first too
    for expected in (0, 1):
        found = samples(generate_latest(registry).decode())
        assert total(found, "llm_ledger_lens_runs_total", lens=lens["context"]["lens_key"]) == expected
    for _ in range(PENDING_CALLS - 1):
        sink(call)
    assert in_metrics() == 3
    sink(call)
    assert in_metrics() == 3 + PENDING_CALLS
    sink(call)
    sink.flush()
    assert in_metrics() == 4 + PENDING_CALLS
    found = exposed(registry)
    assert total(found, "llm_ledger_call_duration_seconds_count") == 4 + PENDING_CALLS
    assert (
        total(found, "llm_ledger_tokens_total", token_type="input")
        == (4 + PENDING_CALLS) * call["usage"]["prompt_tokens"]
    )


def test_a_busy_process_still_scrapes_a_new_series_at_zero_first(run: tuple[Captured, Samples]) -> None:
    """More than PENDING_CALLS calls between two scrapes (about 70 calls a second at a 15 s scrape
    interval) move the sums of the series scraped already, but a series that appeared since (a lens
    run once a day, a model's first failure) is still scraped at 0 first, then at its value, so that
    increase() counts it; an unscraped process moves a new series' sums past twice PENDING_CALLS calls."""
    records, _ = run
    busy, rare = (
        records.calls[0],
        next(c for c in records.calls if c["context"].get("lens_key") == "research"),
    )
    assert busy["context"]["lens_key"] != rare["context"]["lens_key"]
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    sink(busy)
    exposed(registry)  # Prometheus has seen the busy series
    sink(rare)
    for _ in range(PENDING_CALLS):
        sink(busy)
    scrapes = [samples(generate_latest(registry).decode()) for _ in range(2)]
    assert [total(found, "llm_ledger_calls_total", lens="research") for found in scrapes] == [0, 1]
    assert [total(found, "llm_ledger_calls_total", lens="summary") for found in scrapes] == [
        1 + PENDING_CALLS
    ] * 2

    unscraped = PrometheusSink(CollectorRegistry())
    for _ in range(2 * PENDING_CALLS):
        unscraped(rare)
    unscraped_calls = sum(
        s.value for m in unscraped.calls.collect() for s in m.samples if s.name.endswith("_total")
    )
    assert unscraped_calls == 2 * PENDING_CALLS


def test_a_second_sink_on_one_registry_is_a_config_error(registry: CollectorRegistry) -> None:
    """Two sinks cannot share a registry; the failed one leaves the first one's metrics intact."""
    first = PrometheusSink(registry)
    with pytest.raises(ConfigError, match="one PrometheusSink per registry"):
        PrometheusSink(registry)
    assert first.calls is not None and "llm_ledger_calls" in registry._names_to_collectors


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client installed, building the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install 'llm-ledger\[prometheus\]'"):
        PrometheusSink()


# -- the metrics server ---------------------------------------------------------------------------


def test_metrics_server_serves_the_registry(run: tuple[Captured, Samples]) -> None:
    """start_metrics_server(0) picks a free port and serves the registry's metrics over HTTP; once
    shut down and closed, as the docs say, the port can be served again."""
    records, _ = run
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    for record in records:
        sink(record)
    server = start_metrics_server(0, "127.0.0.1", registry=registry)
    try:
        found = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert total(found, "llm_ledger_calls_total") == len(records.calls)
    again = start_metrics_server(server.server_port, "127.0.0.1", registry=registry)  # the port is free
    again.shutdown()
    again.server_close()


def test_shutting_the_metrics_server_down_returns_at_once() -> None:
    """shutdown() after a scrape returns at once, not when the serving loop next looks for it (every
    half second): an application, or a test, that stops its /metrics server is not held up."""
    server = start_metrics_server(0, "127.0.0.1", registry=CollectorRegistry())
    try:
        scrape(f"http://127.0.0.1:{server.server_port}/metrics", settled=False)
        started = time.monotonic()
        server.shutdown()
        took = time.monotonic() - started
    finally:
        server.server_close()
    assert took < 0.25, took


def test_a_busy_port_is_a_config_error() -> None:
    """A port something already listens on gives a ConfigError naming the port and the fix."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}: the port is already in use"):
            start_metrics_server(port, "127.0.0.1", registry=CollectorRegistry())


@pytest.mark.parametrize(
    ("spec", "addr", "problem"),
    [
        ("prometheus:192.0.2.1:9464", "192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1
        ("prometheus:no-such-host.invalid:9464", "no-such-host.invalid", ""),  # never resolves (RFC 2606)
        # a key pasted in place of the host: described, never quoted
        (
            f"prometheus:sk-proj-{'A1b2' * 8}.invalid:9464",
            "<48 characters not shown: they look like a credential>",
            "",
        ),
    ],
)
@pytest.mark.usefixtures("fresh_exporters")
def test_an_address_this_host_does_not_have_is_a_config_error_naming_the_fix(
    spec: str, addr: str, problem: str
) -> None:
    """LLM_LEDGER_EXPORTERS=prometheus:HOST:PORT with a HOST that is not this machine's (a copied
    config, a typo): the error names the address and says which to use instead."""
    with pytest.raises(ConfigError) as raised:
        llm_ledger.configure(log_dir=None, exporters=[spec])
    message = str(raised.value)
    assert f"cannot serve metrics on {addr}:9464" in message and problem in message
    assert "0.0.0.0" in message and "127.0.0.1" in message and "prometheus:127.0.0.1:9464" in message


# -- multiprocess mode ----------------------------------------------------------------------------


def test_a_multiprocess_dir_that_is_not_there_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming no directory fails the sink and the server at start-up, saying
    what to create, instead of a traceback on every call and metrics lost."""
    missing = tmp_path / "prometheus-multiproc"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    message = rf"PROMETHEUS_MULTIPROC_DIR={missing}: no such directory; create it \(empty\)"
    with pytest.raises(ConfigError, match=message):
        PrometheusSink(CollectorRegistry())
    with pytest.raises(ConfigError, match=message):
        start_metrics_server(0, "127.0.0.1")


def test_a_multiprocess_dir_set_after_prometheus_client_was_imported_is_a_config_error(
    tmp_path: Path,
) -> None:
    """prometheus-client picks where values live when first imported: PROMETHEUS_MULTIPROC_DIR set later
    (in code, after an import of prometheus_client) leaves a worker's metrics in its memory, and the
    directory's /metrics silently without them. configure() says so instead; set before, it works."""
    (tmp_path / "multiproc").mkdir()
    script = (
        "import os, sys\n"
        "if sys.argv[1] == 'late': import prometheus_client\n"
        f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path / 'multiproc')!r}\n"
        "import llm_ledger\n"
        "llm_ledger.configure(log_dir=None, exporters=['prometheus'])\n"
    )
    late = subprocess.run([sys.executable, "-c", script, "late"], cwd=REPO, capture_output=True, text=True)
    assert late.returncode == 1
    assert (
        f"ConfigError: PROMETHEUS_MULTIPROC_DIR={tmp_path / 'multiproc'} was set after prometheus_client"
        in (late.stderr)
    )
    assert "set it in the environment the process starts with" in late.stderr
    early = subprocess.run([sys.executable, "-c", script, "early"], cwd=REPO, capture_output=True, text=True)
    assert early.returncode == 0, early.stderr


def test_multiprocess_mode_sums_every_worker(tmp_path: Path, run: tuple[Captured, Samples]) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (gunicorn and other pre-fork servers), workers each write their
    own files and start_metrics_server in another process serves the sum of all of them."""
    records, single = run
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}
    (tmp_path / "multiproc").mkdir()
    for _ in range(3):
        subprocess.run(
            [sys.executable, "-c", PROMETHEUS_WORKER, str(lines)], env=env, cwd=REPO, check=True, timeout=60
        )
    exporter = subprocess.Popen(
        [sys.executable, "-c", METRICS_SERVER],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        port = int(exporter.stdout.readline())
        found = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        exporter.communicate("", timeout=30)
    for name in ("llm_ledger_calls_total", "llm_ledger_tokens_total", "llm_ledger_lens_runs_total"):
        assert total(found, name) == 3 * total(single, name) > 0, name
    assert total(found, "llm_ledger_cost_usd_total") == pytest.approx(
        3 * total(single, "llm_ledger_cost_usd_total")
    )
    assert total(found, "llm_ledger_call_duration_seconds_count") == 3 * len(records.calls)


# another thread is inside the sink (holding its lock) at the moment the process forks (a pool started
# by a busy multithreaded service); the child then makes a call through the same sink
FORK_WHILE_BUSY = (
    """
import os, sys, threading, time, openai, llm_ledger
from prometheus_client import CollectorRegistry, generate_latest
from llm_ledger.exporters import PrometheusSink

sink = PrometheusSink(CollectorRegistry())
monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
HI = [{"role": "user", "content": "hi"}]
with monitor.instrument(openai.OpenAI(api_key="sk-fake", base_url=sys.argv[1], max_retries=0)) as client:
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)  # the parent's, pending at the fork
"""
    + hold_then_fork("sink._pending_lock")
    + """
if pid == 0:
    client = monitor.instrument(openai.OpenAI(api_key="sk-fake", base_url=sys.argv[1], max_retries=0))
    client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    sink.flush()
    os.write(1, generate_latest(sink.registry))
    os._exit(0)
"""
    + AWAIT_FORKED_CHILD
)


def test_a_process_forked_while_another_thread_is_inside_the_sink_still_calls(
    fake_openai: FakeOpenAI,
) -> None:
    """A fork copies a lock another thread holds, held for good: the child's calls would hang in the
    sink. The child gets free locks and none of its parent's pending sums, and counts its own call."""
    done = warm_python.run(
        [sys.executable, "-c", FORK_WHILE_BUSY, fake_openai.base_url],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert total(samples(done.stdout), "llm_ledger_calls_total") == 1


# an application serving its registry from its own web app (generate_latest in a /metrics view, as
# docs/exporters.md shows) that then forks a worker (a multiprocessing pool) making calls
FORK_AFTER_A_SCRAPE = """
import logging, os, sys, openai, llm_ledger
from prometheus_client import CollectorRegistry, generate_latest
from llm_ledger.exporters import PrometheusSink

logging.basicConfig(format="%(name)s %(message)s")
sink = PrometheusSink(CollectorRegistry())
monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[sink])
HI = [{"role": "user", "content": "hi"}]
generate_latest(sink.registry)  # a scrape of the application's own /metrics
pid = os.fork()
if pid == 0:
    with monitor.instrument(openai.OpenAI(api_key="sk-fake", base_url=sys.argv[1], max_retries=0)) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    os._exit(0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_forked_from_a_process_serving_its_registry_says_its_calls_are_not_served(
    fake_openai: FakeOpenAI,
) -> None:
    """A process whose /metrics is its own web app's (no start_metrics_server) forks a worker: the
    worker's calls go to its copy of the registry, which nothing serves; it says so once, naming the
    fix, as a gunicorn --preload worker does."""
    done = warm_python.run(
        [sys.executable, "-c", FORK_AFTER_A_SCRAPE, fake_openai.base_url],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no /metrics serves" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("llm_ledger.internal") and "PROMETHEUS_MULTIPROC_DIR" in warnings[0]


# -- configure(exporters=...) ---------------------------------------------------------------------


@pytest.fixture
def fresh_exporters(fresh_config: None) -> Iterator[None]:
    """configure() as on a fresh import; afterwards no exporter sink stays on and no server runs."""
    yield
    _setup.prepare(()).commit(llm_ledger.get_monitor())


ANY_PORT = "prometheus:127.0.0.1:0"  # /metrics on a free loopback port (metrics_ports() says which)


def _url(spec: str = ANY_PORT) -> str:
    """The /metrics URL of the server configure() runs for ``spec``."""
    return f"http://127.0.0.1:{metrics_ports()[spec]}/metrics"


@pytest.mark.usefixtures("fresh_exporters")
def test_port_0_binds_a_free_port_and_says_which(caplog: pytest.LogCaptureFixture) -> None:
    """prometheus:HOST:0 serves /metrics on a port no one else holds (none is picked, freed, then
    bound: another process could take it meanwhile); metrics_ports() and the INFO line logged say
    which, and a later configure() naming the same spec keeps that port."""
    with caplog.at_level(logging.INFO, "llm_ledger.internal"):
        settings = llm_ledger.configure(log_dir=None, exporters=[ANY_PORT, "otel"])
    assert settings.exporters == (ANY_PORT, "otel")
    port = metrics_ports()[ANY_PORT]
    assert port > 0
    assert f"llm-ledger: serving /metrics on http://127.0.0.1:{port}/metrics" in caplog.messages
    assert total(scrape(_url()), "llm_ledger_calls_total") >= 0
    llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])  # the same listener
    assert metrics_ports() == {ANY_PORT: port}
    assert total(scrape(f"http://127.0.0.1:{port}/metrics"), "llm_ledger_calls_total") >= 0
    # two of them at two addresses: each its own free port, not "serve /metrics twice on port 0"
    both = llm_ledger.configure(log_dir=None, exporters=[ANY_PORT, "prometheus:0"])
    assert both.exporters == (ANY_PORT, "prometheus:0.0.0.0:0")
    ports = metrics_ports()
    assert ports[ANY_PORT] == port and ports["prometheus:0.0.0.0:0"] not in (0, port)


@pytest.mark.usefixtures("fresh_exporters")
def test_configure_turns_the_exporter_on_for_the_default_monitor(sdk: Sdk, tmp_path: Path) -> None:
    """exporters=["prometheus:HOST:PORT"] counts the default monitor's calls and serves them on PORT;
    exporters=[] turns it off again and stops the server."""
    settings = llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])
    assert settings.exporters == (ANY_PORT,)
    url = _url()
    before = total(scrape(url), "llm_ledger_calls_total", lens="configured")
    client = sdk(llm_ledger.get_monitor())  # the default monitor, as llm_ledger.instrument() uses
    with llm_ledger.lens("configured"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert total(scrape(url), "llm_ledger_calls_total", lens="configured") == before + 1
    llm_ledger.configure(log_dir=None, exporters=[])
    assert metrics_ports() == {}
    with pytest.raises(OSError, match="Connection refused"):
        scrape(url)
    with llm_ledger.lens("configured"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])
    assert total(scrape(_url()), "llm_ledger_calls_total", lens="configured") == before + 1  # off meanwhile


@pytest.mark.usefixtures("fresh_exporters")
def test_configure_stops_the_metrics_server_at_once() -> None:
    """configure() that turns the exporter off returns as soon as the /metrics server stopped, not
    after the server's idle loop next looks (up to half a second each time): ten on-and-off turns
    take well under a second."""
    urls = []
    started = time.monotonic()
    for _ in range(10):
        llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])
        urls.append(_url())
        llm_ledger.configure(log_dir=None, exporters=[])
    assert time.monotonic() - started < 1.0
    with pytest.raises(OSError, match="Connection refused"):
        scrape(urls[-1])


HOLD_A_PORT = (
    "import socket, sys; s = socket.create_server(('127.0.0.1', 0)); "
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


@pytest.fixture
def port_of_another_process() -> Iterator[int]:
    """A loopback port another process listens on, until the test ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_PORT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        yield int(holder.stdout.readline())
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


@pytest.mark.usefixtures("fresh_exporters")
def test_moving_the_listener_to_another_address_on_the_same_port_replaces_the_ledgers_own(
    port_of_another_process: int,
) -> None:
    """prometheus:PORT then prometheus:127.0.0.1:PORT (and back) in one process: the ledger's own
    listener on that port is replaced, not reported as a port in use; a port another process holds
    is still the clear error, and a configure() that fails that way leaves the old listener serving."""
    llm_ledger.configure(log_dir=None, exporters=["prometheus:0"])  # a free port, bound at every address
    port = metrics_ports()["prometheus:0.0.0.0:0"]
    url = f"http://127.0.0.1:{port}/metrics"
    llm_ledger.configure(log_dir=None, exporters=[f"prometheus:127.0.0.1:{port}"])
    assert metrics_ports() == {f"prometheus:127.0.0.1:{port}": port}
    assert total(scrape(url), "llm_ledger_calls_total") >= 0
    llm_ledger.configure(log_dir=None, exporters=[f"prometheus:{port}"])
    assert metrics_ports() == {f"prometheus:0.0.0.0:{port}": port}
    held = port_of_another_process
    with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{held}: the port is already in use"):
        llm_ledger.configure(
            log_dir=None, exporters=[f"prometheus:127.0.0.1:{port}", f"prometheus:127.0.0.1:{held}"]
        )
    assert _config._settings is not None and _config._settings.exporters == (f"prometheus:0.0.0.0:{port}",)
    assert metrics_ports() == {f"prometheus:0.0.0.0:{port}": port}
    assert total(scrape(url), "llm_ledger_calls_total") >= 0  # served again by the listener kept


@pytest.mark.usefixtures("fresh_exporters")
def test_a_second_worker_with_the_same_port_is_told_how_to_serve_several_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gunicorn's workers all read LLM_LEDGER_EXPORTERS=prometheus:PORT: the first serves it, the
    next one's error names the fix for several processes (workers without a port, one /metrics)."""
    llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])  # the first worker
    port = metrics_ports()[ANY_PORT]
    monkeypatch.setenv("LLM_LEDGER_EXPORTERS", f"prometheus:127.0.0.1:{port}")
    worker = subprocess.run(
        [sys.executable, "-c", "import llm_ledger; llm_ledger.configure(log_dir=None)"],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 1
    error = worker.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}: the port is already in use" in error
    assert "without a port" in error and "Multiprocess mode" in error, error


@pytest.mark.usefixtures("fresh_exporters")
def test_environment_variable_names_the_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLM_LEDGER_EXPORTERS=prometheus:PORT,... is read by configure(), normalised."""
    monkeypatch.setenv("LLM_LEDGER_EXPORTERS", " Prometheus:127.0.0.1:0 , ")
    assert llm_ledger.configure(log_dir=None).exporters == (ANY_PORT,)
    assert total(scrape(_url()), "llm_ledger_calls_total") >= 0


@pytest.mark.usefixtures("fresh_exporters")
def test_a_later_configure_keeps_the_exporters_it_does_not_name(sdk: Sdk, tmp_path: Path) -> None:
    """configure(exporters=[...]) at start-up, then configure(capture_content=True) elsewhere (a
    feature flag, a library's own set-up): /metrics keeps serving and counting the calls, and content
    is captured. The second call stopped the server and took the sink off (every setting it left out
    went back to its variable or default), so the service's metrics went dark without a word."""
    llm_ledger.configure(log_dir=tmp_path, exporters=[ANY_PORT])
    url = _url()
    settings = llm_ledger.configure(capture_content=True)
    assert settings.exporters == (ANY_PORT,)
    assert (settings.log_dir, settings.capture_content) == (tmp_path, True)
    before = total(scrape(url), "llm_ledger_calls_total", lens="kept")
    client = sdk(llm_ledger.get_monitor())
    with capture() as records, llm_ledger.lens("kept"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert total(scrape(url), "llm_ledger_calls_total", lens="kept") == before + 1
    assert records.calls[0]["content"]["messages"] == [{"role": "user", "content": "x"}]
    # a setting is turned off by naming it
    assert llm_ledger.configure(exporters=[]).exporters == ()
    with pytest.raises(OSError, match="Connection refused"):
        scrape(url)


@pytest.mark.usefixtures("fresh_exporters")
def test_exporters_none_turns_them_off_as_none_does_for_the_other_settings() -> None:
    """configure(exporters=None) means no exporter, as log_dir=None and budgets=None mean none."""
    llm_ledger.configure(log_dir=None, exporters=[ANY_PORT])
    url = _url()
    assert llm_ledger.configure(log_dir=None, exporters=None).exporters == ()
    with pytest.raises(OSError, match="Connection refused"):
        scrape(url)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["promethus"], r"unknown exporter 'promethus' in exporters; choose from otel, prometheus"),
        (["otel:4318"], r"'otel:4318' in exporters takes no port"),
        (["prometheus:http"], r"the port must be a number from 0 to 65535 \(.*; 0 binds a free port"),
        (["prometheus:70000"], r"the port must be a number from 0 to 65535"),
        (["prometheus:-1"], r"the port must be a number from 0 to 65535"),
        # prometheus:$PORT with the variable unset: an error, not a sink serving no /metrics
        (["prometheus:"], r"port is empty \(an unset variable in prometheus:\$PORT\?\); it must be a"),
        (["prometheus:127.0.0.1:"], r"the port is empty"),
        (["otel:"], r"'otel:' in exporters takes no port"),
        # names run together, as a shell user writes them
        (
            ["prometheus:9464 otel"],
            r"more than one exporter: separate them with commas, 'prometheus:9464,otel'",
        ),
        # one port at two addresses: one listener would hold the port and the other fail
        (
            ["prometheus:9464", "prometheus:127.0.0.1:9464"],
            r"prometheus:0.0.0.0:9464 and prometheus:127.0.0.1:9464 in exporters serve /metrics twice "
            r"on port 9464; keep one",
        ),
        (["otel; prometheus"], r"'otel; prometheus' in exporters is more than .* 'otel,prometheus'"),
        # a port is ASCII digits, as everywhere else: not what int() also reads
        (["prometheus:9_464"], r"'prometheus:9_464' in exporters: the port must be a number from 0"),
        (["prometheus:+0"], r"the port must be a number from 0 to 65535"),
        (["prometheus:\u0669\u0664\u0666\u0664"], r"the port must be a number from 0 to 65535"),
        # IPv6: in brackets, or unambiguous; a host that is none is named before any lookup
        (["prometheus:::1"], r"'::1' is an IPv6 address and no port; write .*prometheus:\[ADDRESS\]:PORT"),
        (["prometheus:[::1]"], r"'prometheus:\[::1\]' in exporters: the port is empty"),
        (["prometheus:[::1:9464"], r"'\[::1' is not a host name or IP address; write prometheus:PORT, "),
        (["prometheus:127.0.0.1:9464:9464"], r"'127.0.0.1:9464' is not a host name or IP address"),
        (["prometheus:\x1b[31m:9464"], r"'\\x1b\[31m' is not a host name or IP address"),
        ("prometheus", r"exporters must be a list of names"),
        ([9464], r"exporters must be names \(str\), got 9464"),
    ],
)
@pytest.mark.usefixtures("fresh_exporters")
def test_bad_exporter_names_are_config_errors(value: Any, message: str) -> None:
    """An unknown name, a port where none is taken or a bad port is a ConfigError listing the choices."""
    with pytest.raises(ConfigError, match=message):
        llm_ledger.configure(log_dir=None, exporters=value)


@pytest.mark.usefixtures("fresh_exporters")
def test_prometheus_with_a_port_includes_the_plain_sink() -> None:
    """``prometheus`` beside ``prometheus:PORT`` (in either order) is the one exporter: the sink is the
    server's, so the records are not counted twice."""
    spec = ANY_PORT
    assert llm_ledger.configure(log_dir=None, exporters=["prometheus", spec]).exporters == (spec,)
    assert llm_ledger.configure(log_dir=None, exporters=[spec, "prometheus"]).exporters == (spec,)


@pytest.mark.parametrize("port", ["9464", 70000, -1, True])
def test_start_metrics_server_refuses_a_port_that_is_not_one(port: Any) -> None:
    """``start_metrics_server()`` given a port that is not a whole number from 0 to 65535 (a string, a
    bool) says so, with the value, before binding anything."""
    with pytest.raises(ConfigError, match=f"port must be a whole number from 0 to 65535, got {port!r}"):
        start_metrics_server(port)


@pytest.mark.usefixtures("fresh_exporters")
def test_bad_environment_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error names the variable."""
    monkeypatch.setenv("LLM_LEDGER_EXPORTERS", "prometheus,statsd")
    with pytest.raises(ConfigError, match=r"unknown exporter 'statsd' in LLM_LEDGER_EXPORTERS"):
        llm_ledger.configure(log_dir=None)


@pytest.mark.usefixtures("fresh_exporters")
def test_missing_extra_and_busy_port_fail_at_configure_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Errors come from configure(), never from a call; the settings in force stay in force."""
    first = llm_ledger.configure(log_dir=tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="already in use"):
            llm_ledger.configure(log_dir=tmp_path / "other", exporters=[f"prometheus:127.0.0.1:{port}"])
    assert _config._settings == first
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setattr(_setup, "_default_sinks", {})
    with pytest.raises(ConfigError, match=r"pip install 'llm-ledger\[prometheus\]'"):
        llm_ledger.configure(log_dir=tmp_path, exporters=["prometheus"])
    assert _config._settings == first
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigError, match=r"pip install 'llm-ledger\[otel\]'"):
        llm_ledger.configure(log_dir=tmp_path, exporters=["otel"])
    assert _config._settings == first


class _Lens(str, enum.Enum):  # noqa: UP042 -- the (str, Enum) mixin is the case: StrEnum str()s to its value
    SUMMARY = "summary"


def test_a_lens_key_of_a_str_enum_is_its_value_in_the_metrics_as_in_the_file(
    fake_openai: FakeOpenAI, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """``class Lens(str, Enum)`` keys: the file writes the value ("summary"), so the ``lens`` label says
    the same; it was str() of the member ("_Lens.SUMMARY"), and a plain "summary" run after it counted
    under that label too (equal keys)."""
    handler = llm_ledger.JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record, PrometheusSink(registry)])
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        for key in (_Lens.SUMMARY, "summary"):
            with monitor.lens(key):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
    handler.close()
    lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert {line["context"]["lens_key"] for line in lines} == {"summary"}
    runs = by_labels(exposed(registry), "llm_ledger_lens_runs_total", "lens", "status")
    assert runs[("summary", "ok")] == 2
