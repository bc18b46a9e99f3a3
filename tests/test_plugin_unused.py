"""A pytest run that uses nothing of the plugin loads none of its heavy parts.

The ``pytest11`` entry point loads the plugin in every pytest run of an environment with llm-ledger
installed, and pytest rewrites the assertions of every module of the distribution it imports (on each
run when bytecode is not written, as in many CI images). The cassette engine, vcrpy, the report
rendering and diff, the fake server and the SDK load only when a test or an option needs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

# what a run that marks no test llm and gives no --llm-* option must not import
UNUSED: tuple[str, ...] = (
    "vcr",
    "openai",
    "llm_ledger.report",
    "llm_ledger.analysis._aggregate",
    "llm_ledger.analysis._diff",
    "llm_ledger._fake_server",
    "pytest_llm_ledger._cassette",
    "pytest_llm_ledger._scrub",
)

# pytest in-process, then the names of every module loaded, to the file given
_RUN = """
import json, sys
import pytest
code = pytest.main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"exit": int(code), "modules": sorted(sys.modules)}, out)
"""


@pytest.mark.parametrize("args", [["--co"], []], ids=["collect-only", "run"])
def test_a_run_that_marks_no_test_llm_imports_no_cassette_engine_nor_report(
    tmp_path: Path, args: list[str]
) -> None:
    """Thirty unrelated tests, collected or run with the plugin on: the plugin is active (its guard
    imported httpx's transports), and nothing in UNUSED was imported."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    tests = "".join(f"def test_{n}():\n    assert {n} == {n}\n\n" for n in range(30))
    (project / "test_unrelated.py").write_text(tests, encoding="utf-8")
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # no other plugin (pytest-recording: vcrpy)
    result = tmp_path / "modules.json"
    command = [sys.executable, "-c", _RUN, str(result), "-q", "-p", "pytest_llm_ledger.plugin", *args]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("30 tests collected" if args else "30 passed") in done.stdout
    loaded = set(json.loads(result.read_text(encoding="utf-8"))["modules"])
    assert "pytest_llm_ledger.plugin" in loaded
    assert loaded & {"httpx", "httpx2"}  # the guard wraps the transports before test modules import
    assert [name for name in UNUSED if name in loaded] == []
