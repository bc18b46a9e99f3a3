"""Shared by the exporter tests: a mixed workload through the real SDK, reading Prometheus text, and
an OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import gzip
import http.server
import random
import socket
import textwrap
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import openai
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

import llm_ledger
from dashboards import local_prometheus
from dashboards.local_prometheus import LocalPrometheus
from llm_ledger.exporters._prometheus import shutdown_now
from llm_ledger.testing import FakeOpenAI
from tests.conftest import FAKE_KEY

UNPRICED_MODEL = "acme-local-7b"
# what a test waits for a scrape, a gunicorn worker or a /metrics answer: only a guard against one that
# never comes, generous for a loaded host (load 30 on 2 cores: a scrape or a worker's start can take
# over 30 s)
WAIT_S = 120.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# a multiprocess worker: feeds the records of the JSONL file argv[1] to a PrometheusSink (its
# keyword arguments as JSON in argv[2], if any)
PROMETHEUS_WORKER = textwrap.dedent(
    """
    import json, sys
    from llm_ledger.exporters import PrometheusSink
    sink = PrometheusSink(**json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    for line in open(sys.argv[1]):
        sink(json.loads(line))
    """
)


def hold_then_fork(lock: str) -> str:
    """Script lines that fork (the child's ``pid``) while a thread holds ``lock``, a sink's lock, until
    the event ``leave`` is set (see AWAIT_FORKED_CHILD): a pool started by a busy threaded service."""
    return textwrap.dedent(
        f"""
        inside, leave = threading.Event(), threading.Event()

        def busy():
            with {lock}:
                inside.set()
                leave.wait()

        threading.Thread(target=busy).start()
        inside.wait()
        pid = os.fork()
        """
    )


# the end of a script that forked while a thread of its own holds a sink's lock (its events ``leave``
# and the child's ``pid``): the thread lets go, and the script exits as the child did, unless the
# child hangs in the sink
AWAIT_FORKED_CHILD = """
leave.set()
for _ in range(200):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit("the child's call hangs in the sink")
"""

# the pre-fork master: serves the multiprocess directory's metrics (on port argv[1], if given), prints
# its port, stops at EOF
METRICS_SERVER = textwrap.dedent(
    """
    import sys
    from llm_ledger.exporters import start_metrics_server
    server = start_metrics_server(int(sys.argv[1]) if len(sys.argv) > 1 else 0, "127.0.0.1")
    print(server.server_port, flush=True)
    sys.stdin.read()
    """
)


# one job per test that has the session's Prometheus scrape it: each its own metrics port and series
PROMETHEUS_JOBS = (
    # test_exporters_dashboard
    *("every_panel", "first_calls", "anomaly", "budget", "latency", "token_types", "render"),
    "multiprocess",
    "service_tiers",
)
# A scrape must answer within its interval (Prometheus' scrape timeout is at most the interval), or
# Prometheus drops it: a series whose first scrape (its 0) is dropped is then first seen at its value,
# and increase() misses its first calls, which the tests assert it counts. Most tests serve their
# metrics from the test's own process, whose thread making SDK calls holds the GIL from the serving
# one: a scrape of a few series then took up to 0.3 s on a loaded host (1 in 50 of 200 ms scrapes
# failed), so every job has a second; the render job keeps 500 ms (its assertions do not rest on a
# first zero: its demo rounds call every lens more than once)
SCRAPE_INTERVALS = {job: "500ms" if job == "render" else "1s" for job in PROMETHEUS_JOBS}


def _hold_a_port() -> socket.socket:
    """A socket bound (not listening) to a free loopback port under 32768, where Linux picks no local
    port of an outgoing connection: no one else takes the port while its test has not started."""
    for port in random.sample(range(20_000, 32_768), 200):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        return sock
    raise RuntimeError("no free loopback port between 20000 and 32767")


class SharedPrometheus:
    """A real Prometheus scraping every job of PROMETHEUS_JOBS, each a port reserved up front (so that
    the ~5 s Prometheus takes to scrape its first targets is paid once, early): ``port(job)`` lets
    the port go for the test that serves its metrics there; ``server`` answers PromQL."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self._held = {job: _hold_a_port() for job in PROMETHEUS_JOBS}
        self._ports: dict[str, int] = {job: sock.getsockname()[1] for job, sock in self._held.items()}
        targets = {job: [f"127.0.0.1:{port}"] for job, port in self._ports.items()}
        try:
            self.server = LocalPrometheus(binary, targets, workdir, intervals=SCRAPE_INTERVALS)
        except BaseException:
            self.close()
            raise

    def port(self, job: str) -> int:
        """``job``'s port, free for its test. A job's series are its test's alone: a test run again in
        the session (pytest-rerunfailures' --reruns, pytest-repeat's --count) gets the same port, its
        job's earlier series deleted first."""
        sock = self._held.pop(job, None)
        if sock is None:
            self.server.delete(f'{{job="{job}"}}')
            return self._ports[job]
        sock.close()
        return self._ports[job]

    def close(self) -> None:
        for sock in self._held.values():
            sock.close()
        if hasattr(self, "server"):
            self.server.close()

    def __enter__(self) -> SharedPrometheus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def workload(monitor: llm_ledger.LLMCallMonitor, server: FakeOpenAI, *, lens_prefix: str = "") -> None:
    """Every operation once or more: chat, a stream, responses, embeddings, a failed call, an
    unpriced model; inside two lenses and outside any; request parameters beside the defaults."""
    client = monitor.instrument(openai.OpenAI(api_key=FAKE_KEY, base_url=server.base_url, max_retries=0))
    hi: Any = [{"role": "user", "content": "hello there, summarise this"}]
    with (
        llm_ledger.track_llm_call(user_id="user-42"),
        monitor.lens(lens_prefix + "summary", source_id="src-1"),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        client.chat.completions.create(
            model="gpt-4o-mini", messages=hi, extra_headers={"x-fake-cached-tokens": "4"},
            seed=7, top_p=0.9, frequency_penalty=0.1, presence_penalty=0, reasoning_effort="low",
        )  # fmt: skip
        stream = client.chat.completions.create(
            model="gpt-4o", messages=hi, stream=True, n=1, response_format={"type": "json_object"}
        )
        for _ in stream:
            pass
    with monitor.lens(lens_prefix + "research", source_id="src-2"):
        client.responses.create(
            model="o3-mini", input="think", extra_headers={"x-fake-reasoning-tokens": "7"},
            reasoning={"effort": "high"}, text={"format": {"type": "text"}},
        )  # fmt: skip
        try:
            client.chat.completions.create(
                model="gpt-4o", messages=hi, extra_headers={"x-fake-status": "500"}
            )
        except openai.InternalServerError:
            pass
        client.chat.completions.create(model=UNPRICED_MODEL, messages=hi)
    client.embeddings.create(model="text-embedding-3-small", input=["a", "bb"], dimensions=16)
    client.close()


def samples(text: str) -> Samples:
    """Prometheus text exposition read with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def scrape(url: str, *, settled: bool = True) -> Samples:
    """``/metrics`` at ``url``; ``settled``: the second of two scrapes, since a new series shows 0 in
    the first scrape that sees it and its values from the next one (so that rate() counts them). The
    timeout is a loaded host's (a gunicorn master merging its workers' files at load 8 took over 10 s)."""
    for _ in range(2 if settled else 1):
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            text = response.read().decode()
    return samples(text)


def wait(what: str, check: Callable[[], bool]) -> None:
    """``dashboards.local_prometheus.wait()``, for ``WAIT_S`` seconds."""
    local_prometheus.wait(what, check, WAIT_S)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def label_names(found: Samples, name: str) -> set[frozenset[str]]:
    return {frozenset(k for k, _ in ls) for (n, ls) in found if n == name}


def by_labels(found: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (n, ls), v in found.items():
        if n == name:
            d = dict(ls)
            out[tuple(d[k] for k in keys)] += v
    return dict(out)


class Receiver(http.server.ThreadingHTTPServer):
    """Collects OTLP/HTTP protobuf requests (and Pushgateway pushes) by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    def shutdown(self) -> None:
        """Stops ``serve_forever`` now, not when its loop next looks (up to half a second later)."""
        shutdown_now(self)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST  # prometheus-client's push_to_gateway (a Pushgateway stand-in)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def metric_points(reader: Any) -> dict[str, list[Any]]:
    """An OpenTelemetry metric reader's data points now, by metric name (an ``InMemoryMetricReader``)."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def attribute_value(value: AnyValue) -> Any:
    """An OTLP attribute's value as Python (arrays as tuples)."""
    kind = value.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return tuple(attribute_value(v) for v in value.array_value.values)
    return getattr(value, kind)
