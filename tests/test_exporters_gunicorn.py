"""docs/exporters.md's multiprocess recipe under a real gunicorn: workers count, the master serves the sum."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_ledger.testing import FakeOpenAI
from tests.exporter_helpers import WAIT_S, scrape, total, wait

pytestmark = pytest.mark.sdk_independent

REPO = Path(__file__).resolve().parents[1]

APP = textwrap.dedent(
    """
    import os, time
    import openai, llm_ledger

    llm_ledger.configure()  # LLM_LEDGER_LOG_DIR, LLM_LEDGER_EXPORTERS=prometheus: gunicorn's environment
    client = llm_ledger.instrument(
        openai.OpenAI(api_key="sk-test", base_url=os.environ["FAKE_OPENAI_URL"], max_retries=0)
    )

    def app(environ, start_response):
        with llm_ledger.lens("web", source_id=environ["PATH_INFO"]):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        time.sleep(0.1)  # a sync worker serves one request at a time: concurrent ones reach the others
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    """
)


# a gunicorn.conf.py line that shows the INFO lines of llm_ledger.internal (the /metrics server's port)
SHOW_INFO = "import logging; logging.basicConfig(level=logging.INFO)\n"
# the first lines of each test's gunicorn.conf.py: the master imports the openai SDK once, and the workers
# it forks (two at start, another at each --max-requests replacement) start with it imported, as the
# suite's warm child Pythons do (tests/warm_python.py): importing it was most of a worker's start.
# llm_ledger and prometheus_client are imported by each worker's app as in production (the SDK
# imports neither). The master then freezes what it imported (as the warm Pythons' server does): a
# worker's exit no longer collects all of the SDK's objects
SDK_IMPORTED = "import gc, openai\ngc.freeze()\n"
SERVING = re.compile(r"llm-ledger: serving /metrics on http://127\.0\.0\.1:(\d+)/metrics")
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")  # gunicorn's own, for the app


def _documented_gunicorn_conf() -> str:
    """The gunicorn.conf.py of docs/exporters.md's multiprocess section, on a free loopback port (the
    server's start-up line says which)."""
    text = (REPO / "docs" / "exporters.md").read_text()
    after = text[text.index("e.g. in `gunicorn.conf.py`") :]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    assert "start_metrics_server(9464)" in code
    return SHOW_INFO + code.replace("start_metrics_server(9464)", "start_metrics_server(0, '127.0.0.1')")


@pytest.mark.parametrize("settings", ["environment", "raw_env"])
def test_gunicorn_workers_are_summed_by_the_masters_metrics_server(
    fake_openai: FakeOpenAI, tmp_path: Path, settings: str
) -> None:
    """Two gunicorn workers with LLM_LEDGER_EXPORTERS=prometheus and PROMETHEUS_MULTIPROC_DIR (in the
    environment gunicorn starts with, or in its raw_env setting, which gunicorn applies after reading
    gunicorn.conf.py), each replaced after 5 requests (--max-requests: 13 requests replace one at
    least, and about two, each worker's start importing llm_ledger anew); the documented
    when_ready/child_exit hooks: the master's /metrics counts every request's call and lens run once,
    whichever worker served it and whether it has exited since, and the JSONL file has each call once."""
    (tmp_path / "multiproc").mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"),
        "LLM_LEDGER_EXPORTERS": "prometheus",
        "LLM_LEDGER_LOG_DIR": str(tmp_path / "logs"),
    }
    conf = _documented_gunicorn_conf()
    if settings == "raw_env":
        conf += f"\nraw_env = {[f'{name}={value}' for name, value in env.items()]!r}\n"
        env = {}
    gunicorn = _gunicorn(fake_openai, tmp_path, conf, env, "--workers", "2", "--max-requests", "5")
    try:
        app_port, metrics_port = _port(gunicorn, LISTENING), _port(gunicorn, SERVING)
        _await(gunicorn, "the master's metrics server", metrics_port)
        _await(gunicorn, "a worker", app_port)  # its call counts too

        def get(i: int) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/doc-{i}", timeout=WAIT_S) as response:
                return str(response.read().decode())

        with ThreadPoolExecutor(6) as pool:
            pids = list(pool.map(get, range(12)))
        requests = 12 + 1
        found = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        output = gunicorn.stop()
    assert len(set(pids)) > 2, "no worker was replaced"
    assert total(found, "llm_ledger_calls_total", lens="web", status="ok") == requests, output
    assert total(found, "llm_ledger_lens_runs_total", lens="web", status="ok") == requests
    assert total(found, "llm_ledger_cost_usd_total", lens="web") > 0
    lines = (tmp_path / "logs" / "llm_calls.jsonl").read_text().splitlines()
    assert sum('"event":"llm_api_call"' in line for line in lines) == requests, output


