"""Where a test's cassette lives: ``<dir>/<test file relative to the project, no .py>/<name>.yaml``.

The naming rules are in docs/CI.md: parameter values, not pytest's ids (which change between pytest
versions); a short hash for unsafe characters, long names and names that differ only in case.
"""

from __future__ import annotations

import enum
import hashlib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

import pytest

from llm_ledger.testing import credential_name

from ._format import shown_path
from ._secrets import KEY_SHAPE, MIN_KNOWN_SECRET, REDACTED

__all__ = [
    "cassette_folder",
    "cassette_params",
    "cassette_path",
    "has_cassette",
    "mark_case_twins",
    "move_command",
    "moved_hint",
    "orphan_cassettes",
    "project_dir",
    "renamed_cassettes",
    "secret_params",
    "selected_folders",
]

MAX_STEM = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=,+\[\]-]+")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_REPEATS = frozenset({"__pytest_repeat_step_number"})  # pytest-repeat's repetition number
_HASHED = re.compile(r"-[0-9a-f]{8}$")  # the hash cassette_stem appends
_CASE_TWIN = pytest.StashKey[bool]()  # another test of its module or class has its name but for case


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]


def _value_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if value is None or isinstance(value, str | int | float | bool):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    return _hash(_ADDRESS.sub("", repr(value)))


def _secret(arg: str, text: str) -> bool:
    """Whether a parameter's value is a credential: named like one and long enough (``EMPTY`` is a
    placeholder), or shaped like an OpenAI key."""
    return (credential_name(arg) and len(text) >= MIN_KNOWN_SECRET) or KEY_SHAPE.search(text) is not None


def secret_params(item: pytest.Item) -> list[str]:
    """The values of ``item``'s parameters that are credentials, which a cassette never shows."""
    texts = ((arg, _value_text(value)) for arg, value in cassette_params(item).items())
    return [text for arg, text in texts if _secret(arg, text)]


def _param_text(arg: str, value: Any) -> str:
    text = _value_text(value)
    return f"{REDACTED}-{_hash(text)}" if _secret(arg, text) else text


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "_"


def cassette_params(item: pytest.Item) -> dict[str, Any]:
    """The parameters that name ``item``'s cassette, less pytest-repeat's, which repeat the test."""
    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec is not None else {}
    return {arg: value for arg, value in params.items() if arg not in _REPEATS}


def _raw_stem(item: pytest.Item) -> str:
    owners = [node.name for node in item.listchain() if isinstance(node, pytest.Class)]
    name = getattr(item, "originalname", None) or item.name.split("[", 1)[0]
    params = cassette_params(item)
    if params:
        name = f"{name}[{','.join(f'{arg}={_param_text(arg, params[arg])}' for arg in sorted(params))}]"
    return ".".join([*owners, name])


def mark_case_twins(nodes: Iterable[object]) -> None:
    """Mark the tests among ``nodes`` (one collector's) whose cassette would be named like another's but
    for case, for :func:`cassette_stem` to tell apart: at collection, before a node id selects one, so a
    cassette's name does not depend on the tests a run selects."""
    tests = [node for node in nodes if isinstance(node, pytest.Item) and has_cassette(node)]
    names: dict[str, set[str]] = {}
    for test in tests:
        raw = _raw_stem(test)
        names.setdefault(raw.lower(), set()).add(raw)
    for test in tests:
        if len(names[_raw_stem(test).lower()]) > 1:
            test.stash[_CASE_TWIN] = True


def has_cassette(item: pytest.Item) -> bool:
    """Whether ``item`` runs inside a cassette: marked llm, and not a deliberate live test."""
    marker = item.get_closest_marker("llm")
    return marker is not None and marker.kwargs.get("live") is not True


def cassette_stem(item: pytest.Item) -> str:
    raw = _raw_stem(item)
    full = _safe(raw)
    if full != raw or item.stash.get(_CASE_TWIN, False):
        # "a/b" and "a:b", or names that differ only in case (one file on macOS and Windows)
        full = f"{full}-{_hash(raw)}"
    if len(full) > MAX_STEM:
        full = f"{full[: MAX_STEM - 9]}-{_hash(full)}"
    return full


def project_dir(config: pytest.Config) -> Path:
    """The folder ini paths and cassette names are relative to: the ini file's, else the rootdir (so
    ``--rootdir`` moves no cassette)."""
    return config.inipath.parent if config.inipath is not None else config.rootpath


def cassette_folder(item: pytest.Item, directory: Path) -> Path:
    try:
        relative = item.path.relative_to(project_dir(item.config))
    except ValueError:
        relative = Path(item.path.name)
    return directory.joinpath(*(_safe(part) for part in relative.with_suffix("").parts))


def cassette_path(item: pytest.Item, directory: Path) -> Path:
    return cassette_folder(item, directory) / (cassette_stem(item) + ".yaml")


