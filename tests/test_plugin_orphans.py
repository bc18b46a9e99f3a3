"""Orphan cassettes (a test renamed or deleted): named by a run of the whole suite (a failure under
``--llm-strict``), listed and pruned by ``llm-ledger cassettes``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_helpers import (
    INI,
    cli,
    collect_in_process_fixture,
    no_key_fixture,
    recorded_fixture,
    run,
    server_fixture,
    with_key_fixture,
    write_project,
)

_FIXTURES = (collect_in_process_fixture, no_key_fixture, recorded_fixture, server_fixture, with_key_fixture)

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

TESTS = """
import pytest


@pytest.mark.llm
def test_kept():
    pass


def test_unmarked():
    pass
"""


# `llm-ledger cassettes` collects in a pytest of its own: without hypothesis' and anyio's plugins, as
# FAST_ARGS runs the sessions (these projects never use them, and they cost each collection imports)
PROJECT_INI = INI + "addopts = -p no:hypothesispytest -p no:anyio\nllm_cassette_keep = demo/*\n"


def cassettes(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(capsys, "cassettes", *args)


def _project(pytester: pytest.Pytester) -> tuple[Path, Path, Path]:
    write_project(pytester, TESTS)
    pytester.makefile(".ini", pytest=PROJECT_INI)
    owned = pytester.path / "cassettes" / "tests" / "test_app" / "test_kept.yaml"
    orphan = pytester.path / "cassettes" / "tests" / "test_gone" / "test_renamed.yaml"
    demo = pytester.path / "cassettes" / "demo" / "lens.yaml"
    for path in (orphan, demo):  # the owned one is never recorded: the test makes no call
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("interactions: []\n")
    return owned, orphan, demo


def test_a_whole_suite_run_names_orphans_and_strict_fails_on_them(pytester: pytest.Pytester) -> None:
    """A cassette no collected test owns is a notice naming it and the fix (a failure with
    --llm-strict); a run of a selection (-k, a path) cannot tell, so it says nothing."""
    _, orphan, _ = _project(pytester)

    result = run(pytester, "--llm-strict")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*1 cassette(s) belong to no collected test*test_renamed.yaml*llm-ledger cassettes --prune*"]
    )
    assert "lens.yaml" not in result.stdout.str()

    for selection in (["-k", "kept"], ["tests/test_app.py"]):
        selected = run(pytester, "--llm-strict", *selection)
        assert selected.ret == pytest.ExitCode.OK, selected.stdout.str()
        assert "no collected test" not in selected.stdout.str()
    assert orphan.exists()


@pytest.mark.usefixtures("collect_in_process")
def test_llm_ledger_cassettes_lists_and_prunes_orphans(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger cassettes`` lists the orphans (exit 1), and a cassette never recorded with why a
    test that makes no call has none (recording it writes nothing); ``--prune`` deletes the orphans and
    their empty folders (exit 0); owned and kept cassettes stay."""
    owned, orphan, demo = _project(pytester)

    listed = cassettes(capsys)
    assert listed.returncode == 1, listed.stderr
    assert "1 orphan cassette(s)" in listed.stdout and "test_renamed.yaml" in listed.stdout
    assert "never recorded: cassettes/tests/test_app/test_kept.yaml" in listed.stdout
    assert (
        "  (a test that sends no OpenAI request records no cassette: it needs no llm marker)\n"
        in listed.stdout
    )
    assert "lens.yaml" not in listed.stdout and orphan.exists()
    assert "delete them with `llm-ledger cassettes --prune`\n" in listed.stdout

    pruned = cassettes(capsys, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert not orphan.exists() and not orphan.parent.exists()
    assert demo.exists() and not owned.exists()
    assert cassettes(capsys).returncode == 0


@pytest.mark.usefixtures("collect_in_process")
def test_cassettes_for_a_path_selection_leave_other_files_cassettes_alone(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger cassettes --prune -- tests/test_app.py`` judges only the cassettes of that file:
    the cassettes of tests in files it did not collect are not orphans, and are never deleted."""
    owned, orphan, _ = _project(pytester)
    other_test = pytester.path / "tests" / "test_other.py"
    other_test.write_text("import pytest\n\n\n@pytest.mark.llm\ndef test_other():\n    pass\n")
    other = pytester.path / "cassettes" / "tests" / "test_other" / "test_other.yaml"
    deleted = owned.with_name("test_dropped[n=1].yaml")  # a test of test_app.py that was deleted
    for path in (other, deleted):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("interactions: []\n")

    listed = cassettes(capsys, "--", "tests/test_app.py")
    assert listed.returncode == 1, listed.stderr
    assert "1 orphan cassette(s)" in listed.stdout and "test_app/test_dropped[n=1].yaml" in listed.stdout
    assert "test_other.yaml" not in listed.stdout and "test_gone" not in listed.stdout
    # the fix is the same command, pytest's arguments and all, ready to paste
    assert "delete them with `llm-ledger cassettes --prune -- tests/test_app.py`\n" in listed.stdout

    pruned = cassettes(capsys, "--prune", "--", "tests/test_app.py")
    assert pruned.returncode == 0, pruned.stderr
    assert not deleted.exists()
    assert other.exists() and orphan.exists()  # outside the selection: not judged, not deleted
    # a node id selects part of a file: no cassette of it can be judged, so none is an orphan
    assert "no orphan cassettes" in cassettes(capsys, "--", "tests/test_other.py::test_other").stdout


def test_a_run_from_a_subfolder_judges_only_the_cassettes_of_that_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cd tests && pytest --llm-strict`` collects only tests/: a cassette of a test elsewhere (an
    examples/ folder) is not an orphan, one under tests/ whose test is gone still is."""
    _project(pytester)
    elsewhere = pytester.path / "cassettes" / "examples" / "test_demo" / "test_walkthrough.yaml"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("interactions: []\n")
    monkeypatch.chdir(pytester.path / "tests")

    result = run(pytester, "--llm-strict")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 cassette(s) belong to no collected test*test_renamed.yaml*"])
    assert "test_walkthrough" not in result.stdout.str()


def test_collecting_only_checks_nothing_so_strict_ci_settings_do_not_break_it(
    pytester: pytest.Pytester,
) -> None:
    """With the CI settings docs/CI.md recommends (ini llm_budget and llm_strict), ``pytest
    --collect-only`` (or --setup-plan, --setup-only, --fixtures) runs no test, so it checks no budget
    and fails on no notice, and ``llm-ledger cassettes`` (a collection) still lists the orphans."""
    _project(pytester)
    pytester.makefile(".ini", pytest=PROJECT_INI + "llm_budget = true\nllm_strict = true\n")
    (pytester.path / "budgets.yaml").write_text("lenses:\n  summary: {max_api_calls: 1}\n")

    for inspect in ("--collect-only", "--setup-plan", "--setup-only", "--fixtures"):
        inspected = run(pytester, inspect, "-q")
        assert inspected.ret == pytest.ExitCode.OK, inspected.stdout.str()
        assert "llm-ledger: " not in inspected.stdout.str(), inspect

    listed = subprocess.run(  # as a shell runs it, child and all, once: the others run both in-process
        [sys.executable, "-m", "llm_ledger", "cassettes"],
        cwd=pytester.path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 1, listed.stderr
    assert "1 orphan cassette(s)" in listed.stdout and "test_renamed.yaml" in listed.stdout


@pytest.mark.usefixtures("collect_in_process")
def test_cassettes_of_test_files_not_collected_are_not_orphans(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test file that exists but yielded no test in this collection (skipped at import for a missing
    optional dependency, or left out with --ignore) still owns its cassettes: a strict run names none
    of them, and ``llm-ledger cassettes --prune`` deletes none of them; a file that is gone leaves
    orphans."""
    _, orphan, _ = _project(pytester)
    optional = pytester.path / "tests" / "test_optional.py"
    optional.write_text(
        'import pytest\n\npytest.importorskip("a_module_not_installed")\n\n\n'
        "@pytest.mark.llm\ndef test_extra():\n    pass\n"
    )
    (pytester.path / "tests" / "test_other.py").write_text(TESTS.replace("test_kept", "test_other"))
    kept = [
        pytester.path / "cassettes" / "tests" / name
        for name in ("test_optional/test_extra.yaml", "test_other/test_other.yaml")
    ]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("interactions: []\n")

    result = run(pytester, "--llm-strict", "--ignore=tests/test_other.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    gone = "cassettes/tests/test_gone/test_renamed.yaml"
    result.stdout.fnmatch_lines(
        [f"*1 cassette(s) belong to no collected test (renamed or deleted): {gone};*"]
    )

    pruned = cassettes(capsys, "--prune", "--", "--ignore=tests/test_other.py")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 1 orphan cassette(s)" in pruned.stdout
    assert not orphan.exists() and all(path.exists() for path in kept)


@pytest.mark.usefixtures("collect_in_process")
def test_cassettes_of_a_missing_or_empty_cassette_directory_fail(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-ledger cassettes`` with a cassette directory that does not exist (a misspelt
    llm_cassette_dir) or holds no cassette checks nothing: an error naming the directory and the
    setting, exit 2, rather than "no orphan cassettes"."""
    write_project(pytester, TESTS)
    pytester.makefile(".ini", pytest=PROJECT_INI + "llm_cassette_dir = casettes\n")

    missing = cassettes(capsys)
    assert missing.returncode == 2, missing.stdout
    assert missing.stderr == (
        "llm-ledger cassettes: error: the cassette directory casettes does not exist (ini llm_cassette_dir, "
        "or --llm-cassette-dir after --); nothing was checked\n"
    )
    (pytester.path / "casettes" / "tests").mkdir(parents=True)
    empty = cassettes(capsys)
    assert empty.returncode == 2, empty.stdout
    assert empty.stderr == (
        "llm-ledger cassettes: error: the cassette directory casettes holds no cassette (.yaml file); "
        "nothing was checked\n"
    )
    assert "no orphan" not in missing.stdout + empty.stdout


@pytest.mark.usefixtures("collect_in_process")
def test_paths_outside_the_current_directory_are_shown_whole(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message shows a path as the shell it was run from reaches it: relative below the current
    directory, whole elsewhere. ``cd tests && pytest`` names the project's cassettes and budget file
    whole, not relative to a rootdir the user is not in, and ``llm-ledger cassettes`` names them alike."""
    owned, orphan, _ = _project(pytester)
    monkeypatch.chdir(pytester.path / "tests")
    project = Path.cwd().parent
    owned, orphan = (project / path.relative_to(pytester.path) for path in (owned, orphan))

    result = run(pytester)
    result.stdout.fnmatch_lines(
        [
            f"llm-ledger: record mode 'none', cassettes {project / 'cassettes'}, budgets "
            f"{project / 'budgets.yaml'} not found*",
            f"llm-ledger: 1 cassette(s) belong to no collected test*: {orphan}; delete them*",
        ]
    )
    listed = cassettes(capsys)
    assert f"replay from cassettes under {project / 'cassettes'}\n" in listed.stdout
    assert f"never recorded: {owned}\n" in listed.stdout
    assert f"  {orphan}\n" in listed.stdout


def _committed(project: Path) -> None:
    """``project`` as a git repository with everything committed (the cassettes a ``git mv`` moves)."""
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "recorded"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=project, check=True, capture_output=True,
        )  # fmt: skip


@pytest.mark.usefixtures("collect_in_process", "no_key")
def test_a_renamed_test_is_given_the_git_mv_that_keeps_its_recording(
    recorded: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test renamed since it was recorded misses its cassette and leaves the old one an orphan: the
    miss, the orphans notice and ``llm-ledger cassettes`` give the ``git mv`` that moves the recording
    to the new name (the one orphan of its file), which then replays; ``llm-ledger cassettes`` gives
    a test never recorded the command that records it."""
    tests = recorded.path / "tests" / "test_app.py"
    tests.write_text(tests.read_text().replace("def test_chat(", "def test_summary_chat("))
    recorded.makefile(".ini", pytest=PROJECT_INI)
    _committed(recorded.path)
    old, new = "cassettes/tests/test_app/test_chat.yaml", "cassettes/tests/test_app/test_summary_chat.yaml"
    move = f"git mv {old} {new}"

    result = run(recorded)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "  the cassette file does not exist: this test has never been recorded",
            f"  {old} belongs to no collected test: if it is this test's cassette from before a rename or "
            "move, keep it with:",
            f"    {move}",
            "  to record it (needs network and OPENAI_API_KEY, or OPENAI_BASE_URL pointing at a compatible "
            "server):",
            "    pytest tests/test_app.py::test_summary_chat --llm-record-mode=once",
            f"llm-ledger: 1 cassette(s) belong to no collected test (renamed or deleted): {old}; tests "
            "renamed or moved since, never recorded under their new names, keep theirs with "
            f"`{move}`; delete any that are not theirs with `llm-ledger cassettes --prune`",
        ]
    )

    listed = cassettes(capsys)
    assert listed.returncode == 1, listed.stderr
    assert (
        f"  never recorded: {new}\n"
        f"    {old} belongs to no collected test: if it is this test's cassette from before a rename or "
        f"move, keep it with: {move}\n"
        "    to record it (needs network and OPENAI_API_KEY, or OPENAI_BASE_URL pointing at a compatible "
        "server): pytest tests/test_app.py::test_summary_chat --llm-record-mode=once\n"
        "  (a test that sends no OpenAI request records no cassette: it needs no llm marker)\n"
        f"1 orphan cassette(s), owned by no collected test:\n  {old}\n"
        "keep the cassettes of tests renamed or moved with the git mv above; delete any that are not theirs "
        "with `llm-ledger cassettes --prune`\n"
    ) in listed.stdout

    subprocess.run(move, shell=True, cwd=recorded.path, check=True)
    replayed = run(recorded)
    assert replayed.ret == pytest.ExitCode.OK, replayed.stdout.str()
    assert "no collected test" not in replayed.stdout.str()


@pytest.mark.usefixtures("no_key")
def test_tests_moved_to_another_file_are_given_the_folder_and_the_git_mv(recorded: pytest.Pytester) -> None:
    """Tests moved to another file keep their names: each old cassette is the one orphan named like the
    new one, so the ``git mv`` is given, after a ``mkdir -p`` of the new file's folder; a test both
    moved and renamed has no plausible old cassette, and is given none."""
    tests = recorded.path / "tests" / "test_app.py"
    moved = recorded.path / "tests" / "unit" / "test_app.py"
    moved.parent.mkdir()
    moved.write_text(tests.read_text().replace("def test_stream(", "def test_digest("))
    tests.unlink()
    _committed(recorded.path)

    result = run(recorded)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    commands = [
        f"mkdir -p cassettes/tests/unit/test_app && git mv cassettes/tests/test_app/{name}.yaml "
        f"cassettes/tests/unit/test_app/{name}.yaml"
        for name in ("test_async", "test_chat")
    ]
    assert out.count(f"    {commands[0]}\n") == out.count(f"    {commands[1]}\n") == 1
    assert f"keep theirs with `{commands[0]}`, `{commands[1]}`; delete the rest with" in out
    assert "git mv cassettes/tests/test_app/test_stream.yaml" not in out

    subprocess.run(commands[0], shell=True, cwd=recorded.path, check=True)
    assert run(recorded, "tests/unit/test_app.py::test_async").ret == pytest.ExitCode.OK


@pytest.mark.usefixtures("collect_in_process")
def test_no_git_mv_is_guessed_between_two_candidates(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A never-recorded test with two plausible old cassettes (two orphans of its file), or an orphan
    that two never-recorded tests could have been (one name in two files), gets no ``git mv``: a
    guess between two could move the wrong recording."""
    write_project(pytester, TESTS)
    (pytester.path / "tests" / "test_more.py").write_text(TESTS)
    pytester.makefile(".ini", pytest=PROJECT_INI)
    folder = pytester.path / "cassettes" / "tests"
    for name in ("test_app/test_old_one", "test_app/test_old_two", "test_gone/test_kept"):
        (folder / f"{name}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.yaml").write_text("interactions: []\n")

    listed = cassettes(capsys)
    assert listed.returncode == 1, listed.stderr
    assert "3 orphan cassette(s)" in listed.stdout
    assert "git mv" not in listed.stdout and "belongs to no collected test" not in listed.stdout
    assert "delete them with `llm-ledger cassettes --prune`" in listed.stdout


@pytest.mark.usefixtures("no_key")
def test_a_test_whose_name_gains_a_case_twin_hash_is_given_the_git_mv(recorded: pytest.Pytester) -> None:
    """A test added with a name differing only in case (``test_Chat`` beside ``test_chat``) gives the
    recorded one's cassette a hash (``test_chat-1a2b3c4d.yaml``): its old cassette is the orphan named
    like it but for the hash, so its ``git mv`` is given (though two tests of the file have no
    recording), which then replays; the new test, whose name is not the orphan's, is given none. When
    the twin goes, the hash goes, and the ``git mv`` back is given."""
    tests = recorded.path / "tests" / "test_app.py"
    chat = tests.read_text().split("@pytest.mark.llm\n")[1]
    tests.write_text(
        tests.read_text() + "\n\n@pytest.mark.llm\n" + chat.replace("def test_chat(", "def test_Chat(")
    )
    _committed(recorded.path)
    hashed = f"test_chat-{hashlib.sha1(b'test_chat', usedforsecurity=False).hexdigest()[:8]}"
    move = f"git mv cassettes/tests/test_app/test_chat.yaml cassettes/tests/test_app/{hashed}.yaml"

    result = run(recorded)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert out.count(f"    {move}\n") == 1, out  # the miss of test_chat, not of test_Chat
    assert f"keep theirs with `{move}`; delete any that are not theirs" in out

    subprocess.run(move, shell=True, cwd=recorded.path, check=True)
    assert run(recorded, "tests/test_app.py::test_chat").ret == pytest.ExitCode.OK

    # the twin goes, and the hash with it
    tests.write_text(tests.read_text().rsplit("\n\n\n@pytest.mark.llm\n", 1)[0])
    back = f"git mv cassettes/tests/test_app/{hashed}.yaml cassettes/tests/test_app/test_chat.yaml"
    assert f"    {back}\n" in run(recorded).stdout.str()
    subprocess.run(back, shell=True, cwd=recorded.path, check=True)
    run(recorded).assert_outcomes(passed=3)


@pytest.mark.usefixtures("collect_in_process", "no_key")
def test_a_cassette_that_is_the_renamed_tests_own_file_is_no_orphan(
    recorded: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """On macOS or Windows a test renamed in case only (``test_chat`` to ``test_Chat``) replays its
    cassette under the old name, one file with both names (a hard link here): it is named no orphan,
    and ``--prune`` does not delete the test's recording."""
    tests = recorded.path / "tests" / "test_app.py"
    tests.write_text(tests.read_text().replace("def test_chat(", "def test_Chat("))
    recorded.makefile(".ini", pytest=PROJECT_INI)
    folder = recorded.path / "cassettes" / "tests" / "test_app"
    (folder / "test_Chat.yaml").hardlink_to(folder / "test_chat.yaml")

    result = run(recorded)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "no collected test" not in result.stdout.str()
    pruned = cassettes(capsys, "--prune")
    assert pruned.returncode == 0, pruned.stdout
    assert "no orphan cassettes" in pruned.stdout
    assert (folder / "test_chat.yaml").exists()
