"""What a new contributor meets first: the Makefile's set-up of .venv (a fresh, moved, interrupted or
wrong-Python clone), `make clean`, and the suite run from a shell that exports settings of its own.

make runs for real on a copy of the Makefile; `python3` is a stand-in whose `-m venv` makes a venv
whose pip only logs what it was asked (no network, no install), everything else the real Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.sdk_independent,  # make test-compat leaves it to the newest SDK
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make, as the README says"),
]

MAKEFILE = Path(__file__).parent.parent / "Makefile"

VENV_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m pip" ]; then echo "pip $*" >> "{log}"; exit 0; fi
exec "{real}" "$@"
"""
PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    echo "venv $*" >> "{log}"
    for dir; do :; done
    mkdir -p "$dir/bin" && cp "{venv_python}" "$dir/bin/python"
    exit 0
fi
exec "{real}" "$@"
"""


def _script(path: Path, text: str, **names: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(real=sys.executable, **names))
    path.chmod(0o755)
    return path


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A directory with the Makefile and a pyproject.toml: what the set-up reads."""
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(MAKEFILE, repo / "Makefile")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return repo


def _make(repo: Path, python: Path, target: str = ".venv/.installed") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "-C", str(repo), target, f"PYTHON={python}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _stand_in(tmp_path: Path) -> tuple[Path, Path]:
    """The stand-in python3 and the log its venv and pip write."""
    log = tmp_path / "log"
    venv_python = _script(tmp_path / "venv-python", VENV_PYTHON, log=log)
    return _script(tmp_path / "python3", PYTHON, log=log, venv_python=venv_python), log


@pytest.mark.parametrize("venv", [".venv", ".venv-compat/openai1"])
def test_a_venv_left_without_pip_by_an_interrupted_set_up_is_made_again(
    clone: Path, tmp_path: Path, venv: str
) -> None:
    """Ctrl-C while `python3 -m venv` installs pip leaves a Python and no pip: the next make repairs it
    (the test venv, and each of make test-compat's)."""
    python, log = _stand_in(tmp_path)
    _script(clone / venv / "bin/python", '#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 1\nexec "{real}" "$@"\n')
    result = _make(clone, python, f"{venv}/.installed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"venv -m venv --clear {venv}" in log.read_text()
    assert "pip -m pip install --quiet -e .[pytest,prometheus,otel] --group dev" in log.read_text()


def test_a_moved_clone_gets_a_venv_of_its_own(clone: Path, tmp_path: Path) -> None:
    """A venv's scripts start the Python of the directory it was made in: a moved clone remakes it."""
    python, log = _stand_in(tmp_path)
    assert _make(clone, python).returncode == 0
    assert _make(clone, python).stdout.count("is up to date") == 1  # made once, then left alone
    moved = clone.rename(tmp_path / "moved")
    log.unlink()
    result = _make(moved, python)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f".venv was made in {clone}: recreating it" in result.stdout
    assert "pip -m pip install --quiet -e .[pytest,prometheus,otel] --group dev" in log.read_text()
    assert (moved / ".venv/.installed").read_text().strip() == str(moved)


def test_a_python_older_than_3_11_is_refused_before_making_anything(clone: Path, tmp_path: Path) -> None:
    """An old python3 on PATH gets the version needed and how to pick another, and no half-made venv."""
    old = _script(tmp_path / "python3.10", '#!/bin/sh\n[ "$1" = "-c" ] && echo 3.10 && exit 0\nexit 1\n')
    result = _make(clone, old)
    assert result.returncode != 0
    expected = f"llm-ledger needs Python 3.11 or newer; {old} is 3.10: run make PYTHON=python3.12"
    assert expected in result.stdout
    assert not (clone / ".venv").exists()


def test_clean_removes_the_demo_s_database_with_its_log(clone: Path, tmp_path: Path) -> None:
    """After `make clean` a new `make demo` starts both afresh: `--costs` (the database) keeps summing
    what `llm-ledger report logs` sums, as docs/REPORTING.md says, instead of counting older runs too."""
    python, _ = _stand_in(tmp_path)
    (clone / "logs").mkdir()
    (clone / "logs/llm_calls.jsonl").write_text("{}\n")
    (clone / "lens_app.sqlite3").write_bytes(b"SQLite format 3\x00")
    assert _make(clone, python, "clean").returncode == 0
    assert not (clone / "logs").exists()
    assert not (clone / "lens_app.sqlite3").exists()


def test_the_suite_ignores_the_settings_a_contributor_s_shell_exports() -> None:
    """`make test` in a shell that exports an application's llm-ledger settings or the SDK's base URL
    (a price file that is not there, a proxy) passes as on a clean machine: in-process and subprocess
    tests alike."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"LLM_LEDGER_PRICE_FILE": "/nonexistent/prices.yaml", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    tests = [
        "tests/test_ledger_config.py::test_records_are_written_at_interpreter_exit",
        "tests/test_plugin_anywhere.py::test_recording_against_openai_itself_gets_no_placeholder_key",
    ]
    # without the plugins neither test uses (hypothesis' and anyio's: about half a CPU-second to load)
    plugins = ["-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:hypothesispytest", "-p", "no:anyio"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, *tests],
        cwd=MAKEFILE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout
