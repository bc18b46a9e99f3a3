"""Record a library's inner test through the plugin against the loopback server, then replay it offline."""

from __future__ import annotations

import pytest

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import load_yaml, run, write_project


def record_then_replay(pytester: pytest.Pytester, source: str, *args: str, calls: int = 1) -> None:
    """``source`` (one test module, its tests marked llm) passes recording, then replay offline;
    ``args`` go to both pytest runs."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        with FakeOpenAI() as server:
            monkeypatch.setenv("LEDGER_TEST_BASE_URL", server.base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-test-integration-0123456789")
            write_project(pytester, source)
            run(pytester, "--llm-record-mode=once", *args).assert_outcomes(passed=1)
            assert len(server.requests) == calls
        cassettes = list((pytester.path / "cassettes").rglob("*.yaml"))
        assert len(cassettes) == 1
        assert len(load_yaml(cassettes[0])["interactions"]) == calls
        monkeypatch.delenv("OPENAI_API_KEY")  # as in CI: replay needs no key and no server
        result = run(pytester, *args)
        result.assert_outcomes(passed=1)
    finally:
        monkeypatch.undo()
