"""``llm-ledger cassettes`` when pytest cannot collect the tests: pytest's message, exit 2, no pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugin_helpers import INI, cli

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

# the child collects without hypothesis' and anyio's plugins (their imports cost each collection)
PROJECT_INI = INI + "addopts = -p no:hypothesispytest -p no:anyio\n"


def _orphan(pytester: pytest.Pytester, tests: str) -> Path:
    """A project whose one test module is ``tests``, and a cassette no test owns."""
    pytester.makefile(".ini", pytest=PROJECT_INI)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_app.py").write_text(tests)
    orphan = pytester.path / "cassettes" / "tests" / "test_gone" / "test_renamed.yaml"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("interactions: []\n")
    return orphan


@pytest.mark.parametrize(
    ("tests", "pytest_args", "said"),
    [
        ("def test_app(:\n    pass\n", [], "SyntaxError"),
        ("def test_app(): pass\n", ["--", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
    ids=["syntax error", "unknown option"],
)
def test_a_failed_collection_is_an_error_naming_it_and_prunes_nothing(
    pytester: pytest.Pytester,
    capsys: pytest.CaptureFixture[str],
    tests: str,
    pytest_args: list[str],
    said: str,
) -> None:
    """A test file pytest cannot import, or an option pytest does not know: pytest's own message, the
    command's error line, exit 2 with no traceback of its own, and ``--prune`` deletes no cassette."""
    orphan = _orphan(pytester, tests)
    done = cli(capsys, "cassettes", "--prune", *pytest_args)
    assert done.returncode == 2
    *shown, error = done.stderr.rstrip("\n").splitlines()
    assert said in "\n".join(shown)
    # pytest's message is just above: the error line points at it rather than at another command
    assert error.startswith("llm-ledger cassettes: error: pytest could not collect the tests (exit ")
    assert error.endswith("); its output above says why")
    assert "Traceback" not in done.stderr and "orphan" not in done.stdout
    assert orphan.exists()
