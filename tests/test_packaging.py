"""What a production install needs, what ships with it, and the plugin without its extra."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import llm_ledger.testing
from pytest_llm_ledger import LedgerRecords
from tests.plugin_helpers import run, write_project

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower()


def test_a_production_install_needs_no_vcrpy_nor_pytest() -> None:
    """vcrpy and pytest are in the pytest extra, not in the dependencies. The extra brings
    pytest-asyncio too: the README's CI test is an asyncio test."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"vcrpy", "pytest"}.isdisjoint(_name(d) for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"vcrpy", "pytest", "pytest-asyncio"} <= {_name(d) for d in extras["pytest"]}


def test_only_the_extras_users_install_ship_and_the_makefile_installs_them_all() -> None:
    """The tools and libraries only the suite needs are dependency groups, which stay out of the
    wheel's metadata (`pip install llm-ledger[dev]` offers nothing); `make` installs every extra
    beside the dev group, so the suite runs what users install."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    assert extras == {"pytest", "prometheus", "otel"}
    groups = set(pyproject["dependency-groups"])
    assert {"dev", "compat-openai1", "compat-openai2", "compat-openai3"} <= groups
    made = re.search(r"^EXTRAS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert made is not None and set(made.group(1).split(",")) == extras


def test_importing_the_package_loads_no_asyncio_nor_price_data() -> None:
    """A process pays at import only for what every use needs: asyncio comes with an async client,
    genai-prices' data with the first priced call (or configure()'s thread)."""
    code = "import sys, llm_ledger; print(sorted({'asyncio', 'genai_prices.data'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n", done.stdout


def test_the_fake_server_ships_with_the_package() -> None:
    """llm_ledger.testing exports the loopback server that serves the real SDK."""
    assert {"FakeOpenAI", "RecordedRequest"} <= set(llm_ledger.testing.__all__)
    assert llm_ledger.testing.FakeOpenAI.__module__ == "llm_ledger._fake_server"


def test_the_fixture_type_is_public(llm_ledger: LedgerRecords) -> None:
    """The llm_ledger fixture's type is pytest_llm_ledger.LedgerRecords, the name a user's test is
    annotated with. ``make test`` runs mypy --strict over this file, so the annotation is checked as a
    user's would be: the ignore below must be used (it is, since nodeid is a str), so the type is not Any."""
    import pytest_llm_ledger

    calls: int = llm_ledger.api_calls
    cost: float = llm_ledger.cost_usd
    summaries: list[dict[str, object]] = llm_ledger.lens("summary")
    wrong: int = llm_ledger.nodeid  # type: ignore[assignment]
    assert calls == 0 and cost == 0 and not summaries and wrong
    assert pytest_llm_ledger.__all__ == ["LedgerRecords"]
    assert type(llm_ledger) is LedgerRecords  # (after the lines above: it narrows the type for mypy)


def test_the_plugin_imports_only_the_public_modules_of_llm_ledger() -> None:
    """pytest_llm_ledger uses llm_ledger's public API alone (no ``_private`` module or name), as a user's
    own plugin would: what it needs is public, and llm_ledger's private modules stay free to change."""
    private = []
    for path in sorted((ROOT / "pytest_llm_ledger").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            private += [
                f"{path.name}: {name}"
                for name in names
                if name.split(".")[0] == "llm_ledger"
                and any(part.startswith("_") and not part.startswith("__") for part in name.split("."))
            ]
    assert private == []


@pytest.mark.parametrize("package", ["llm_ledger", "pytest_llm_ledger"])
def test_pyright_knows_the_type_of_everything_each_package_exports(package: str) -> None:
    """What Pylance shows users: ``pyright --verifytypes`` scores each package 100% typed, every symbol
    reachable from its public API declared rather than inferred (other packages' types left out)."""
    # --outputjson: pyright-python does not ask PyPI for a newer version then; pyright finds the packages
    # and their dependencies through the first `python` on PATH, this venv's
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYRIGHT_PYTHON")}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "pyright", "--verifytypes", package, "--ignoreexternal", "--outputjson"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    report = json.loads(done.stdout)
    completeness = report["typeCompleteness"]
    errors = [diagnostic["message"] for diagnostic in report["generalDiagnostics"]] + [
        f"{symbol['name']}: {diagnostic['message']}"
        for symbol in completeness["symbols"]
        for diagnostic in symbol["diagnostics"]
        if diagnostic["severity"] == "error"
    ]
    assert completeness["completenessScore"] == 1 and not errors, "\n".join(errors)


NO_EXTRA_TESTS = """
import pytest


def test_plain():
    assert True


@pytest.mark.llm
def test_marked():
    assert True
"""


def test_without_vcrpy_only_marked_tests_fail_with_one_message(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No vcrpy: pytest starts, unmarked tests pass, each llm test fails saying what to install."""
    monkeypatch.setitem(sys.modules, "vcr", None)  # `import vcr` now raises ImportError
    monkeypatch.setitem(sys.modules, "vcr.patch", None)
    write_project(pytester, NO_EXTRA_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)  # failed in its setup: the body never ran
    out = result.stdout.str()
    assert re.search(
        r"llm-ledger: vcrpy cannot be imported \(.*\); tests marked llm replay from cassettes, which needs "
        r"the plugin's extra: pip install 'llm-ledger\[pytest\]'",
        out,
    )
    assert "Traceback" not in out and "INTERNALERROR" not in out and "ImportError:" not in out


UNRELATED_TESTS = """
import os

import openai


def test_an_unrelated_suite_calls_its_own_openai_server():
    assert "OPENAI_API_KEY" not in os.environ
    with openai.OpenAI(base_url=os.environ["MY_SERVER"], api_key="mine") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
"""


def test_without_vcrpy_the_plugin_leaves_unmarked_tests_and_the_environment_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake_openai: llm_ledger.testing.FakeOpenAI
) -> None:
    """A production install (no pytest extra) in a project whose own suite calls an OpenAI-compatible
    server: the plugin sets no placeholder OPENAI_API_KEY and refuses no request (docs/CI.md: it
    changes nothing; only tests marked llm fail, saying what to install)."""
    monkeypatch.setitem(sys.modules, "vcr", None)
    monkeypatch.setitem(sys.modules, "vcr.patch", None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_SERVER", fake_openai.base_url)
    # no llm_allowed_hosts: with the extra, the plugin would refuse the loopback server's requests
    pytester.makefile(
        ".ini", pytest="[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_unrelated=UNRELATED_TESTS)
    run(pytester).assert_outcomes(passed=1)
    assert len(fake_openai.requests) == 1


def test_the_cassettes_command_without_the_extra_says_what_to_install() -> None:
    """`llm-ledger cassettes` in a production install (no pytest): one line naming the extra, exit 2,
    no traceback."""
    code = (
        "import sys; sys.modules['pytest'] = None; "
        "from llm_ledger._cli import main; sys.exit(main(['cassettes']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("llm-ledger cassettes: error: ")
    assert "pip install 'llm-ledger[pytest]'" in done.stderr and "Traceback" not in done.stderr


def _wheel(source: Path, into: Path) -> Path:
    """The wheel pip builds from ``source`` (the repository, or an sdist) into ``into``."""
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(into)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True, cwd=into.parent)
    (wheel,) = into.glob("llm_ledger-*.whl")
    return wheel


def test_the_wheel_ships_both_packages_typed_with_their_entry_points_and_license(tmp_path: Path) -> None:
    """The wheel a user installs, built as pip builds it (hatchling, from the dev group): every module
    git tracks in both packages and nothing else, a ``py.typed`` in each, the pytest plugin and the
    console script, the MIT text in .dist-info/licenses, and metadata PyPI renders."""
    wheel = _wheel(ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        entry_points, metadata, license_text = (
            archive.read(f"{info}/{name}").decode()
            for name in ("entry_points.txt", "METADATA", "licenses/LICENSE")
        )
    tracked = subprocess.run(
        ["git", "ls-files", "llm_ledger", "pytest_llm_ledger"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    packaged = {name for name in names if not name.startswith(info)}
    assert packaged == set(tracked), packaged ^ set(tracked)
    assert {"llm_ledger/py.typed", "pytest_llm_ledger/py.typed"} <= packaged
    assert "[pytest11]\nllm_ledger = pytest_llm_ledger.plugin" in entry_points
    assert "llm-ledger = llm_ledger._cli:main" in entry_points
    assert (
        license_text.startswith("MIT License\n")
        and "Permission is hereby granted, free of charge" in license_text
    )
    for line in ("License-Expression: MIT", "License-File: LICENSE", "Requires-Python: >=3.11"):
        assert line in metadata.splitlines(), line
    assert "Description-Content-Type: text/markdown" in metadata


def test_the_sdist_ships_what_builds_and_tests_the_package_and_builds_the_same_wheel(tmp_path: Path) -> None:
    """The sdist, built as `python -m build` builds it: every file git tracks (the suite reads the
    docs, examples, bench, dashboards and cassettes) but the CI entry point, and PKG-INFO; pip builds
    from it a wheel holding the same files as the repository's."""
    build = f"from hatchling.build import build_sdist; print(build_sdist({str(tmp_path)!r}))"
    done = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, check=True, cwd=ROOT)
    sdist = tmp_path / done.stdout.strip()
    with tarfile.open(sdist) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        shipped = {name for name in shipped if archive.getmember(f"{sdist.name[:-7]}/{name}").isfile()}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    expected = {name for name in tracked.stdout.split() if not name.startswith(".ci/")} | {"PKG-INFO"}
    assert shipped == expected, shipped ^ expected
    with zipfile.ZipFile(_wheel(sdist, tmp_path / "wheel")) as archive:
        packaged = {name for name in archive.namelist() if ".dist-info/" not in name}
    assert packaged == {
        name for name in expected if name.split("/")[0] in {"llm_ledger", "pytest_llm_ledger"}
    }
