"""`llm-ledger diff`'s warnings about the reports themselves, as a reviewer reads them on a PR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_ledger._cli import main as cli_main

pytestmark = pytest.mark.sdk_independent


def report(tests: dict[str, int], lenses: dict[str, int]) -> dict[str, Any]:
    """A report whose tests made these numbers of calls, and whose lenses ran once with these calls."""
    entries = {name: {"runs": 1, "api_calls": calls, "total_tokens": 10 * calls, "errors": 0,
                      "cost_usd": 0.0001 * calls}
               for name, calls in lenses.items()}  # fmt: skip
    return {
        "schema": "llm-ledger-report",
        "version": 1,
        "lenses": entries,
        "tests": {
            nodeid: {"api_calls": calls, "lens_runs": min(calls, 1)} for nodeid, calls in tests.items()
        },
        "total": {
            "api_calls": sum(tests.values()),
            "total_tokens": 10 * sum(tests.values()),
            "cost_usd": 0.0001 * sum(tests.values()),
            "errors": 0,
        },
        "failed_tests": [],
        "exit_status": 0,
        "usage": [],
    }


def test_the_tests_that_stopped_calling_are_named_and_tests_that_never_called_are_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report lists every test that ran, calls or not. The warning about base tests that made no
    call in the head names a test whose call is gone (its lens reads as removed), and not a test that
    never called the API and was renamed in the pull request."""
    base = report({"tests/test_app.py::test_tags": 1, "tests/test_util.py::test_parse": 0}, {"tags": 1})
    head = report({"tests/test_app.py::test_tags": 0, "tests/test_util.py::test_parse_dates": 0}, {})
    for name, data in (("base", base), ("head", head)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))

    assert cli_main(["diff", str(tmp_path / "base.json"), str(tmp_path / "head.json"), "--format=json"]) == 0

    (flag,) = json.loads(capsys.readouterr().out)["flags"]
    assert flag.startswith(
        f"1 test(s) of the base report made no call in the head report ({tmp_path / 'head.json'}): "
        "`tests/test_app.py::test_tags` (not run:"
    )
