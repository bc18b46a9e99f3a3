"""docs/exporters.md's batch-job recipe: a job that pushes its metrics when it ends (Pushgateway,
node_exporter's textfile collector) carries every call's values, not the first-scrape zeros."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm_ledger.testing import FakeOpenAI
from tests import warm_python
from tests.exporter_helpers import _hold_a_port, samples, total
from tests.test_exp_docs_recipes import recipe

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK


def _binary(name: str) -> str:
    """Debian's ``name`` (.ci/run installs it): skipped without it, failed when CI is set."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {name} is missing: .ci/run installs Debian's {name}")
        pytest.skip(f"no {name} binary (apt-get install {name})")
    return path


@contextmanager
def _pushgateway(workdir: Path) -> Iterator[str]:
    """A real Pushgateway (Debian's prometheus-pushgateway) on a loopback port; yields its address."""
    binary = _binary("prometheus-pushgateway")
    held = _hold_a_port()
    address = f"127.0.0.1:{held.getsockname()[1]}"
    held.close()
    log = (workdir / "pushgateway.log").open("w")
    process = subprocess.Popen([binary, f"--web.listen-address={address}"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((workdir / "pushgateway.log").read_text()) from None
                time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_a_batch_job_pushes_its_calls_after_flush_metrics(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """The "Batch jobs" block, in a process of its own with LLM_LEDGER_EXPORTERS unset: the job's two
    calls in a lens (one streamed), then flush_metrics(), then push_to_gateway() to a real Pushgateway
    and write_to_textfile(): what the Pushgateway serves and the textfile (checked by promtool, as
    node_exporter's textfile collector reads it) carry the two calls, their tokens, cost and lens run."""
    promtool = _binary("promtool")
    textfile = tmp_path / "nightly.prom"
    job = textwrap.dedent(
        f"""
        import openai

        def run_the_nightly_job():
            with llm_ledger.instrument(
                openai.OpenAI(api_key="sk-test", base_url={fake_openai.base_url!r}, max_retries=0)
            ) as client, llm_ledger.lens("nightly"):
                hi = [{{"role": "user", "content": "hi"}}]
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
                for _ in client.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True):
                    pass
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "PROMETHEUS_"))}
    with _pushgateway(tmp_path) as address:
        code = recipe("### Batch jobs").replace("pushgateway:9091", address)
        code = code.replace("/var/lib/node_exporter/nightly.prom", str(textfile))
        done = warm_python.run(
            [sys.executable, "-c", job + code],
            env={**env, "LLM_LEDGER_LOG_DIR": "off"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            pushed = response.read().decode()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True, timeout=60
    )
    assert "error" not in (checked.stdout + checked.stderr).lower(), checked.stdout + checked.stderr
    for found in samples(pushed), samples(textfile.read_text()):
        assert total(found, "llm_ledger_calls_total", lens="nightly", status="ok") == 2
        assert total(found, "llm_ledger_tokens_total", lens="nightly", token_type="output") > 0
        assert total(found, "llm_ledger_cost_usd_total", lens="nightly") > 0
        assert total(found, "llm_ledger_time_to_first_token_seconds_count", lens="nightly") == 1
        assert total(found, "llm_ledger_lens_runs_total", lens="nightly", status="ok") == 1
