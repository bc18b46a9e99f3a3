"""The benchmark scripts still run: ``python -m bench --quick`` once, at tiny sizes (measures nothing).

Peers are optional: a peer not installed is a row saying so, never a failure of this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parent.parent


# the benchmark measures the stack it was built for, openai 3.x on httpx2 (its in-process
# MockTransport, its peers' instrumentations): it is not part of the SDK compatibility matrix
@pytest.mark.sdk3
def test_every_benchmark_section_runs_at_tiny_sizes(tmp_path: Path) -> None:
    """All seven sections (ten tables) run in one quick pass and write their tables and headline figures."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "bench",
            "--quick",
            "--report-lines",
            "300",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,  # a hang, not a slow run: a loaded 2-core machine takes minutes
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    titles = [table["title"] for table in result["tables"]]
    assert len(titles) == 10 and any("Peers" in t for t in titles) and any("Replay" in t for t in titles)
    assert sum("callgrind" in t for t in titles) == 2
    headline = result["headline"]
    assert any("call by call" in t for t in titles) and any("JSONL file alone" in t for t in titles)
    for key in (
        "ledger_added_us",
        "per_call_added_us",
        "file_caller_us_shipped",
        "lens_added_us",
        "chunk_us_asks",
        "replay_ratio_12",
        "report_lines_per_s",
        "exporter_added_us_prometheussink",
        "exporter_added_us_otelsink",
    ):
        assert isinstance(headline[key], float), key
    [peers] = [table for table in result["tables"] if "Peers" in table["title"]]
    names = {row["monitor"] for row in peers["rows"]}
    assert {"otel-openai-v2", "langfuse", "openllmetry", "langsmith"} <= names
    assert result["machine"]["packages"]["openai"]
    assert "| MockTransport | bare |" in proc.stdout
