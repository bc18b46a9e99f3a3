"""A real ``prometheus`` server on loopback, for the dashboard test and ``python -m dashboards.render``.

``LocalPrometheus(binary, targets, workdir)`` writes a scrape configuration (every second, or each
job's interval), starts the server on a free port, and answers PromQL through its HTTP API
(``query``, ``query_range``). ``targets`` may also map job names to targets: Prometheus scrapes its
first targets about five seconds after it starts (its scrape manager applies discovered targets on
a fixed 5 s tick, whatever the scrape interval), so the tests start one server per session for
several jobs, each test's metrics server on a port reserved up front.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LocalPrometheus", "free_port", "wait"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalPrometheus:
    """``prometheus`` scraping ``targets`` (``host:port``) every second as job ``job``, or each job of
    a ``{job: targets}`` mapping, every ``intervals[job]`` (a Prometheus duration: ``200ms``) if given."""

    def __init__(
        self,
        binary: str,
        targets: Sequence[str] | Mapping[str, Sequence[str]],
        workdir: Path,
        *,
        job: str = "lens_app",
        intervals: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        jobs = targets if isinstance(targets, Mapping) else {job: targets}
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            + "".join(
                f"  - job_name: {name}\n"
                f"    scrape_interval: {(intervals or {}).get(name, '1s')}\n"
                f"    static_configs: [{{targets: {json.dumps(list(hosts))}}}]\n"
                for name, hosts in jobs.items()
            )
        )
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                "--web.enable-admin-api",  # delete(): loopback only
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait("Prometheus to start", lambda: urllib.request.urlopen(f"{self.url}/-/ready").status == 200)
        except BaseException:
            self.close()
            raise

    def _api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        if answer["status"] != "success":
            raise RuntimeError(f"Prometheus answered {answer!r} to {params!r}")
        return answer["data"]["result"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (or at the Unix time ``at``):
        ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        when = {} if at is None else {"time": f"{at:.3f}"}
        result: list[dict[str, Any]] = self._api("query", query=expr, **when)
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """``expr`` over ``[start, end]``: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""
        result: list[dict[str, Any]] = self._api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )
        return result

    def delete(self, selector: str) -> None:
        """Delete every sample so far of the series ``selector`` matches (a job's earlier data); their
        later samples stay (without ``end``, Prometheus would hide those too)."""
        query = urllib.parse.urlencode({"match[]": selector, "end": f"{time.time():.3f}"})
        url = f"{self.url}/api/v1/admin/tsdb/delete_series?{query}"
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()

    def errors(self) -> list[str]:
        """The error and fatal lines of the server's log."""
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text()
        return [line for line in text.splitlines() if re.search(r"level=(error|fatal)", line)]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> LocalPrometheus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
