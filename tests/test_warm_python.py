"""The children ``tests.warm_python`` forks are what a fresh ``python`` gives the code they run: the
tests that use them (stopping, exit, fork, load...) stand for an application started as usual."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import warm_python
from tests.conftest import sigint_default

PROBE = """
import json, os, random, signal, sys
import __main__

def stream(s):
    keys = ("name", "mode", "line_buffering", "write_through", "encoding", "errors")
    return [getattr(s, k, None) for k in keys]

print(json.dumps({
    "argv": sys.argv,
    "path": sys.path,
    "main": sorted(k for k in vars(__main__) if k.startswith("__")),
    "file": getattr(__main__, "__file__", None),
    "loader": repr(getattr(__main__, "__loader__", None)).split(" object at ")[0],
    "signals": [str(signal.getsignal(getattr(signal, n))) for n in ("SIGINT", "SIGTERM", "SIGPIPE")],
    "streams": [stream(s) for s in (sys.stdin, sys.stdout, sys.stderr)],
    "cwd": os.getcwd(),
    "ledger_imported": "llm_ledger" in sys.modules,
    "flags": repr(sys.flags),
    "random": random.random(),
}))
"""


def _facts(run: object, args: list[str], cwd: Path) -> dict[str, object]:
    done = run(args, capture_output=True, text=True, cwd=cwd, timeout=60)  # type: ignore[operator]
    assert done.returncode == 0, done.stderr
    facts: dict[str, object] = json.loads(done.stdout)
    return facts


@pytest.mark.parametrize("form", ["-c", "-m", "script"])
def test_a_warm_child_sees_what_a_fresh_python_sees(form: str, tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    args = {
        "-c": [sys.executable, "-c", PROBE, "arg"],
        "-m": [sys.executable, "-m", "probe", "arg"],
        "script": [sys.executable, "probe.py", "arg"],
    }[form]
    fresh = _facts(subprocess.run, args, tmp_path)
    warm, again = (_facts(warm_python.run, args, tmp_path) for _ in range(2))
    assert warm.pop("random") != again.pop("random")  # each child's random state is its own
    fresh.pop("random")
    assert warm == fresh
    assert warm["ledger_imported"] is False  # llm_ledger is imported by the child, as a fresh one does


@pytest.mark.parametrize(
    ("code", "status", "out", "err_tail"),
    [
        ("raise SystemExit(3)", 3, "", []),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -15, "", []),
        (
            "import atexit; atexit.register(print, 'atexit ran'); 1/0",
            1,
            "atexit ran\n",
            ["ZeroDivisionError"],
        ),
    ],
)
def test_a_warm_child_ends_as_a_fresh_python_does(
    code: str, status: int, out: str, err_tail: list[str]
) -> None:
    """Its exit status (a signal's included), its atexit hooks, and an uncaught exception's traceback
    with the frames of the code only (and, from Python 3.13, their source lines, as python -c shows)."""
    errors = []
    for run in (subprocess.run, warm_python.run):
        done = run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (status, out)
        lines = done.stderr.splitlines()
        assert [line.split(":")[0] for line in lines[-1:]] == err_tail
        if err_tail:
            assert lines[0] == "Traceback (most recent call last):"
            assert lines[1] == '  File "<string>", line 1, in <module>'
            assert lines[-1] == "ZeroDivisionError: division by zero"
        errors.append(done.stderr)
    assert errors[0] == errors[1]


INTERRUPTED = """
import signal, sys, time
try:
    print(signal.getsignal(signal.SIGINT), flush=True)  # in the try: SIGINT comes after it
    while True:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_warm_child_given_sigint_s_default_stops_on_ctrl_c_as_a_fresh_python_does() -> None:
    """A child started with SIGINT's default disposition (preexec_fn=sigint_default; the suite may run
    with SIGINT ignored) has Python's handler, and SIGINT raises KeyboardInterrupt in it."""
    args = [sys.executable, "-c", INTERRUPTED]
    fresh = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    warm = warm_python.popen(args, stdout=subprocess.PIPE, text=True, sigint_default=True)
    ends = []
    for child in (fresh, warm):
        assert child.stdout is not None
        try:
            handler = child.stdout.readline()
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=60)
        finally:
            if child.poll() is None:  # it ignored SIGINT: not left looping
                child.kill()
        ends.append((handler, out, child.returncode))
    assert ends[0] == ends[1] == ("<built-in function default_int_handler>\n", "interrupted\n", 0)