def test_prometheus_client_imported_before_raw_env_is_applied_names_the_fix(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR in gunicorn's raw_env, prometheus_client imported at the top of
    gunicorn.conf.py (before gunicorn applies raw_env): the workers fail to boot, and their error
    says where to import it."""
    (tmp_path / "multiproc").mkdir()
    settings = [f"PROMETHEUS_MULTIPROC_DIR={tmp_path / 'multiproc'}", "LLM_LEDGER_EXPORTERS=prometheus"]
    conf = f"import prometheus_client\nraw_env = {settings!r}\n"
    gunicorn = _gunicorn(fake_openai, tmp_path, conf, {})
    output = gunicorn.stop(None)
    assert gunicorn.process.returncode != 0, output
    assert "Worker failed to boot" in output, output
    assert "was set after prometheus_client was imported" in output, output
    assert "with gunicorn's raw_env: import it in gunicorn.conf.py only inside a hook" in output, output


def test_preload_with_a_port_warns_that_the_workers_calls_are_not_served(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """gunicorn --preload runs configure() in the master, which then serves LLM_LEDGER_EXPORTERS=
    prometheus:PORT; the workers' calls never reach that /metrics: a worker says so, naming the fix."""
    env = {"LLM_LEDGER_EXPORTERS": "prometheus:127.0.0.1:0", "LLM_LEDGER_LOG_DIR": "off"}
    gunicorn = _gunicorn(fake_openai, tmp_path, SHOW_INFO, env, "--preload", "--workers", "2")
    try:
        app_port, metrics_port = _port(gunicorn, LISTENING), _port(gunicorn, SERVING)
        _await(gunicorn, "a worker", app_port)
        urllib.request.urlopen(f"http://127.0.0.1:{app_port}/again").read()
        found = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        output = gunicorn.stop()
    assert total(found, "llm_ledger_calls_total") == 0  # the master made no call
    warnings = [line for line in output.splitlines() if "no /metrics serves" in line]
    assert len(warnings) == len({line.split("pid ")[1].split()[0] for line in warnings}) >= 1, output
    assert "PROMETHEUS_MULTIPROC_DIR" in warnings[0] and "Multiprocess mode" in warnings[0], warnings


class _Gunicorn:
    """A gunicorn process and the lines of its output so far (read by a thread, so that waiting for a
    line never blocks past a timeout)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def exited(self, what: str) -> None:
        """Fail with gunicorn's output should it have stopped before ``what``."""
        if self.process.poll() is not None:
            self._reader.join(timeout=10)
            pytest.fail(f"gunicorn exited ({self.process.returncode}) before {what}:\n{''.join(self.lines)}")

    def stop(self, sig: signal.Signals | None = signal.SIGTERM) -> str:
        """Stop it (with ``sig``; None: wait for it to exit) and return its whole output."""
        if sig is not None:
            self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return "".join(self.lines)


def _port(gunicorn: _Gunicorn, line: re.Pattern[str]) -> int:
    """The port the master bound for the app or its /metrics server (port 0), as its start-up ``line``
    says (none is picked, freed, then bound: another process could take it meanwhile)."""

    def said() -> bool:
        gunicorn.exited(f"it logged {line.pattern!r}")
        return any(line.search(text) for text in list(gunicorn.lines))

    wait(f"gunicorn's line {line.pattern!r}", said)
    return next(int(m[1]) for text in gunicorn.lines if (m := line.search(text)))


def _await(gunicorn: _Gunicorn, what: str, port: int) -> None:
    """Wait for ``what`` to answer 200 on ``port``; should gunicorn stop first (a worker failed to
    boot, the port was taken), fail at once with its output rather than time out without it."""

    def answers() -> bool:
        gunicorn.exited(f"{what} answered")
        # no timeout: a request given up on and served later would count a call too many
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            return bool(response.status == 200)

    wait(what, answers)


def _gunicorn(
    fake_openai: FakeOpenAI, where: Path, conf: str, env: dict[str, str], *options: str
) -> _Gunicorn:
    """gunicorn serving APP on a free port of 127.0.0.1 (its LISTENING line says which) from ``where``,
    configured by ``conf`` (its gunicorn.conf.py), with ``env`` as its only ledger settings."""
    (where / "app.py").write_text(APP)
    (where / "gunicorn.conf.py").write_text(SDK_IMPORTED + conf)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "PROMETHEUS_"))}
    command = ["gunicorn", "--config", "gunicorn.conf.py", *options, "--bind", "127.0.0.1:0", "app:app"]
    return _Gunicorn(
        subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=where,
            env={**clean, **env, "FAKE_OPENAI_URL": fake_openai.base_url, "PYTHONPATH": str(where)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
