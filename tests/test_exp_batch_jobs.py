"""docs/exporters.md's batch-job recipe: a job that pushes its metrics when it ends (Pushgateway,
node_exporter's textfile collector) carries every call's values, not the first-scrape zeros."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from llm_ledger.testing import FakeOpenAI
from tests import warm_python
from tests.exporter_helpers import Receiver, samples, total
from tests.test_exp_docs_recipes import recipe

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK


def test_a_batch_job_pushes_its_calls_after_flush_metrics(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """The "Batch jobs" block, in a process of its own with LLM_LEDGER_EXPORTERS unset: the job's two
    calls in a lens (one streamed), then flush_metrics(), then push_to_gateway() to a loopback receiver and
    write_to_textfile(): both carry the two calls, their tokens, cost and the lens run."""
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
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
    code = recipe("### Batch jobs").replace("pushgateway:9091", f"127.0.0.1:{receiver.server_port}")
    code = code.replace("/var/lib/node_exporter/nightly.prom", str(textfile))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "PROMETHEUS_"))}
    try:
        done = warm_python.run(
            [sys.executable, "-c", job + code],
            env={**env, "LLM_LEDGER_LOG_DIR": "off"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert done.returncode == 0, done.stderr
    (pushed,) = receiver.bodies["/metrics/job/nightly-summaries"]
    for found in samples(pushed.decode()), samples(textfile.read_text()):
        assert total(found, "llm_ledger_calls_total", lens="nightly", status="ok") == 2
        assert total(found, "llm_ledger_tokens_total", lens="nightly", token_type="output") > 0
        assert total(found, "llm_ledger_cost_usd_total", lens="nightly") > 0
        assert total(found, "llm_ledger_time_to_first_token_seconds_count", lens="nightly") == 1
        assert total(found, "llm_ledger_lens_runs_total", lens="nightly", status="ok") == 1