def selected_folders(config: pytest.Config, directory: Path) -> list[Path] | None:
    """The cassette folders whose every test a collection saw, one per file or folder given (a node id
    vouches for none); None for the whole ``directory`` (``testpaths``). A cassette outside them
    belongs to a test not collected, not to a deleted one."""
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        return None
    folders = []
    for arg in config.args:
        if "::" in arg:
            continue
        path = Path(config.invocation_params.dir, arg).resolve()
        try:
            relative = path.relative_to(project_dir(config))
        except ValueError:
            continue
        if path.is_file():
            relative = relative.with_suffix("")
        elif not path.is_dir():
            continue  # --pyargs names, or a path pytest refuses anyway
        folders.append(directory.joinpath(*(_safe(part) for part in relative.parts)))
    return folders


def orphan_cassettes(
    directory: Path,
    owned: Iterable[str],
    keep: Sequence[str],
    within: Sequence[Path] | None,
    project: Path,
    tested: Iterable[str],
) -> list[Path]:
    """The cassette files under ``directory`` that no ``owned`` path names, sorted, less those matching
    a ``keep`` glob, those outside the ``within`` folders (:func:`selected_folders`), and those of a test
    file in ``project`` that gave no test (--ignore, skipped at import): ``tested`` holds the
    :func:`cassette_folder` of each file that gave tests."""
    mine = {Path(path) for path in owned}
    folded = {str(path).lower(): path for path in mine}
    found = set(tested)
    return sorted(
        path
        for path in directory.rglob("*.yaml")
        if path.is_file()
        and path not in mine
        and not _same_file(path, folded)
        and not any(fnmatchcase(path.relative_to(directory).as_posix(), p) for p in keep)
        and (within is None or any(path.is_relative_to(folder) for folder in within))
        and (
            str(path.parent) in found
            or not project.joinpath(f"{path.parent.relative_to(directory)}.py").is_file()
        )
    )


def _same_file(path: Path, folded: Mapping[str, Path]) -> bool:
    """Whether ``path`` is the file of an owned cassette named like it but for case (``folded``): a test
    renamed in case only, on macOS or Windows, where one file has both names, has no orphan."""
    owned = folded.get(str(path).lower())
    return owned is not None and owned.exists() and path.samefile(owned)


def renamed_cassettes(never: Iterable[Path], orphans: Iterable[Path]) -> dict[Path, Path]:
    """The orphan cassette each cassette of ``never`` (not recorded yet) plausibly was before its test
    was renamed or moved: first one of the same file named the same but for a case twin's hash, then
    one of the same file with the same parameters (the test renamed), or of another file with the same
    name (moved). Only a pair that is each other's one candidate counts."""
    never, orphans = list(never), list(orphans)

    def twin(new: Path, old: Path) -> bool:
        return new.parent == old.parent and _HASHED.sub("", new.stem) == _HASHED.sub("", old.stem)

    def akin(new: Path, old: Path) -> bool:
        if new.parent == old.parent:
            return new.stem.partition("[")[2] == old.stem.partition("[")[2]
        return new.name == old.name

    pairs: dict[Path, Path] = {}
    for rule in (twin, akin):
        left = [old for old in orphans if old not in pairs.values()]
        waiting = [new for new in never if new not in pairs]
        for new in waiting:
            found = [old for old in left if rule(new, old)]
            if len(found) == 1 and sum(rule(other, found[0]) for other in waiting) == 1:
                pairs[new] = found[0]
    return pairs


def move_command(old: Path, new: Path) -> str:
    """The command that gives the cassette ``old`` to the test whose cassette is ``new`` (making its
    folder first: ``git mv`` does not)."""
    move = shlex.join(["git", "mv", shown_path(old), shown_path(new)])
    if new.parent.is_dir():
        return move
    return f"{shlex.join(['mkdir', '-p', shown_path(new.parent)])} && {move}"


def moved_hint(old: Path) -> str:
    """What the orphan ``old`` may be to a test never recorded, before its :func:`move_command`."""
    return (
        f"{shown_path(old)} belongs to no collected test: if it is this test's cassette from before a "
        "rename or move, keep it with"
    )


RECORD_MODES: Final = ("none", "once", "new_episodes", "all", "rewrite")

# what recording a cassette needs, before the command that does it
TO_RECORD: Final = (
    "to record it (needs network and OPENAI_API_KEY, or OPENAI_BASE_URL pointing at a compatible server)"
)


def rerecord_command(nodeid: str, mode: str, options: Sequence[str] = ()) -> str:
    """The command that records one test's cassette in ``mode``; ``options``: those that chose where the
    cassettes are (``--llm-cassette-dir``...)."""
    return shlex.join(["pytest", nodeid, f"--llm-record-mode={mode}", *options])


def replayed_auth_advice(count: int, test: str | None = None, options: Sequence[str] = ()) -> str:
    """What ``count`` cassettes replaying a 401/403 their test does not expect mean, and the fix: the
    words of the session's notice and of ``llm-ledger cassettes``."""
    command = rerecord_command(test or "NODE_ID...", "rewrite", options)
    return (
        f"{count} cassette(s) replay an authentication error (401/403) their test does not expect, "
        "recorded with a wrong or expired key (CI replays it whatever key it has); re-record each with "
        f"the key set: {command}, or mark a test that expects the error "
        "@pytest.mark.llm(record_auth_errors=True)"
    )
