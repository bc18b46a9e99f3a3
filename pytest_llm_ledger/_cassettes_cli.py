"""``llm-ledger cassettes``: the cassettes no test owns any more (renamed or deleted tests).

Which cassettes no test owns is asked of pytest itself (a collection with the plugin, nothing run),
so the answer follows the project's own configuration: its ini, rootdir, cassette directory and
test selection. It also lists the cassettes that replay a 401/403 answer their test does not
expect (one not marked ``record_auth_errors=True``: recorded before llm-ledger left such answers out).
Cassettes whose test no longer plays every interaction (stale ones) are named at the end of a test
run, where ``--llm-strict`` fails on them.

Exit status: 0 nothing to fix (orphans pruned), 1 orphans or auth-error cassettes listed, 2 a cassette
could not be read, the tests could not be collected, or the cassette directory is missing or holds no
cassette (nothing could be checked).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from llm_ledger import CassetteError

from ._format import load_cassette, shown_path

__all__ = ["register"]


def register(subparsers: Any, summary: str) -> None:
    """Add the ``cassettes`` subcommand to the ``llm-ledger`` console script."""
    parser = subparsers.add_parser(
        "cassettes",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prune", action="store_true", help="delete the orphan cassettes")
    parser.add_argument(
        "pytest_args", nargs="*", metavar="PYTEST_ARG", help="passed to pytest's collection (after --)"
    )
    parser.set_defaults(func=run, unknown_hint=_after_dashes)


def _after_dashes(argv: list[str]) -> str:
    """pytest's options given before ``--``: the command that passes them on."""
    prune = ["--prune"] if "--prune" in argv else []
    rest = [arg for arg in argv if arg not in ("--prune", "--")]
    command = shlex.join(["llm-ledger", "cassettes", *prune, "--", *rest])
    return f"; pytest's own options go after --: {command}"


def run(args: argparse.Namespace) -> int:
    try:
        from ._naming import TO_RECORD, replayed_auth_advice
    except ImportError as exc:  # a production install: pytest and vcrpy come with the plugin's extra
        return _error(
            f"{exc}; this command asks pytest which tests own the cassettes, which needs the plugin's "
            "extra: pip install 'llm-ledger[pytest]'"
        )

    with tempfile.TemporaryDirectory(prefix="llm-ledger-cassettes-") as tmp:
        listing = Path(tmp) / "cassettes.json"
        command = [
            sys.executable,
            *("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"),
            f"--llm-list-cassettes={listing}",
            *args.pytest_args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 5) or not listing.exists():  # 5: no tests collected
            print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
            return _error(
                f"pytest could not collect the tests (exit {done.returncode}); its output above says why"
            )
        data = json.loads(listing.read_text(encoding="utf-8"))
    directory = Path(data["cassette_dir"])
    # a directory that is not there, or holds no cassette, checks nothing: a misspelt llm_cassette_dir
    # must not read as "no orphan cassettes" in CI
    problem = None
    if not directory.is_dir():
        problem = "does not exist (ini llm_cassette_dir, or --llm-cassette-dir after --)"
    elif not any(path.is_file() for path in directory.rglob("*.yaml")):
        problem = "holds no cassette (.yaml file)"
    if problem is not None:
        return _error(f"the cassette directory {shown_path(directory)} {problem}; nothing was checked")
    owned, never = data["cassettes"], data["record"]
    orphans = [Path(path) for path in data["orphans"]]
    moved = {} if args.prune else data["moved"]  # a prune deletes the orphans: none is left to move
    print(f"{len(owned)} collected test(s) replay from cassettes under {shown_path(directory)}")
    for path in sorted(never):
        print(f"  never recorded: {shown_path(Path(path))}")
        if path in moved:
            print(f"    {moved[path]}")
        print(f"    {TO_RECORD}: {never[path]}")
    if never:  # else recording it again and again would leave it listed
        print("  (a test that sends no OpenAI request records no cassette: it needs no llm marker)")
    denied, status = _auth_errors(sorted(set(owned) - set(never) - set(data["expect_auth_errors"])))
    if denied:
        print(f"{replayed_auth_advice(len(denied), options=data['location'])}:")
        for path, answers in denied.items():
            print(f"  {shown_path(path)}: {', '.join(answers)}")
        status = max(status, 1)
    if not orphans:
        print("no orphan cassettes")
        return status
    print(f"{len(orphans)} orphan cassette(s), owned by no collected test:")
    for path in orphans:
        print(f"  {shown_path(path)}")
    if not args.prune:
        pytest_args = ["--", *args.pytest_args] if args.pytest_args else []
        prune = f"`{shlex.join(['llm-ledger', 'cassettes', '--prune', *pytest_args])}`"
        if not moved:
            print(f"delete them with {prune}")
        else:
            rest = "the rest" if len(moved) < len(orphans) else "any that are not theirs"
            print(
                f"keep the cassettes of tests renamed or moved with the git mv above; delete {rest} with",
                prune,
            )
        return max(status, 1)
    for path in orphans:
        path.unlink()
        parent = path.parent
        while parent != directory and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    print(f"deleted {len(orphans)} orphan cassette(s)")
    return status


def _error(message: str) -> int:
    """Say what went wrong on stderr; the exit status of an error, 2."""
    print(f"llm-ledger cassettes: error: {message}", file=sys.stderr)
    return 2


def _auth_errors(paths: list[str]) -> tuple[dict[Path, list[str]], int]:
    """The cassettes of ``paths`` holding 401/403 answers (recorded before llm-ledger left them out):
    CI replays a wrong key's error from them forever. And 2 when one could not be read, else 0."""
    from ._cassette import auth_answers  # needs pytest, as _naming (run() imported it) does

    found: dict[Path, list[str]] = {}
    status = 0
    for name in paths:
        path = Path(name)
        try:
            answers = auth_answers(load_cassette(path))
        except CassetteError as exc:
            status = _error(str(exc))
            continue
        if answers:
            found[path] = answers
    return found, status
